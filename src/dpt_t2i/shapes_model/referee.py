"""Train the Shapes referee (`model.shapes_referee`) on rendered scenes and hard negatives.

An item is one training scene and its caption, 3 hard negatives of the caption (attribute
swaps, relation flips, count changes: `data.shapes.negatives`) and, for each, a render of a
scene where the negative holds and the caption does not: 4 images and 4 texts, as an ITM
item of `dpt evaluate-disc` is made (on the training split). Every (image, text) pair of the
item is labelled by the world's truth rule (`grammar.satisfied` on the scene), so the
labels are exact; each image is also paired with the caption of the next item of the batch
(an in-batch negative, or a positive when that caption happens to hold). The losses
(`referee_losses`): binary cross-entropy over all pairs, the 1-of-4 choice within each item,
and what each patch shows (a training-only head reading the image memory).

Images are augmented (`augment`) so the referee also reads generated images, which are
softer than renders: a blur of random strength, brightness, contrast and colour jitter,
pixel noise. Every random draw of step k comes from generators seeded by (seed, k), so a
resumed run takes the steps an uninterrupted one would have taken.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.samples import images_to_tensor
from ..data.shapes.dataset import make_sample
from ..data.shapes.grammar import Prompt, satisfied, scene_for, vocabulary
from ..data.shapes.negatives import sample_hard_negatives
from ..data.shapes.world import CANVAS, ShapeObject, render
from ..io.shapes_referee import save_shapes_referee
from ..model.shapes_referee import RefereeConfig, ShapesReferee, token_ids
from .loop import run_loop
from .referee_losses import WEIGHTS, PatchHead, loss_match, loss_patch, loss_rank, patch_targets

N_NEGATIVES = 3  # hard negatives (and negative images) an item, as an ITM item has


@dataclass
class RefereeItem:
    images: list[np.ndarray]          # (64, 64, 3) uint8: the caption's scene, then 3 more
    texts: list[str]                  # the caption, then its hard negatives
    scenes: list[list[ShapeObject]]   # the objects of each image
    prompts: list[Prompt]             # the parsed texts


def training_item(seed: int, index: int, split: str = "train") -> RefereeItem:
    """Item `index` of stream `seed`: a scene, its caption, its hard negatives and a scene
    for each negative that leaves the caption false (a negative without one is dropped and
    the others repeat, so every item has 4 images and 4 texts)."""
    base = make_sample(seed, index, split)
    rng = np.random.default_rng([seed, index, 3])
    drawn = [p for _, p in sample_hard_negatives(base.prompt, N_NEGATIVES, rng, base.objects)]
    negatives = []
    for prompt in drawn:
        for _ in range(20):
            objects = scene_for(prompt, rng)
            if not satisfied(base.prompt, objects):
                negatives.append((prompt, objects))
                break
    if not negatives:
        raise RuntimeError(f"caption {base.prompt.text!r} has no hard negative with a scene")
    negatives = [negatives[i % len(negatives)] for i in range(N_NEGATIVES)]
    scenes = [base.objects, *(objects for _, objects in negatives)]
    prompts = [base.prompt, *(prompt for prompt, _ in negatives)]
    return RefereeItem([base.image, *(render(o) for o in scenes[1:])],
                       [p.text for p in prompts], scenes, prompts)


def item_pairs(items: list[RefereeItem]) -> tuple[Tensor, Tensor, Tensor]:
    """Every (image, text) pair of each item, and each image with the next item's caption.

    Returns:
        pairs (P, 2) of (image row, text row) into the items' images and texts concatenated
        (4 a item), labels (P,) float: 1 where the text holds for the image's scene, and
        grid (B, 4, 4): the rows of item b's pair (image i, text j).
    """
    n, rows, labels = len(items), [], []
    grid = torch.zeros(n, 4, 4, dtype=torch.long)
    for k, item in enumerate(items):
        for i, scene in enumerate(item.scenes):
            for j, prompt in enumerate(item.prompts):
                grid[k, i, j] = len(rows)
                rows.append((4 * k + i, 4 * k + j))
                labels.append(satisfied(prompt, scene))
            other = items[(k + 1) % n]
            if n > 1:
                rows.append((4 * k + i, 4 * ((k + 1) % n)))
                labels.append(satisfied(other.prompts[0], scene))
    return torch.tensor(rows), torch.tensor(labels, dtype=torch.float32), grid


def augment(images: Tensor, generator: torch.Generator, strength: float = 1.0) -> Tensor:
    """Randomly softened and jittered images (N, 3, H, W) in [-1, 1]; a fifth stay as they
    are. Blur: a mix toward a 5x5 Gaussian (sigma 1) of random weight; brightness +-0.1,
    contrast 0.85-1.15, a gain per channel of 0.95-1.05, Gaussian noise of std up to 0.06,
    all times `strength` (0: the images as they are)."""
    n = len(images)
    if strength == 0:
        return images

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    taps = torch.exp(-torch.arange(-2, 3, dtype=torch.float32) ** 2 / 2)
    kernel = (taps[:, None] * taps[None, :] / taps.sum() ** 2).expand(3, 1, 5, 5)
    blurred = F.conv2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
    mix = uniform(0, strength, n, 1, 1, 1)
    x = images + mix * (blurred - images)
    mean = x.mean((1, 2, 3), keepdim=True)
    contrast = 1 + uniform(-0.15, 0.15, n, 1, 1, 1) * strength
    x = (x - mean) * contrast + mean + uniform(-0.1, 0.1, n, 1, 1, 1) * strength
    x = x * (1 + uniform(-0.05, 0.05, n, 3, 1, 1) * strength)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0, 0.06, n, 1, 1, 1) * strength
    keep = (torch.rand(n, generator=generator) < 0.2).view(n, 1, 1, 1)
    return torch.where(keep, images, x.clamp(-1, 1))


def referee_config(**overrides) -> RefereeConfig:
    """The default referee over the world's vocabulary, with `overrides` of its fields."""
    return RefereeConfig(vocabulary=vocabulary(), **overrides)


