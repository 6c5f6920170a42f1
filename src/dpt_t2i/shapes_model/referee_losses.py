"""The Shapes referee's training losses: matching, ranking within an item, and what each patch
shows (a training-only head; the shipped referee holds no trace of it).

- match: binary cross-entropy of every pair's logit against its exact label;
- rank: within each item (4 images x 4 texts), cross-entropy of each image over the 4 texts
  and of each text over the 4 images, the targets spread evenly over the true pairs: the
  ITM protocol's choice, 1 of 4, trained directly;
- patch: the renderer knows every object, so each patch of the image memory predicts whether
  an object's centre lies in it (BCE) and, where one does, its colour, shape and size
  (cross-entropy) and the centre's offset within the patch (L1). This teaches the image side
  the facts the text asks about; without it, 300 steps of batch 16 reached ITM 0.59 / 0.56
  (ID / OOD, 100 items), with it 0.90 / 0.87 (200 items).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.shapes.world import COLOURS, SHAPES, SIZES, ShapeObject
from ..model.shapes_referee import STRIDE

WEIGHTS = {"match": 1.0, "rank": 1.0, "patch": 1.0}  # set here; measured in the module docstring
IGNORE = -100  # cross-entropy's ignored target: patches without an object's centre


class PatchHead(nn.Module):
    """Per patch: centre logit, colour / shape / size logits, centre offset (x, y) in [0, 1]."""

    def __init__(self, width: int):
        super().__init__()
        self.out = nn.Linear(width, 1 + len(COLOURS) + len(SHAPES) + len(SIZES) + 2)

    def forward(self, patches: Tensor) -> dict[str, Tensor]:
        """patches (N, G, W) -> centre (N, G), colour (N, G, 6), shape (N, G, 3), size
        (N, G, 2), offset (N, G, 2)."""
        out = self.out(patches)
        sizes = (1, len(COLOURS), len(SHAPES), len(SIZES), 2)
        centre, colour, shape, size, offset = out.split(sizes, -1)
        return {"centre": centre.squeeze(-1), "colour": colour, "shape": shape, "size": size,
                "offset": offset.sigmoid()}


def patch_targets(scenes: list[list[ShapeObject]], grid: int) -> dict[str, Tensor]:
    """What each patch of a grid x grid memory (row-major, STRIDE pixels a side) should say.

    Two objects' centres never share a patch: objects are at least 10 pixels wide and 2
    apart, so their centres differ by more than STRIDE along some axis.

    Returns:
        centre (N, G) float, colour / shape / size (N, G) long (IGNORE off centres),
        offset (N, G, 2) float.
    """
    n, cells = len(scenes), grid * grid
    centre = torch.zeros(n, cells)
    kinds = torch.full((n, cells, 3), IGNORE, dtype=torch.long)
    offset = torch.zeros(n, cells, 2)
    for row, scene in enumerate(scenes):
        for obj in scene:
            cx, cy = obj.centre
            cell = int(cy // STRIDE) * grid + int(cx // STRIDE)
            centre[row, cell] = 1
            kinds[row, cell] = torch.tensor([COLOURS.index(obj.colour), SHAPES.index(obj.shape),
                                             SIZES.index(obj.size)])
            offset[row, cell] = torch.tensor([cx % STRIDE, cy % STRIDE]) / STRIDE
    return {"centre": centre, "colour": kinds[..., 0], "shape": kinds[..., 1],
            "size": kinds[..., 2], "offset": offset}


def loss_match(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean BCE of logits (P,) against labels (P,) in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def loss_rank(logits: Tensor, labels: Tensor, grid: Tensor) -> Tensor:
    """Mean of the image-to-text and text-to-image cross-entropies within items.

    Args:
        logits, labels: (P,) as in `loss_match`.
        grid: (B, 4, 4) rows of `logits` of item b's (image i, text j) pairs; each image has
            at least its own text true, each text at least its own image.
    """
    scores, truth = logits[grid], labels[grid]  # (B, image, text)
    i2t = -(truth / truth.sum(2, keepdim=True) * scores.log_softmax(2)).sum(2).mean()
    t2i = -(truth / truth.sum(1, keepdim=True) * scores.log_softmax(1)).sum(1).mean()
    return (i2t + t2i) / 2


def loss_patch(predicted: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
    """Centre BCE over every patch, plus colour / shape / size cross-entropies and the offset
    L1 on the patches that hold a centre."""
    loss = F.binary_cross_entropy_with_logits(predicted["centre"], target["centre"])
    for key in ("colour", "shape", "size"):
        logits = predicted[key]
        loss = loss + F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                      target[key].reshape(-1), ignore_index=IGNORE)
    held = target["centre"].bool()  # (N, G)
    return loss + (predicted["offset"][held] - target["offset"][held]).abs().mean()
