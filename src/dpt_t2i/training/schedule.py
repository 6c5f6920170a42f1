"""The learning-rate schedule of every trainer: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay from `base` to `floor * base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
