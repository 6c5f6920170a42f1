"""Deterministic streams of Shapes samples: sample `i` of seed `s` is always the same.

Each sample is a prompt of the requested split, a scene holding exactly what it names and
that scene's render, with the scene's referring expressions available on request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..samples import images_to_tensor  # noqa: F401  (re-exported)
from .grammar import FAMILIES, Prompt, scene_for
from .refexp import Refexp, random_refexp
from .splits import sample_prompt
from .world import ShapeObject, render


@dataclass
class Sample:
    prompt: Prompt
    objects: list[ShapeObject]
    image: np.ndarray  # (64, 64, 3) uint8
    refexp: Refexp | None = None


def make_sample(seed: int, index: int, split: str = "train",
                families: tuple[str, ...] = FAMILIES, with_refexp: bool = False) -> Sample:
    """Sample `index` of the stream `seed`; families are drawn uniformly."""
    rng = np.random.default_rng([seed, index])
    family = families[rng.integers(len(families))]
    prompt = sample_prompt(rng, family, split)
    objects = scene_for(prompt, rng)
    ref = random_refexp(objects, rng) if with_refexp else None
    return Sample(prompt, objects, render(objects), ref)


def make_batch(seed: int, step: int, batch: int, **kwargs) -> list[Sample]:
    """The `batch` samples of training step `step` (indices step*batch ... step*batch+batch-1)."""
    return [make_sample(seed, step * batch + i, **kwargs) for i in range(batch)]


class ShapesStream(torch.utils.data.IterableDataset):
    """An endless (or `length`-long) stream of samples, split across DataLoader workers."""

    def __init__(self, seed: int = 0, split: str = "train", families: tuple[str, ...] = FAMILIES,
                 with_refexp: bool = False, length: int | None = None, start: int = 0):
        self.seed, self.split, self.families = seed, split, families
        self.with_refexp, self.length, self.start = with_refexp, length, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = self.start + worker
        while self.length is None or index < self.start + self.length:
            s = make_sample(self.seed, index, self.split, self.families, self.with_refexp)
            yield {"image": torch.from_numpy(s.image), "text": s.prompt.text,
                   "family": s.prompt.family, "index": index}
            index += workers
