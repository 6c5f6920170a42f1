"""Training samples for DPT on the Shapes world: one scene, its caption, K hard negatives,
and one referring expression with its box.

Sample `index` of stream `seed` is always the same (generators seeded by (seed, index)).
Negatives are false for the scene by construction (`negatives.hard_negatives` checks them);
when a caption has fewer than K, the ones it has are repeated so batches keep a fixed K.
Boxes are (cx, cy, w, h) in [0, 1], the grounding head's convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .dataset import images_to_tensor, make_sample
from .grammar import FAMILIES
from .negatives import sample_hard_negatives
from .world import CANVAS


@dataclass
class DPTSample:
    image: np.ndarray  # (64, 64, 3) uint8
    caption: str
    negatives: list[str]  # exactly K texts, each false for the image
    refexp: str | None  # None when no object of the scene can be named unambiguously
    box: tuple[float, float, float, float] | None  # the referred object, cxcywh in [0, 1]
    family: str


def make_dpt_sample(seed: int, index: int, split: str = "train", n_negatives: int = 3,
                    families: tuple[str, ...] = FAMILIES) -> DPTSample:
    """The DPT view of `dataset.make_sample(seed, index, split)`."""
    base = make_sample(seed, index, split, families, with_refexp=True)
    rng = np.random.default_rng([seed, index, 1])
    drawn = [p.text for _, p in sample_hard_negatives(base.prompt, n_negatives, rng, base.objects)]
    if n_negatives and not drawn:
        raise RuntimeError(f"caption {base.prompt.text!r} has no hard negative")
    negatives = [drawn[i % len(drawn)] for i in range(n_negatives)] if drawn else []
    box = None
    if base.refexp is not None:
        x0, y0, x1, y1 = base.refexp.box
        box = ((x0 + x1) / 2 / CANVAS, (y0 + y1) / 2 / CANVAS, (x1 - x0) / CANVAS,
               (y1 - y0) / CANVAS)
    return DPTSample(base.image, base.prompt.text, negatives,
                     base.refexp.text if base.refexp else None, box, base.prompt.family)


def collate(samples: list[DPTSample]) -> dict:
    """Stack samples into a batch.

    Returns:
        dict with `pixels` (B, 3, 64, 64) in [-1, 1], `captions` (B texts), `negatives`
        (B lists of K texts), `refexps` (B texts, "" where a sample has none), `boxes`
        (B, 4) cxcywh (zeros where none) and `has_ref` (B,) bool.
    """
    has_ref = torch.tensor([s.refexp is not None for s in samples])
    boxes = torch.tensor([s.box if s.box is not None else (0.0,) * 4 for s in samples])
    return {"pixels": images_to_tensor([s.image for s in samples]),
            "captions": [s.caption for s in samples],
            "negatives": [s.negatives for s in samples],
            "refexps": [s.refexp or "" for s in samples],
            "boxes": boxes, "has_ref": has_ref}
