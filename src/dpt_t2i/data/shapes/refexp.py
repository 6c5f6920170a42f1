"""Referring expressions: phrases that pick out exactly one object of a scene.

Forms (each produced only when it names one object unambiguously):
- "the red circle"                 unique colour and shape
- "the circle"                     unique shape
- "the blue shape"                 unique colour
- "the circle on the left"         leftmost (rightmost, top, bottom) of >= 2 of its shape
- "the square above the triangle"  unique shapes in the relation
- "the larger circle"              larger (smaller) of exactly two of its shape
- "the second circle from the left" of >= 3 of its shape, ordered along x
Positional forms need a margin of RELATION_MARGIN pixels between centres, the size forms a
difference of at least 4 pixels in side, so no expression rests on a near tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import RELATION_MARGIN, RELATIONS, ShapeObject, holds

_EXTREMES = {  # name -> (axis of the centre, True if the extreme is the largest value)
    "on the left": (0, False), "on the right": (0, True),
    "at the top": (1, False), "at the bottom": (1, True),
}


@dataclass(frozen=True)
class Refexp:
    """An expression, the index of the object it refers to, and that object's pixel box."""

    text: str
    target: int
    box: tuple[int, int, int, int]


def referring_expressions(objects: list[ShapeObject]) -> list[Refexp]:
    """Every unambiguous referring expression of the scene, in a fixed order."""
    found: list[tuple[str, int]] = []
    by_shape = _group(objects, lambda o: o.shape)
    by_colour = _group(objects, lambda o: o.colour)
    by_kind = _group(objects, lambda o: o.kind)
    for i, o in enumerate(objects):
        if len(by_kind[o.kind]) == 1:
            found.append((f"the {o.colour} {o.shape}", i))
        if len(by_shape[o.shape]) == 1:
            found.append((f"the {o.shape}", i))
        if len(by_colour[o.colour]) == 1:
            found.append((f"the {o.colour} shape", i))
    for shape, idx in by_shape.items():
        found += _extremes(objects, shape, idx)
        found += _by_size(objects, shape, idx)
        found += _ordinal(objects, shape, idx)
    found += _relational(objects, by_shape)
    return [Refexp(text, i, objects[i].box) for text, i in found]


def random_refexp(objects: list[ShapeObject], rng: np.random.Generator) -> Refexp | None:
    """One expression drawn uniformly from the scene's expressions, or None if it has none."""
    options = referring_expressions(objects)
    return options[rng.integers(len(options))] if options else None


def _group(objects, key) -> dict:
    groups: dict = {}
    for i, o in enumerate(objects):
        groups.setdefault(key(o), []).append(i)
    return groups


def _extremes(objects, shape, idx) -> list[tuple[str, int]]:
    if len(idx) < 2:
        return []
    out = []
    for name, (axis, largest) in _EXTREMES.items():
        order = sorted(idx, key=lambda i: objects[i].centre[axis], reverse=largest)
        first, runner_up = objects[order[0]].centre[axis], objects[order[1]].centre[axis]
        if abs(first - runner_up) >= RELATION_MARGIN:
            out.append((f"the {shape} {name}", order[0]))
    return out


def _by_size(objects, shape, idx) -> list[tuple[str, int]]:
    if len(idx) != 2:
        return []
    small, large = sorted(idx, key=lambda i: objects[i].side)
    if objects[large].side - objects[small].side < 4:
        return []
    return [(f"the larger {shape}", large), (f"the smaller {shape}", small)]


def _ordinal(objects, shape, idx) -> list[tuple[str, int]]:
    if len(idx) < 3:
        return []
    out = []
    for side, reverse in (("left", False), ("right", True)):
        order = sorted(idx, key=lambda i: objects[i].centre[0], reverse=reverse)
        xs = [objects[i].centre[0] for i in order[:3]]
        if abs(xs[1] - xs[0]) >= RELATION_MARGIN and abs(xs[2] - xs[1]) >= RELATION_MARGIN:
            out.append((f"the second {shape} from the {side}", order[1]))
    return out


def _relational(objects, by_shape) -> list[tuple[str, int]]:
    out = []
    singles = [(shape, idx[0]) for shape, idx in by_shape.items() if len(idx) == 1]
    for a_shape, a in singles:
        for b_shape, b in singles:
            if a == b:
                continue
            for relation in RELATIONS:
                if holds(objects[a], relation, objects[b]):
                    out.append((f"the {a_shape} {relation} the {b_shape}", a))
    return out
