"""Hard negatives for image-text matching: prompts that alter exactly one thing of a prompt.

Kinds of alteration (KINDS):
- "swap_colour":   two phrases exchange colours  ("a red circle and a blue square" ->
                   "a blue circle and a red square")
- "swap_shape":    two phrases exchange shapes
- "flip_relation": left <-> right, above <-> below
- "count":         one phrase names another count; at most MAX_OBJECTS objects in all, a
                   changed count is spelled with a number word ("one red circle")
- "colour":        one phrase's colour becomes another colour
- "shape":         one phrase's shape becomes another shape
- "size":          one phrase's named size becomes the other size

Every negative is a prompt of the grammar (`parse_prompt(neg.text) == neg`), keeps the two
phrases of a two-phrase prompt of distinct (colour, shape) kinds, as `random_prompt` does,
and means something else than the original: swapping the colours of "a red circle and a
blue circle" only reorders the pair, so it is no negative. Given the scene, negatives that
the scene happens to satisfy are dropped, so every negative is false for its image.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .grammar import Phrase, Prompt, satisfied
from .world import COLOURS, MAX_OBJECTS, SHAPES, SIZES, ShapeObject

KINDS = ("swap_colour", "swap_shape", "flip_relation", "count", "colour", "shape", "size")
FLIPS = {"to the left of": "to the right of", "to the right of": "to the left of",
         "above": "below", "below": "above"}


def _with_phrases(prompt: Prompt, phrases: tuple[Phrase, ...]) -> Prompt:
    return Prompt(phrases[0], prompt.link, phrases[1] if len(phrases) > 1 else None)


def _swaps(prompt: Prompt, field: str) -> list[Prompt]:
    if prompt.second is None:
        return []
    a, b = prompt.first, prompt.second
    return [Prompt(replace(a, **{field: getattr(b, field)}), prompt.link,
                   replace(b, **{field: getattr(a, field)}))]


def _counts(prompt: Prompt) -> list[Prompt]:
    out = []
    for i, phrase in enumerate(prompt.phrases):
        others = sum(p.count for j, p in enumerate(prompt.phrases) if j != i)
        for count in range(1, MAX_OBJECTS - others + 1):
            if count != phrase.count:
                phrases = list(prompt.phrases)
                phrases[i] = replace(phrase, count=count, numeric=True)
                out.append(_with_phrases(prompt, tuple(phrases)))
    return out


def _attributes(prompt: Prompt, field: str, values: tuple[str, ...]) -> list[Prompt]:
    out = []
    for i, phrase in enumerate(prompt.phrases):
        if getattr(phrase, field) is None:  # an unnamed size stays unnamed
            continue
        for value in values:
            if value != getattr(phrase, field):
                phrases = list(prompt.phrases)
                phrases[i] = replace(phrase, **{field: value})
                out.append(_with_phrases(prompt, tuple(phrases)))
    return out


def _candidates(prompt: Prompt) -> list[tuple[str, Prompt]]:
    flips = []
    if prompt.link in FLIPS:
        flips = [Prompt(prompt.first, FLIPS[prompt.link], prompt.second)]
    by_kind = {
        "swap_colour": _swaps(prompt, "colour"),
        "swap_shape": _swaps(prompt, "shape"),
        "flip_relation": flips,
        "count": _counts(prompt),
        "colour": _attributes(prompt, "colour", COLOURS),
        "shape": _attributes(prompt, "shape", SHAPES),
        "size": _attributes(prompt, "size", SIZES),
    }
    return [(kind, p) for kind in KINDS for p in by_kind[kind]]


def meaning(prompt: Prompt) -> tuple:
    """What a prompt asserts, as a comparable key: "and" is symmetric, and a number word
    only matters for a one-phrase prompt (where it makes a counting prompt)."""
    def key(p: Phrase) -> tuple:
        return (p.count, p.colour, p.shape, p.size)
    if prompt.second is None:
        return (key(prompt.first), prompt.family)
    if prompt.link == "and":
        return (frozenset([key(prompt.first), key(prompt.second)]), "and")
    return (key(prompt.first), prompt.link, key(prompt.second))


def _valid(negative: Prompt, original: Prompt) -> bool:
    phrases = negative.phrases
    if len(phrases) == 2 and (phrases[0].colour, phrases[0].shape) == (phrases[1].colour,
                                                                        phrases[1].shape):
        return False
    return sum(p.count for p in phrases) <= MAX_OBJECTS and meaning(negative) != meaning(original)


def hard_negatives(prompt: Prompt, objects: list[ShapeObject] | None = None,
                   rng: np.random.Generator | None = None) -> list[tuple[str, Prompt]]:
    """Every valid hard negative of a prompt, with its kind.

    Args:
        prompt: the true prompt.
        objects: the scene the prompt describes; negatives it satisfies are dropped.
        rng: if given, the list is shuffled with it; otherwise it is in KINDS order.

    Returns:
        (kind, negative prompt) pairs, kind from KINDS, distinct negative texts.
    """
    out, seen = [], set()
    for kind, negative in _candidates(prompt):
        if negative.text in seen or not _valid(negative, prompt):
            continue
        if objects is not None and satisfied(negative, objects):
            continue
        seen.add(negative.text)
        out.append((kind, negative))
    if rng is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def sample_hard_negatives(prompt: Prompt, k: int, rng: np.random.Generator,
                          objects: list[ShapeObject] | None = None) -> list[tuple[str, Prompt]]:
    """Up to k distinct hard negatives, balanced over kinds.

    Each draw picks a kind uniformly among those with negatives left, then one negative of
    that kind, so a flipped relation is as likely as one of the many colour changes.

    Args:
        prompt, objects: as in `hard_negatives`.
        k: how many to draw; fewer come back when fewer exist.
        rng: numpy generator; the result depends only on its state.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    pools: dict[str, list[Prompt]] = {}
    for kind, negative in hard_negatives(prompt, objects):
        pools.setdefault(kind, []).append(negative)
    drawn = []
    while len(drawn) < k and pools:
        kind = sorted(pools)[rng.integers(len(pools))]
        pool = pools[kind]
        drawn.append((kind, pool.pop(int(rng.integers(len(pool))))))
        if not pool:
            del pools[kind]
    return drawn
