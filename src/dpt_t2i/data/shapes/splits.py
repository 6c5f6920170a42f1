"""In-distribution (ID) and out-of-distribution (OOD) prompt splits.

Three kinds of combination are held out of every training caption:
- sized objects: a (size, colour, shape) triple named with its size ("a small purple triangle");
- pairs: two (colour, shape) kinds named together in one prompt, in either order;
- counts: a (count >= 2, colour, shape) triple ("three cyan squares").
An OOD prompt names at least one held-out combination; an ID prompt names none. Every
colour, shape, size, number and relation still appears in training captions, only these
combinations do not. The held-out sets are fixed (seeded), so they never drift.
"""

from __future__ import annotations

import itertools

import numpy as np

from .grammar import FAMILIES, Prompt, random_prompt
from .world import COLOURS, MAX_OBJECTS, SHAPES, SIZES

SPLIT_SEED = 20240307
KINDS = tuple(itertools.product(COLOURS, SHAPES))  # 18 (colour, shape) kinds


def _held_out(items: list, n: int, salt: int) -> frozenset:
    rng = np.random.default_rng([SPLIT_SEED, salt])
    return frozenset(items[i] for i in rng.choice(len(items), size=n, replace=False))


# 6 of 36 sized objects, never both sizes of one kind (so each kind keeps a sized caption).
_SIZED = [(size, c, s) for (c, s) in KINDS for size in SIZES]
OOD_SIZED = frozenset(
    ("small" if i % 2 == 0 else "large", c, s)
    for i, (c, s) in enumerate(sorted(_held_out(list(KINDS), 6, 1))))
# 30 of 153 unordered pairs of distinct kinds.
OOD_PAIRS = _held_out([frozenset(p) for p in itertools.combinations(KINDS, 2)], 30, 2)
# 10 of 54 counted kinds.
OOD_COUNTS = _held_out([(n, c, s) for n in range(2, MAX_OBJECTS + 1) for (c, s) in KINDS], 10, 3)


def is_ood(prompt: Prompt) -> bool:
    """Whether the prompt names a combination held out of training."""
    for p in prompt.phrases:
        if p.size is not None and (p.size, p.colour, p.shape) in OOD_SIZED:
            return True
        if p.count >= 2 and (p.count, p.colour, p.shape) in OOD_COUNTS:
            return True
    if prompt.second is not None:
        a, b = prompt.first, prompt.second
        if frozenset([(a.colour, a.shape), (b.colour, b.shape)]) in OOD_PAIRS:
            return True
    return False


def sample_prompt(rng: np.random.Generator, family: str, split: str) -> Prompt:
    """A random prompt of `family` from split "train"/"id" (no held-out combination) or "ood"."""
    if split not in ("train", "id", "ood"):
        raise ValueError(f"unknown split {split!r}; expected 'train', 'id' or 'ood'")
    want_ood = split == "ood"
    for _ in range(10_000):
        prompt = random_prompt(rng, family)
        if family == "object" and want_ood and prompt.first.size is None:
            continue
        if is_ood(prompt) == want_ood:
            return prompt
    raise RuntimeError(f"no {split} prompt of family {family!r} found")


def benchmark_prompts(split: str, per_family: int = 20, seed: int = 0) -> list[Prompt]:
    """The fixed evaluation prompt list of a split: up to `per_family` distinct prompts per family.

    A family with fewer distinct prompts in the split (OOD objects: one per held-out sized
    object) contributes all it has.
    """
    rng = np.random.default_rng([SPLIT_SEED, seed, 0 if split == "id" else 1])
    prompts: list[Prompt] = []
    for family in FAMILIES:
        seen: set[str] = set()
        misses = 0
        while len(seen) < per_family and misses < 2000:
            p = sample_prompt(rng, family, split)
            misses = misses + 1 if p.text in seen else 0
            if p.text not in seen:
                seen.add(p.text)
                prompts.append(p)
    return prompts
