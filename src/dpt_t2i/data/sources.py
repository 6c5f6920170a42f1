"""Where training samples come from: `sample(i)` is always the same sample."""

from __future__ import annotations

from typing import Protocol

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
