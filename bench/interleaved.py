"""Timing methods side by side: one warm-up call each, then rounds in which every method takes
its turn, so a slow spell of the machine hits all of them alike."""

from __future__ import annotations

import statistics
from typing import Callable


def interleaved_medians(methods: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each method's median over `rounds` interleaved rounds of the seconds its call returns."""
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            times[name].append(fn())
    return {name: statistics.median(ts) for name, ts in times.items()}
