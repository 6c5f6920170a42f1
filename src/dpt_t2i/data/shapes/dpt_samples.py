"""Training samples for DPT on the Shapes world: one scene, its caption, K hard negatives,
and one referring expression with its box (and the boxes of the scene's other objects).

Sample `index` of stream `seed` is always the same (generators seeded by (seed, index)).
Negatives are false for the scene by construction (`negatives.hard_negatives` checks them);
when a caption has fewer than K, the ones it has are repeated so batches keep a fixed K.
Boxes are (cx, cy, w, h) in [0, 1], the grounding head's convention.
"""

from __future__ import annotations

import numpy as np

from ..samples import DPTSample, collate  # noqa: F401  (collate re-exported)
from .dataset import make_sample
from .grammar import FAMILIES
from .negatives import sample_hard_negatives
from .world import CANVAS


def make_dpt_sample(seed: int, index: int, split: str = "train", n_negatives: int = 3,
                    families: tuple[str, ...] = FAMILIES) -> DPTSample:
    """The DPT view of `dataset.make_sample(seed, index, split)`."""
    base = make_sample(seed, index, split, families, with_refexp=True)
    rng = np.random.default_rng([seed, index, 1])
    drawn = [p.text for _, p in sample_hard_negatives(base.prompt, n_negatives, rng, base.objects)]
    if n_negatives and not drawn:
        raise RuntimeError(f"caption {base.prompt.text!r} has no hard negative")
    negatives = [drawn[i % len(drawn)] for i in range(n_negatives)] if drawn else []
    box, others = None, []
    if base.refexp is not None:
        box = _cxcywh(base.refexp.box)
        others = [_cxcywh(o.box) for i, o in enumerate(base.objects) if i != base.refexp.target]
    return DPTSample(base.image, base.prompt.text, negatives,
                     base.refexp.text if base.refexp else None, box, base.prompt.family, others)


def _cxcywh(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """Pixel (x0, y0, x1, y1) -> (cx, cy, w, h) in [0, 1] of the canvas."""
    x0, y0, x1, y1 = box
    return ((x0 + x1) / 2 / CANVAS, (y0 + y1) / 2 / CANVAS, (x1 - x0) / CANVAS,
            (y1 - y0) / CANVAS)
