"""`dpt referee` as a library call: a folder of referee images, laid out as `dpt generate`'s.

Image k of the run starts from the latent noise of seed S+k and is written as k.png, with one
`index.jsonl` record per image naming the referee and every setting. Inputs are checked
before the model loads and the folder is written through a staging folder, as
`methods.generate_folder` writes its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ..eval.quality import load_clip_and_tokenizer
from ..io.bundle import ModelBundle, load_bundle, read_vocabulary
from ..io.dpt_folder import load_for_sampling
from ..io.image_folder import (check_output_folder, numbered_records, publish, staging_folder,
                               write_index, write_png)
from .methods import FolderRun, SamplerSettings, check_vocabulary, shipped_dpt
from .referee import RefereeSettings, Scorer, clip_scorer, dpt_scorer, generate
from .sampling import decode

REFEREES = ("dpt", "clip")


@dataclass
class RefereeRun:
    """What to make and where; `referee` "dpt" reads `dpt` (default: the shipped DPT weights
    on the shipped model), "clip" the Shapes CLIP."""

    model: Path                       # a checked model folder
    prompts: list[str]
    out: Path
    settings: RefereeSettings = field(default_factory=RefereeSettings)
    referee: str = "dpt"
    dpt: Path | None = None
    num_images: int = FolderRun.num_images
    seed: int = FolderRun.seed
    batch_size: int = SamplerSettings.batch_size  # images optimised together
    overwrite: bool = False

    def __post_init__(self):
        for flag, value in (("--num-images", self.num_images),
                            ("--batch-size", self.batch_size)):
            if value <= 0:
                raise ValueError(f"{flag} must be a positive whole number, got {value}")
        if self.referee not in REFEREES:
            raise ValueError(f"unknown referee {self.referee!r}; expected one of "
                             f"{', '.join(REFEREES)}")
        if self.referee == "clip" and self.dpt is not None:
            raise ValueError("--referee clip reads no DPT folder; drop --dpt")

    def plan(self) -> list[dict]:
        """One index record per image, in run order."""
        return numbered_records(self.prompts, self.num_images, self.seed, {
            "model": str(self.model), "method": "referee", "referee": self.referee,
            **{f.name: getattr(self.settings, f.name) for f in fields(self.settings)}})


def load_referee(bundle: ModelBundle, referee: str, dpt: Path | None) -> Scorer:
    """The referee's scorer on `bundle` (a DPT folder's LoRA is fused into its U-Net)."""
    if referee == "clip":
        return clip_scorer(*load_clip_and_tokenizer())
    folder = dpt if dpt is not None else shipped_dpt(bundle.path)
    if folder is None:
        raise ValueError("--referee dpt needs --dpt PATH on a model other than the shipped one")
    heads, config = load_for_sampling(folder, bundle.unet)
    if heads is None:
        raise ValueError(f"--dpt {folder} holds LoRA only: there is no adapter to referee with")
    return dpt_scorer(bundle, heads, config)


def referee_folder(run: RefereeRun, before_load: Callable[[Path], None] | None = None
                   ) -> list[dict]:
    """Optimise every image of `run` into run.out (PNGs and index.jsonl); return the records.

    Args:
        before_load: called with the resolved output folder once every input is checked,
            before the model loads.
    """
    vocabulary = read_vocabulary(run.model)
    if vocabulary is not None:
        check_vocabulary(run.prompts, vocabulary, run.model)
    records = run.plan()
    out = check_output_folder(run.out, [r["file"] for r in records], overwrite=run.overwrite)
    if before_load is not None:
        before_load(out)
    bundle = load_bundle(run.model)
    scorer = load_referee(bundle, run.referee, run.dpt)
    with staging_folder(out) as stage:
        _render(bundle, scorer, records, stage, run.settings, run.batch_size)
        write_index(stage, records)
        publish(stage, out, overwrite=run.overwrite)
    return records


def _render(bundle: ModelBundle, scorer: Scorer, records: list[dict], folder: Path,
            settings: RefereeSettings, batch_size: int) -> None:
    """Each record's image, `batch_size` optimised together, with a bar over iterations."""
    with tqdm(total=len(records) * settings.iterations, unit="it", desc="referee",
              dynamic_ncols=True) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            done = [0]

            def progress(i: int, done=done) -> None:
                bar.update((i - done[0]) * len(batch))
                done[0] = i

            latents = generate(bundle, scorer, [r["prompt"] for r in batch],
                               [r["seed"] for r in batch], settings, progress)
            for record, image in zip(batch, decode(bundle, latents)):
                write_png(folder / record["file"], image)
