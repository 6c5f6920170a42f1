"""Standard text-to-image metrics through torchmetrics, from local weights: CLIPScore, FID, IS.

- CLIPScore (`torchmetrics.multimodal.CLIPScore`): 100 * cos(image embedding, prompt
  embedding) of a local transformers CLIP folder, averaged over a group's images; torchmetrics
  then clamps the mean at 0 (max(mean, 0), not the mean of clamped scores).
- FID (`torchmetrics.image.fid.FrechetInceptionDistance`) of a group's images against a
  folder of reference images, and IS (`torchmetrics.image.inception.InceptionScore`), both on
  the FID Inception-v3 of `inception.py` loaded from torch-fidelity's weights file. The
  network runs once per image; torchmetrics gets its 2048-wide pool features through the
  `feature` module argument (FID reads them as they are, IS through the fc layer without bias,
  the "logits_unbiased" torch-fidelity and torchmetrics use). FID thus equals torchmetrics'
  own `FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=...)`; IS differs
  from its `InceptionScore()` (which cannot take a weights path and downloads) only in
  computing in float64 and in its splits: min(10, N // 50), at least 1, drawn with seed 0.

Nothing is downloaded: every model loads from a path the caller gives (`local_files_only`),
and a missing or wrong path is a ValueError naming it. torchmetrics is imported only here
and only when a metric is asked for (the `metrics` extra). Everything runs on the CPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm.auto import tqdm

from .inception import WEIGHTS_NAME, InceptionV3, load_inception

INSTALL = "pip install 'dpt-t2i[metrics]'"
BATCH = 32
REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg")
IS_SPLITS, IS_MIN_SPLIT = 10, 50  # the usual 10 splits, fewer so each split has >= 50 images


@dataclass
class MetricModels:
    """What `image_metrics` measures with; a None field turns its metric off."""

    clip: nn.Module | None = None  # a torchmetrics CLIPScore holding the local CLIP
    inception: InceptionV3 | None = None  # IS, and FID when `reference` is set
    reference: list[Path] = field(default_factory=list)  # FID reference images


def load_metric_models(clip_model: Path | None = None, inception_weights: Path | None = None,
                       fid_reference: Path | None = None) -> MetricModels:
    """Load and check everything the metrics need, before any image is measured.

    Args:
        clip_model: a local transformers CLIP folder (CLIPModel and CLIPProcessor files) for
            CLIPScore.
        inception_weights: torch-fidelity's Inception-v3 weights file, for IS and FID.
        fid_reference: a folder of reference PNG/JPG images for FID (needs inception_weights).

    Raises:
        ValueError: torchmetrics is not installed, or a path is missing or not what it should be.
    """
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        raise ValueError(f"CLIPScore, FID and IS need torchmetrics, which is not installed: "
                         f"{INSTALL}") from None
    if fid_reference is not None and inception_weights is None:
        raise ValueError(f"FID against {fid_reference} needs the Inception weights too "
                         f"(--inception-weights PATH to torch-fidelity's {WEIGHTS_NAME}); "
                         "nothing is downloaded")
    models = MetricModels()
    if clip_model is not None:
        models.clip = _clip_scorer(Path(clip_model))
    if inception_weights is not None:
        models.inception = load_inception(inception_weights)
    if fid_reference is not None:
        models.reference = reference_images(Path(fid_reference))
    return models


def _clip_scorer(folder: Path) -> nn.Module:
    """A torchmetrics CLIPScore whose CLIP and processor load from `folder` only."""
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    expected = ("expected a local transformers CLIP folder as CLIPModel.save_pretrained and "
                "CLIPProcessor.save_pretrained write it (config.json, the weights, the tokenizer "
                "files and preprocessor_config.json)")
    if not folder.is_dir():
        raise ValueError(f"CLIP model folder {folder} does not exist; {expected}")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # our one-line error replaces transformers' load report
    hf_logging.disable_progress_bar()
    try:
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        model, info = CLIPModel.from_pretrained(folder, local_files_only=True,
                                                output_loading_info=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = str(err).strip().split(". ")[0].splitlines()[0] or type(err).__name__
        raise ValueError(f"cannot load a CLIP model from {folder} ({reason}); "
                         f"{expected}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if info["missing_keys"]:  # e.g. a text encoder's folder: the rest would be random
        raise ValueError(f"{folder} lacks {len(info['missing_keys'])} of CLIPModel's weights "
                         f"(such as {sorted(info['missing_keys'])[0]}); {expected}")
    return CLIPScore(model_name_or_path=lambda: (_TensorFeatures(model.eval()), processor))


class _TensorFeatures(nn.Module):
    """A CLIPModel whose get_image_features / get_text_features return the embedding tensor.

    transformers >= 5 returns an output object (the embedding in `pooler_output`), which
    torchmetrics <= 1.9 does not unwrap (torchmetrics issue #3407).
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.config = clip.config  # CLIPScore reads the text length limit from it

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return _embedding(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return _embedding(self.clip.get_text_features(*args, **kwargs))


def _embedding(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def reference_images(folder: Path) -> list[Path]:
    """The PNG/JPG files directly in `folder`, sorted; ValueError unless >= 2 readable images."""
    expected = "expected a folder of reference images (PNG or JPG files) for FID"
    if not folder.is_dir():
        raise ValueError(f"FID reference folder {folder} does not exist; {expected}")
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in REFERENCE_SUFFIXES)
    if len(paths) < 2:
        raise ValueError(f"FID reference folder {folder} has {len(paths)} PNG/JPG images; "
                         f"{expected}, at least 2")
    for path in paths:
        try:
            Image.open(path).close()  # reads the header only
        except (OSError, UnidentifiedImageError):
            raise ValueError(f"FID reference image {path} is not a readable image; "
                             f"{expected}") from None
    return paths


def image_metrics(groups: dict[str, list[dict]], models: MetricModels) -> dict[str, dict]:
    """{group: {"clip_score", "is", "is_std", "fid"}}, each metric that `models` allows.

    Args:
        groups: {row name: records with "folder", "file" and "prompt"} (an ID/OOD split of
            judged images, or a folder of other prompts).
        models: from `load_metric_models`.

    A value is None where the group is too small for it (FID needs 2 images; `is_std` needs
    2 splits, so 100 images).
    """
    fid = _reference_fid(models) if models.reference else None
    out = {}
    for name, records in groups.items():
        paths = [Path(r["folder"]) / r["file"] for r in records]
        row: dict[str, float | None] = {}
        if models.clip is not None:
            row["clip_score"] = clip_score(models.clip, paths, [r["prompt"] for r in records])
        if models.inception is not None:
            pool = pool_features(models.inception, paths)
            row["is"], row["is_std"] = inception_score(models.inception, pool)
            if fid is not None:
                row["fid"] = frechet_inception_distance(fid, pool)
        out[name] = row
    return out


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB image."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


def clip_score(scorer: nn.Module, paths: list[Path], prompts: list[str]) -> float:
    """torchmetrics CLIPScore of images against their prompts: max(mean 100 * cos, 0)."""
    scorer.reset()
    for i in tqdm(range(0, len(paths), BATCH), desc="clipscore", unit="batch",
                  dynamic_ncols=True, mininterval=1.0):
        with torch.no_grad():
            scorer.update([load_image(p) for p in paths[i:i + BATCH]], prompts[i:i + BATCH])
    return float(scorer.compute())


@torch.no_grad()
def pool_features(net: InceptionV3, paths: list[Path]) -> torch.Tensor:
    """(N, 2048) Inception pool features of the images at `paths` (any sizes), in float64."""
    out = []
    for i in tqdm(range(0, len(paths), BATCH), desc="inception", unit="batch",
                  dynamic_ncols=True, mininterval=1.0):
        images = [load_image(p) for p in paths[i:i + BATCH]]
        if len({im.shape for im in images}) == 1:
            out.append(net(torch.stack(images)))
        else:  # sizes differ: one at a time (each is resized to 299x299 inside)
            out.extend(net(im[None]) for im in images)
    return torch.cat(out).double()


class _FromPool(nn.Module):
    """The `feature` module torchmetrics gets: maps pool features (N, 2048) to what it reads.

    FID reads the features themselves (`fc_weight` None); IS reads the unbiased logits
    pool @ fc_weight.T (N, 1008).
    """

    num_features = 2048  # FID reads this instead of running a dummy image through

    def __init__(self, fc_weight: torch.Tensor | None = None):
        super().__init__()
        self.fc_weight = fc_weight

    def forward(self, pool: torch.Tensor) -> torch.Tensor:
        return pool if self.fc_weight is None else pool @ self.fc_weight.double().T


def _reference_fid(models: MetricModels):
    """A torchmetrics FID holding the reference images' statistics, kept across `reset()`."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_FromPool(), reset_real_features=False)
    fid.update(pool_features(models.inception, models.reference), real=True)
    return fid


def frechet_inception_distance(fid, pool: torch.Tensor) -> float | None:
    """FID of images with pool features `pool` (N, 2048) against `fid`'s reference set."""
    if len(pool) < 2:
        return None
    fid.reset()
    fid.update(pool, real=False)
    return float(fid.compute())


def inception_score(net: InceptionV3, pool: torch.Tensor) -> tuple[float, float | None]:
    """torchmetrics IS (mean, std over splits) of images with pool features `pool` (N, 2048).

    min(10, N // 50) splits, at least 1 (the std is None then); splits are drawn with seed 0.
    """
    from torchmetrics.image.inception import InceptionScore

    splits = max(1, min(IS_SPLITS, len(pool) // IS_MIN_SPLIT))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metric `InceptionScore` will save")
        metric = InceptionScore(feature=_FromPool(net.fc.weight), splits=splits)
    metric.update(pool)
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(0)  # IS shuffles the images before splitting
        warnings.filterwarnings("ignore", message="std\\(\\): degrees of freedom")  # 1 split
        mean, std = metric.compute()
    return float(mean), (float(std) if splits > 1 else None)