def _record_settings(run_dir: Path, settings: dict, resume: bool) -> None:
    """Write the run's settings to run_config.json; a resume with other settings (but for
    --steps) is refused in one line naming the first one that differs."""
    file = run_dir / "run_config.json"
    if resume and file.is_file() and any(run_dir.glob("step-*")):
        before = json.loads(file.read_text())
        for key in settings:
            if before.get(key) != settings[key]:
                name = key if key != "config" else next(
                    (k for k in settings["config"]
                     if before.get("config", {}).get(k) != settings["config"][k]), key)
                raise ValueError(f"{run_dir} was trained with other settings ({name}); resume "
                                 "with the same flags, or start over with --resume no")
    run_dir.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(settings, indent=1))


def train_referee(run_dir: Path, steps: int = 2400, batch: int = 16, lr: float = 1e-3,
                  seed: int = 0, resume: bool = True, checkpoint_every: int = 250,
                  config: RefereeConfig | None = None, augment_strength: float = 1.0,
                  out: Path | None = None) -> dict:
    """Train the referee on the training split; writes `final/` (fp16 referee folder).

    Args:
        run_dir: folder for checkpoints, `log.jsonl`, `summary.json` and `final/`.
        steps, batch, lr: optimisation steps, items a step (4 images, 20 pairs an item) and
            the peak rate of the cosine schedule (AdamW, 100 warm-up steps).
        seed: the training stream and the initial weights.
        config: the model (default `referee_config()`).
        augment_strength: scales every augmentation (0: clean renders only).
        out: also write the fp16 folder here (e.g. the package's weights/shapes-referee).

    Returns:
        The run's summary (step, wall seconds, final losses, the settings).
    """
    if steps < 1 or batch < 1 or lr <= 0 or augment_strength < 0:
        raise ValueError(f"need steps >= 1, batch >= 1, lr > 0 and augment strength >= 0, got "
                         f"{steps}, {batch}, {lr}, {augment_strength}")
    config = config or referee_config()
    if config.image_size != CANVAS:
        raise ValueError(f"the referee trains on the world's {CANVAS}-pixel renders; got "
                         f"image_size {config.image_size}")
    _record_settings(Path(run_dir), {"config": config.to_dict(), "batch": batch, "lr": lr,
                                     "seed": seed, "augment_strength": augment_strength},
                     resume)
    torch.manual_seed(seed)
    model, head = ShapesReferee(config), PatchHead(config.width)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    cells = config.grid ** 2

    def step_fn(step: int) -> dict[str, float]:
        items = [training_item(seed, step * batch + i) for i in range(batch)]
        pairs, labels, grid = item_pairs(items)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        images = augment(images_to_tensor([im for it in items for im in it.images]), gen,
                         augment_strength)
        memory = model.encode_images(images)  # (4B, S, W)
        logits = model.match(memory, token_ids(config, [t for it in items for t in it.texts]),
                             pairs)
        scenes = [scene for it in items for scene in it.scenes]
        losses = {"match": loss_match(logits, labels), "rank": loss_rank(logits, labels, grid),
                  "patch": loss_patch(head(memory[:, :cells]), patch_targets(scenes, config.grid))}
        sum(WEIGHTS[k] * v for k, v in losses.items()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        accuracy = ((logits > 0).float() == labels).float().mean()
        return {**{k: v.item() for k, v in losses.items()}, "acc": accuracy.item()}

    t0 = time.time()
    summary = run_loop(run_dir, steps, step_fn, {"referee": model, "patch_head": head}, opt,
                       lr, resume, checkpoint_every, "referee")
    summary.update(batch=batch, lr=lr, seed=seed, augment_strength=augment_strength,
                   this_call_s=round(time.time() - t0, 1))
    save_shapes_referee(Path(run_dir) / "final", model, extra=summary)
    if out is not None:
        save_shapes_referee(Path(out), model, extra=summary)
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
