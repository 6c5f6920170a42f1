"""DPT's matching score s(z, y) of image files against texts: `dpt score` as a library call.

Each image is read as `dpt evaluate-disc` reads real images (RGB, squashed to the model's
resolution), encoded by the VAE and noised once to `timestep` with noise from `seed` (the
same file and settings give the same numbers), then read by the DPT U-Net up to the
adapter's block against every text (`model.score.MatchScore.matrix`). A score is a cosine in
[-1, 1]; higher is a better match. Use it to rank your own generations or candidate texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.real import load_rgb
from ..generation.methods import check_lengths, check_vocabulary, shipped_dpt
from ..io.bundle import ModelBundle, check_device, load_bundle
from ..io.dpt_folder import load_for_sampling, read_dpt_config
from .discriminative import DiscriminativeScorer

MAX_SEED = 2**63 - 1  # torch.Generator's seeds


@dataclass(frozen=True, kw_only=True)
class ScoreSettings:
    """What scores the images. Messages name `dpt score`'s flags."""

    model: Path                 # a checked model folder
    dpt: Path | None = None     # a DPT folder with an adapter (None: the shipped one, if any)
    timestep: int = 100         # noise level the U-Net sees: evaluate-disc's default
    seed: int = 0               # the noise added to every image
    device: str = "cpu"         # where the model runs

    def __post_init__(self):
        if not 0 <= self.timestep < 1000:
            raise ValueError(f"--timestep must be in [0, 1000), got {self.timestep}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be from 0 to {MAX_SEED}, got {self.seed}")
        check_device(self.device)

    def dpt_folder(self) -> Path:
        """The DPT folder to score with (checked); ValueError when there is none."""
        folder = self.dpt if self.dpt is not None else shipped_dpt(self.model)
        if folder is None:
            raise ValueError("dpt score needs --dpt PATH on a model other than the shipped one")
        read_dpt_config(folder)
        return Path(folder)


def read_images(paths: list[Path], resolution: int) -> list:
    """Each file as (resolution, resolution, 3) uint8; ValueError naming one that is not."""
    images = []
    for path in paths:
        image = load_rgb(Path(path), resolution)
        if image is None:
            what = "does not exist" if not Path(path).exists() else "cannot be read as an image"
            raise ValueError(f"{path} {what}; expected a PNG or JPEG file")
        images.append(image)
    return images


def score_images(settings: ScoreSettings, paths: list[Path], texts: list[str],
                 bundle: ModelBundle | None = None) -> dict:
    """s(image, text) of every image against every text.

    Args:
        settings: the model, DPT folder, timestep and seed.
        paths: N image files.
        texts: T texts.
        bundle: the model already loaded from settings.model (its U-Net gains the DPT
            folder's LoRA); default: loaded here.

    Returns:
        {"images": N paths, "texts": T texts, "scores": N lists of T floats, "best": for
        each image the index of its best text, "settings": what made the numbers}.
    """
    if not paths or not texts:
        raise ValueError("dpt score needs at least one image and one text")
    folder = settings.dpt_folder()
    bundle = bundle or load_bundle(settings.model, settings.device)
    if bundle.vocabulary is not None:
        check_vocabulary(texts, bundle.vocabulary, settings.model)
    check_lengths(bundle.tokenizer, texts)
    images = read_images(paths, 8 * int(bundle.unet.config.sample_size))
    heads, config = load_for_sampling(folder, bundle.unet)
    if heads is None:
        raise ValueError(f"--dpt {folder} holds LoRA only: there is no adapter to score with")
    heads.to(bundle.device)
    scorer = DiscriminativeScorer(bundle, heads, config, settings.timestep, settings.seed)
    scores = scorer.score.matrix(scorer.encode(images), settings.timestep, list(texts))
    return {"images": [str(p) for p in paths], "texts": list(texts), "scores": scores.tolist(),
            "best": scores.argmax(dim=1).tolist(),
            "settings": {"model": str(settings.model), "dpt": str(folder.resolve()),
                         "timestep": settings.timestep, "seed": settings.seed,
                         "condition": config.condition, "block": config.block}}


def format_scores(result: dict, width: int = 24) -> str:
    """The scores as a table: one row per image, one column per text (texts clipped)."""
    heads = [t if len(t) <= width else t[:width - 1] + "…" for t in result["texts"]]
    lines = ["image".ljust(28) + "".join(h.rjust(width + 2) for h in heads)]
    for path, row, best in zip(result["images"], result["scores"], result["best"]):
        name = Path(path).name
        cells = "".join((f"{s:.4f}" + ("*" if j == best else " ")).rjust(width + 2)
                        for j, s in enumerate(row))
        lines.append(name[:27].ljust(28) + cells)
    lines.append(f"* the image's best text; s(z, y) at t = {result['settings']['timestep']}, "
                 f"seed {result['settings']['seed']}")
    return "\n".join(lines)
