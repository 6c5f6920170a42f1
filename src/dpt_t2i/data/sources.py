"""Where training samples come from: `sample(i)` is always the same sample."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import numpy as np

from .samples import DPTSample
from .shapes.dpt_samples import make_dpt_sample


class SampleSource(Protocol):
    """Where samples come from: `sample(i)` is always the same, None for an unreadable image."""

    skipped: int

    def sample(self, index: int) -> DPTSample | None: ...


class ShapesSource:
    """The Shapes world's endless DPT stream (never skips)."""

    def __init__(self, seed: int = 0, split: str = "train", n_negatives: int = 3):
        self.seed, self.split, self.n_negatives = seed, split, n_negatives
        self.skipped = 0

    def sample(self, index: int) -> DPTSample:
        return make_dpt_sample(self.seed, index, self.split, self.n_negatives)

    def identity(self) -> dict:
        """What makes the stream's samples what they are (a latent cache records it)."""
        return {"kind": "shapes", "seed": self.seed, "split": self.split,
                "n_negatives": self.n_negatives}


def draw_samples(source: SampleSource, first: int, count: int) -> list[DPTSample]:
    """Samples first .. first+count-1; one that cannot be read is replaced by a later one."""
    out = []
    for i in range(first, first + count):
        for attempt in range(100):
            sample = source.sample(i + attempt * 1_000_003)
            if sample is not None:
                out.append(sample)
                break
        else:
            raise RuntimeError(f"100 unreadable images in a row from sample {i}; "
                               f"{source.skipped} skipped so far")
    return out


class EpochShuffle:
    """Sample index -> item of a finite data set, in a new seeded order each epoch.

    Index i belongs to epoch e = i // size and reads item `perm(seed, e)[i % size]`, a
    permutation drawn from `np.random.default_rng([seed, e, 0x5348])`: every item once per
    epoch, another order each epoch, the same orders for the same seed. The order is a
    function of the index alone, so a resumed run (or a DataLoader worker) reproduces it.

    Args:
        size: items in the data set (>= 1).
        seed: the run's seed.
    """

    _KEEP = 4  # permutations kept: a batch spans at most 2 epochs, replacements 2 more

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError(f"cannot shuffle an empty data set (size {size})")
        self.size, self.seed = size, seed
        self._orders: OrderedDict[int, np.ndarray] = OrderedDict()

    def order(self, epoch: int) -> np.ndarray:
        """(size,) int64: the items of `epoch` in the order its indices read them."""
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch, 0x5348])
            self._orders[epoch] = rng.permutation(self.size)
            if len(self._orders) > self._KEEP:
                self._orders.popitem(last=False)
        return self._orders[epoch]

    def __call__(self, index: int) -> int:
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        return int(self.order(index // self.size)[index % self.size])
