"""`dpt referee` as a library call: a folder of referee images, laid out as `dpt generate`'s.

Image k of the run starts from the latent noise of seed S+k and is written as k.png, with one
`index.jsonl` record per image naming the referee and every setting. Inputs are checked
before the model loads and the folder is taken and written as `methods.generate_folder`
does (`io/folder_writer.py`: one run at a time, resumable).

Referees: "dpt" (the DPT adapter's matching score), "clip" (the Shapes CLIP, or with
`referee_model` a CLIP folder), "shapes-itm" (the Shapes referee, text attending over image
patches: the shipped one, or with `referee_model` a `dpt world train-referee` folder; Shapes
models only), "blip2-itm" and "blip2-itc" (a BLIP-2 retrieval folder, `referee_model`); a
referee folder is checked before the output folder is taken and loaded
before the diffusion model (io/vlm_referees.py, generation/vlm_scorers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ..io.bundle import (ModelBundle, check_device, load_bundle, read_scheduler_config,
                         read_vocabulary)
from ..io.clip import load_clip_and_tokenizer
from ..io.dpt_folder import load_for_sampling
from ..io.folder_writer import RESUME_OR_OVERWRITE, open_folder
from ..io.image_folder import numbered_records, write_png
from ..io.shapes_referee import (default_shapes_referee_path, load_shapes_referee,
                                 read_shapes_referee_config)
from ..io.vlm_referees import VLMReferee, check_vlm_folder, load_vlm_referee
from .methods import FolderRun, SamplerSettings, check_vocabulary, referee_preset, shipped_dpt
from .referee import PAPER_SETTINGS, RefereeSettings, Scorer, clip_scorer, dpt_scorer, generate
from .sampling import check_seeds, check_steps, decode
from .shapes_referee import shapes_referee_scorer
from .vlm_scorers import vlm_scorer

REFEREES = ("dpt", "clip", "shapes-itm", "blip2-itm", "blip2-itc")


@dataclass
class RefereeRun:
    """What to make and where; `referee` "dpt" reads `dpt` (default: the shipped DPT weights
    on the shipped model), "clip" `referee_model` (default: the Shapes CLIP), "shapes-itm"
    `referee_model` (default: the shipped Shapes referee), "blip2-itm" and "blip2-itc"
    `referee_model`."""

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
    resume: bool = False              # keep an unfinished run's images, make the rest
    referee_model: Path | None = None  # a BLIP-2, CLIP or Shapes referee folder
    device: str = SamplerSettings.device  # where the model and the referee run

    def __post_init__(self):
        if self.overwrite and self.resume:
            raise ValueError(RESUME_OR_OVERWRITE)
        for flag, value in (("--num-images", self.num_images),
                            ("--batch-size", self.batch_size)):
            if value <= 0:
                raise ValueError(f"{flag} must be a positive whole number, got {value}")
        if self.referee not in REFEREES:
            raise ValueError(f"unknown referee {self.referee!r}; expected one of "
                             f"{', '.join(REFEREES)}")
        if self.referee != "dpt" and self.dpt is not None:
            raise ValueError(f"--referee {self.referee} reads no DPT folder; drop --dpt")
        if self.referee == "dpt" and self.referee_model is not None:
            raise ValueError("--referee dpt reads --dpt, not --referee-model; drop "
                             "--referee-model or name a BLIP-2 / CLIP referee")
        if self.referee.startswith("blip2") and self.referee_model is None:
            raise ValueError(f"--referee {self.referee} needs --referee-model PATH: a local "
                             f"Blip2ForImageTextRetrieval folder (e.g. Salesforce/"
                             f"blip2-itm-vit-g)")
        check_seeds(self.seed, len(self.prompts) * self.num_images)

    def method_fields(self) -> dict:
        """The index fields that say how an image was made (all but prompt, seed, file)."""
        folder = {} if self.referee_model is None else {"referee_model": str(self.referee_model)}
        if self.dpt is not None:
            folder["dpt"] = str(self.dpt)
        return {"model": str(self.model), "method": "referee", "referee": self.referee,
                **folder, **{f.name: getattr(self.settings, f.name)
                             for f in fields(self.settings)}}

    def plan(self) -> list[dict]:
        """One index record per image, in run order."""
        return numbered_records(self.prompts, self.num_images, self.seed, self.method_fields())


def run_preset(model: Path, referee_model: Path | None, init: str | None = None
               ) -> RefereeSettings:
    """The settings a run starts from: the Shapes ones on the shipped Shapes model
    (`methods.referee_preset`, for the start `init` asks), the authors' (`PAPER_SETTINGS`)
    with a BLIP-2 or CLIP folder as the referee on any other model, the reference code's
    otherwise."""
    preset = referee_preset(model, init)
    if referee_model is not None and preset == RefereeSettings():  # not the Shapes model
        return PAPER_SETTINGS
    return preset


def load_referee(bundle: ModelBundle, referee: str, dpt: Path | None,
                 vlm: VLMReferee | None = None, referee_model: Path | None = None
                 ) -> Callable[[int], Scorer]:
    """The referee on `bundle` (a DPT folder's LoRA is fused into its U-Net), or `vlm`'s when
    given, as a function of a batch's first seed giving the batch's scorer; the referee's
    weights are moved to the bundle's device.

    The DPT scorer's noise is drawn from a generator it seeds; one scorer per batch, seeded
    by the batch, makes each batch's images independent of the batches before it, so a
    resumed run makes them as an uninterrupted one does.
    """
    if referee == "shapes-itm":  # draws no noise
        scorer = shapes_referee_scorer(load_shapes_referee(
            referee_model or default_shapes_referee_path()).to(bundle.device))
        return lambda seed: scorer
    if vlm is not None:  # draws no noise
        vlm.model.to(bundle.device)
        scorer = vlm_scorer(vlm)
        return lambda seed: scorer
    if referee == "clip":  # draws no noise
        clip, tokenizer = load_clip_and_tokenizer()
        scorer = clip_scorer(clip.to(bundle.device), tokenizer)
        return lambda seed: scorer
    if referee != "dpt":
        raise ValueError(f"--referee {referee} needs --referee-model PATH")
    folder = dpt if dpt is not None else shipped_dpt(bundle.path)
    if folder is None:
        raise ValueError("--referee dpt needs --dpt PATH on a model other than the shipped one")
    heads, config = load_for_sampling(folder, bundle.unet)
    if heads is None:
        raise ValueError(f"--dpt {folder} holds LoRA only: there is no adapter to referee with")
    heads.to(bundle.device)
    return lambda seed: dpt_scorer(bundle, heads, config, seed=seed)


def referee_folder(run: RefereeRun, before_load: Callable[[Path], None] | None = None
                   ) -> list[dict]:
    """Optimise every image of `run` into run.out (PNGs and index.jsonl); return the records.

    Args:
        before_load: called with the resolved output folder once every input is checked,
            before the model loads.
    """
    check_device(run.device)
    if run.settings.init == "sample":  # the start's sampler, checked before the model loads
        check_steps(run.settings.init_steps, read_scheduler_config(run.model), "--init-steps")
    vocabulary = read_vocabulary(run.model)
    if vocabulary is not None:
        check_vocabulary(run.prompts, vocabulary, run.model)
    if run.referee == "shapes-itm":
        _check_shapes_referee(run, vocabulary)
    checked = None if run.referee_model is None or run.referee == "shapes-itm" else \
        check_vlm_folder(run.referee_model, run.referee, run.prompts)
    records = run.plan()
    with open_folder(run.out, records, run.batch_size, overwrite=run.overwrite,
                     resume=run.resume) as folder:
        if before_load is not None:
            before_load(folder.out)
        vlm = None if checked is None else load_vlm_referee(checked)  # before the big model
        bundle = load_bundle(run.model, run.device)
        scorers = load_referee(bundle, run.referee, run.dpt, vlm, run.referee_model)
        todo = folder.start(records)
        _render(bundle, scorers, todo, folder.stage, run.settings, run.batch_size, folder.add)
        folder.finish()
    return records


def _check_shapes_referee(run: RefereeRun, vocabulary) -> None:
    """The Shapes referee reads Shapes prompts on a Shapes model, from a whole folder."""
    if vocabulary is None:
        raise ValueError(f"--referee shapes-itm reads the Shapes world's prompts; {run.model} "
                         "is not a Shapes model (use blip2-itm, blip2-itc or clip with "
                         "--referee-model)")
    folder = run.referee_model or default_shapes_referee_path()
    try:
        read_shapes_referee_config(folder)
    except ValueError as err:
        raise ValueError(f"--referee-model: {err}") from None


def _render(bundle: ModelBundle, scorers: Callable[[int], Scorer], records: list[dict],
            folder: Path, settings: RefereeSettings, batch_size: int,
            batch_done: Callable[[list[dict]], None]) -> None:
    """Each record's image, `batch_size` optimised together (with the scorer of the batch's
    first seed), with a bar over iterations; `batch_done` gets each batch's records once its
    PNGs are written."""
    with tqdm(total=len(records) * settings.iterations, unit="it", desc="referee",
              dynamic_ncols=True) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            done = [0]

            def progress(i: int, done=done) -> None:
                bar.update((i - done[0]) * len(batch))
                done[0] = i

            latents = generate(bundle, scorers(batch[0]["seed"]), [r["prompt"] for r in batch],
                               [r["seed"] for r in batch], settings, progress)
            for record, image in zip(batch, decode(bundle, latents)):
                write_png(folder / record["file"], image)
            batch_done(batch)
