"""The training sample every DPT data source produces, and the batch it collates into.

One image, its caption, K hard negatives (texts false for the image), and at most one
referring expression with its box, plus the boxes of the scene's other objects where the
source knows them (the grounding loss supervises every object, the referred one labelled).
Boxes are (cx, cy, w, h) in [0, 1] of the image, the
grounding head's convention, so they do not depend on the resolution the image is fed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class DPTSample:
    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    negatives: list[str]  # exactly K texts, each false for the image
    refexp: str | None  # None when the image has no referring expression to train on
    box: tuple[float, float, float, float] | None  # the referred object, cxcywh in [0, 1]
    family: str  # a Shapes prompt family, or the data source's name (e.g. "coco")
    others: list[tuple[float, float, float, float]] = field(default_factory=list)
    # boxes of the scene's other objects (cxcywh in [0, 1]); empty when unknown


def images_to_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1], the VAE's pixel convention."""
    array = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def collate(samples: list[DPTSample]) -> dict:
    """Stack samples (all the same image size) into a batch.

    Returns:
        dict with `pixels` (B, 3, H, W) in [-1, 1], `captions` (B texts), `negatives`
        (B lists of K texts), `refexps` (B texts, "" where a sample has none), `boxes`
        (B, 4) cxcywh (zeros where none), `has_ref` (B,) bool, `families` (B texts),
        `object_boxes` (B, O, 4): the referred object in slot 0, then the others, zero-padded
        to the batch's largest scene, and `object_mask` (B, O) bool, True on real boxes.
    """
    has_ref = torch.tensor([s.refexp is not None for s in samples])
    zero = (0.0,) * 4
    boxes = torch.tensor([s.box if s.box is not None else zero for s in samples])
    scenes = [[s.box, *s.others] if s.box is not None else [] for s in samples]
    width = max(1, max(len(scene) for scene in scenes))
    object_boxes = torch.tensor([scene + [zero] * (width - len(scene)) for scene in scenes])
    object_mask = torch.tensor([[i < len(scene) for i in range(width)] for scene in scenes])
    return {"pixels": images_to_tensor([s.image for s in samples]),
            "captions": [s.caption for s in samples],
            "negatives": [s.negatives for s in samples],
            "refexps": [s.refexp or "" for s in samples],
            "boxes": boxes, "has_ref": has_ref,
            "families": [s.family for s in samples],
            "object_boxes": object_boxes, "object_mask": object_mask}
