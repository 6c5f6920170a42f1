"""The learning-rate schedule of every trainer: linear warm-up, then cosine decay.

A DPT run whose `--steps` is changed on resume keeps its schedule continuous (`extended_lr`):
from the step it resumes at, the rate decays by a half cosine from the rate that step had
under the old total down to the floor at the new total. So the steps before the change keep
the rates they were trained with, and no step sees a jump.
"""

from __future__ import annotations

import math
from typing import Sequence


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay from `base` to `floor * base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def extended_lr(step: int, total: int, base: float, warmup: int, extended: Sequence[dict] = (),
                floor: float = 0.1) -> float:
    """`cosine_lr` of a run whose total was changed on resume, kept continuous.

    Args:
        step: the optimizer step (0-based).
        total: the run's total steps now.
        base: the peak rate.
        warmup: linear warm-up steps.
        extended: the changes, oldest first, each {"at_step": s, "from": T_old, "to": T_new}:
            the run resumed at step s with total T_new instead of T_old. From step
            max(s, warmup) on, the rate decays by a half cosine from the rate that step had
            before the change to `floor * base` at T_new; a change inside the warm-up only
            moves the end of the cosine.
        floor: the final rate as a fraction of `base`.

    Returns:
        The learning rate of `step`.
    """
    if extended and extended[-1]["to"] != total:
        raise ValueError(f"the last extension ends at {extended[-1]['to']} steps, the run has "
                         f"{total}")
    return base * _factor(step, extended[0]["from"] if extended else total, warmup,
                          list(extended), floor)


def _factor(step: int, first_total: int, warmup: int, extended: list[dict],
            floor: float) -> float:
    """The rate of `step` as a fraction of the peak, under the first total and `extended`."""
    if not extended:
        return cosine_lr(step, first_total, 1.0, warmup, floor)
    *earlier, last = extended
    if step < last["at_step"]:
        return _factor(step, first_total, warmup, earlier, floor)
    start = max(last["at_step"], warmup)
    if step < start:  # still warming up: unchanged
        return (step + 1) / warmup
    top = _factor(start, first_total, warmup, earlier, floor)
    progress = (step - start) / max(1, last["to"] - start)
    return floor + (top - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
