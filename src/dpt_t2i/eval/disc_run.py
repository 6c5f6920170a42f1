"""One discriminative evaluation run: what `dpt evaluate-disc` and `dpt report` measure.

Image-text matching (one positive, three hard negatives; chance 0.25) and referring
expressions (accuracy at IoU >= 0.5), on the Shapes world's ID and OOD streams or on COCO
captions and RefCOCO files. `DiscSettings` says what to score and on which data;
`run_discriminative` returns the result as `dpt evaluate-disc --json` prints it and
`format_tables` as the command's tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.coco import MissingImages, read_coco_captions
from ..data.real import RecEvalSet
from ..data.refcoco import read_refcoco
from ..io.bundle import check_device, load_bundle
from ..io.clip import CLIP_FOLDER, load_clip_and_tokenizer
from ..io.dpt_folder import load_dpt
from .discriminative import (DiscriminativeScorer, RECItem, coco_itm_items, evaluate_itm,
                             evaluate_rec, shapes_itm_item, shapes_rec_items)
from .zero_shot import DEFAULT_TIMESTEPS, CLIPScorer, DiffusionITMScorer

METHODS = ("dpt", "clip", "diffusion-itm")
TIMESTEPS_EXPECTED = "--itm-timesteps must be comma-separated whole numbers in [0, 1000)"


@dataclass(frozen=True, kw_only=True)
class DiscSettings:
    """What to score and on which data. Messages name the command's flags: the command line
    is where these values are usually given."""

    method: str = "dpt"             # dpt: the DPT folder's adapter; clip, diffusion-itm: ITM only
    dpt: Path | None = None         # a DPT folder; LoRA-only folders serve diffusion-itm
    clip_model: Path | None = None  # method clip: a transformers CLIP folder (None: Shapes CLIP)
    itm_timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS  # diffusion-itm: errors averaged over t
    model: Path                     # the model folder
    timestep: int = 100             # noise level the U-Net sees (method dpt)
    n_itm: int = 200                # ITM items per split
    n_rec: int = 400                # REC items per split (method dpt only)
    seed: int = 1                   # evaluation stream and noise; training uses 0
    coco_captions: Path | None = None   # captions_*.json: ITM on COCO instead of Shapes
    coco_images: Path | None = None     # its image folder
    refcoco_refs: Path | None = None    # refs(unc).p: REC on RefCOCO instead of Shapes
    refcoco_instances: Path | None = None
    refcoco_images: Path | None = None  # the refs' image folder (None: coco_images)
    refcoco_splits: tuple[str, ...] = ("val", "testA", "testB")
    resolution: int | None = None       # image side (None: the U-Net's sample size x 8)
    device: str = "cpu"                 # where the model and the scorer run

    def __post_init__(self):
        self._check_method()
        if not self.itm_timesteps or not all(0 <= t < 1000 for t in self.itm_timesteps):
            text = ",".join(map(str, self.itm_timesteps))
            raise ValueError(f"{TIMESTEPS_EXPECTED}, got {text!r}")
        if not 0 <= self.timestep < 1000:
            raise ValueError(f"--timestep must be in [0, 1000), got {self.timestep}")
        if self.n_itm < 0 or self.n_rec < 0 or self.n_itm + self.n_rec == 0:
            raise ValueError("--n-itm and --n-rec must be >= 0 and not both 0")
        if self.method != "dpt" and self.n_itm == 0:
            raise ValueError(f"--method {self.method} scores image-text matching only; "
                             "--n-itm must be > 0")
        self._check_real_data()
        check_device(self.device)

    def _check_method(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "dpt" and self.dpt is None:
            raise ValueError("--method dpt needs --dpt PATH (a probe or tune run's final/)")
        if self.method == "clip" and self.dpt is not None:
            raise ValueError("--method clip reads no DPT folder; drop --dpt")

    def _check_real_data(self) -> None:
        if (self.coco_captions is None) != (self.coco_images is None):
            raise ValueError("give both --coco-captions and --coco-images")
        if self.refcoco_refs and self.rec_count:
            if self.refcoco_instances is None:
                raise ValueError("--refcoco-refs needs --refcoco-instances")
            if (self.refcoco_images or self.coco_images) is None:
                raise ValueError("give --refcoco-images (or --coco-images) for the RefCOCO "
                                 "images")

    @property
    def rec_count(self) -> int:
        """REC items per split: the baselines draw no boxes."""
        return self.n_rec if self.method == "dpt" else 0

    @property
    def real_data(self) -> bool:
        """Whether the run reads COCO / RefCOCO files instead of drawing Shapes scenes."""
        return any((self.coco_captions, self.coco_images, self.refcoco_refs))


def run_discriminative(settings: DiscSettings, bundle=None, progress: bool = True) -> dict:
    """Score `settings.method` on ITM and REC, as `dpt evaluate-disc` does.

    Args:
        settings: the scorer, the model and the data (see `DiscSettings`).
        bundle: `settings.model` already loaded (a `ModelBundle`); None loads it here.
        progress: show a progress bar per split on stderr.

    Returns:
        {"itm": {split: {"i2t", "t2i", "overall", "n"}}, "rec": {split: {"acc", "mean_iou",
        "n"}}, "skipped_images": int (real data only), "settings": what ran, with
        "unet_evals_per_pair"}: the object `dpt evaluate-disc --json` prints.

    Raises:
        ValueError: a folder or file that cannot be read, naming the flag that gave it.
    """
    if bundle is None:
        bundle = load_bundle(settings.model, settings.device)
    record = {"method": settings.method, "dpt": str(settings.dpt) if settings.dpt else None,
              "model": str(settings.model), "seed": settings.seed}
    scorer = _scorer(settings, bundle, record)
    if settings.real_data:
        result = _real(settings, scorer, bundle, progress)
    else:
        result = _shapes(settings, scorer, progress)
    record["unet_evals_per_pair"] = scorer.unet_evals_per_pair
    result["settings"] = record
    return result


def _scorer(settings: DiscSettings, bundle, record: dict):
    """The scorer of `settings.method`; adds its settings to `record`."""
    if settings.method == "clip":
        folder = settings.clip_model or CLIP_FOLDER
        try:
            clip, tokenizer = load_clip_and_tokenizer(folder)
        except (OSError, ValueError) as err:
            raise ValueError(f"--clip-model {folder}: not a transformers CLIP folder with its "
                             f"tokenizer ({str(err).splitlines()[0]})") from None
        record["clip_model"] = str(folder)
        return CLIPScorer(clip.to(bundle.device), tokenizer)
    try:
        heads, config = (load_dpt(settings.dpt, bundle.unet,
                                  lora_only_ok=settings.method != "dpt")
                         if settings.dpt is not None else (None, None))
    except ValueError as err:  # the folder's problem, named by the flag that gave it
        raise ValueError(f"--dpt: {err}") from None
    if heads is not None:
        heads.to(bundle.device)
    if settings.method == "diffusion-itm":
        record["itm_timesteps"] = list(settings.itm_timesteps)
        return DiffusionITMScorer(bundle, settings.itm_timesteps, settings.seed)
    record.update(timestep=settings.timestep, condition=config.condition, block=config.block)
    return DiscriminativeScorer(bundle, heads, config, settings.timestep, settings.seed)


def _shapes(settings: DiscSettings, scorer, progress: bool) -> dict:
    """ITM and REC on fresh ID and OOD scenes of the Shapes world."""
    seed, out = settings.seed, {"itm": {}, "rec": {}}
    for split in ("id", "ood"):
        if settings.n_itm:
            items = [shapes_itm_item(seed, i, split) for i in range(settings.n_itm)]
            out["itm"][split] = evaluate_itm(scorer, items, progress=progress)
        if settings.rec_count:
            items = shapes_rec_items(seed, split, settings.rec_count)
            out["rec"][split] = evaluate_rec(scorer, items, progress=progress)
    return out


def _real(settings: DiscSettings, scorer, bundle, progress: bool) -> dict:
    """ITM on COCO captions and REC per RefCOCO split; counts the images that failed to load."""
    resolution = settings.resolution or 8 * int(bundle.unet.config.sample_size)
    out: dict = {"itm": {}, "rec": {}, "skipped_images": 0}
    if settings.coco_captions and settings.n_itm:
        try:
            captioned = read_coco_captions(settings.coco_captions, settings.coco_images,
                                           require=True)
        except MissingImages as err:  # not a result over no image
            raise ValueError(f"--coco-images {err}") from None
        if len(captioned) < 4:
            raise ValueError(f"{settings.coco_captions} has {len(captioned)} captioned images; "
                             "ITM needs at least 4 (one positive, three negative images)")
        items, skipped = coco_itm_items(captioned, resolution, settings.n_itm, settings.seed)
        out["skipped_images"] += skipped
        if items:
            out["itm"]["coco"] = evaluate_itm(scorer, items, progress=progress)
    if settings.refcoco_refs and settings.rec_count:
        out["skipped_images"] += _refcoco(settings, scorer, resolution, out["rec"], progress)
    return out


def _refcoco(settings: DiscSettings, scorer, resolution: int, rec: dict, progress: bool) -> int:
    """REC per RefCOCO split into `rec`; returns the number of images skipped."""
    splits = settings.refcoco_splits
    images = settings.refcoco_images or settings.coco_images
    try:  # COCO 2017 names are read by id; a folder with none of the images is an error
        refs = read_refcoco(settings.refcoco_refs, settings.refcoco_instances, images,
                            set(splits))
    except MissingImages as err:
        flag = "--refcoco-images" if settings.refcoco_images else "--coco-images"
        raise ValueError(f"{flag} {err}") from None
    skipped = 0
    for split in splits:
        evalset = RecEvalSet([r for r in refs if r.split == split], resolution)
        items = [RECItem(ex.image, ex.sentence, ex.box, split)
                 for ex in evalset][:settings.rec_count]
        skipped += evalset.skipped
        if items:
            rec[split] = evaluate_rec(scorer, items, progress=progress)
    return skipped


def format_tables(result: dict) -> str:
    """The tables `dpt evaluate-disc` prints for a `run_discriminative` result."""
    lines = []
    if result["itm"]:
        lines += ["image-text matching (1 positive vs 3 hard negatives; chance 0.25)",
                  f"{'split':<8}{'i2t':>8}{'t2i':>8}{'overall':>9}{'n':>6}"]
        lines += [f"{s:<8}{r['i2t']:>8.3f}{r['t2i']:>8.3f}{r['overall']:>9.3f}{r['n']:>6}"
                  for s, r in result["itm"].items()]
    if result["rec"]:
        lines += ["", "referring expressions (accuracy at IoU >= 0.5)",
                  f"{'split':<8}{'acc':>8}{'mIoU':>8}{'n':>6}"]
        lines += [f"{s:<8}{r['acc']:>8.3f}{r['mean_iou']:>8.3f}{r['n']:>6}"
                  for s, r in result["rec"].items()]
    if result.get("skipped_images"):
        lines += ["", f"skipped {result['skipped_images']} missing or unreadable images"]
    settings = result.get("settings", {})
    if "unet_evals_per_pair" in settings:
        lines += ["", f"{settings['method']}: {settings['unet_evals_per_pair']} U-Net "
                  "evaluation(s) per image-text pair"]
    return "\n".join(lines).strip()
