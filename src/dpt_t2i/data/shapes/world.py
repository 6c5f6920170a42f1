"""The Shapes world: palette, objects, exact rasterisation and scene placement.

Coordinates are pixels with y growing downward. An object occupies a square of side
`side` whose top-left pixel is (x0, y0); every shape touches all four sides of that
square, so the object's tight bounding box is `(x0, y0, x0 + side, y0 + side)` with the
upper bounds exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

CANVAS = 64
BACKGROUND = (245, 245, 245)
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 40, 180),
    "cyan": (20, 190, 200),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIDES = {"small": (10, 12), "large": (16, 20)}  # inclusive range of the bounding-square side
SIZES = tuple(SIDES)
MIN_GAP = 2  # objects are at least this many pixels apart
MAX_OBJECTS = 4
RELATION_MARGIN = 4  # centres must differ by at least this much along the relation's axis
RELATIONS = ("to the left of", "to the right of", "above", "below")


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene: what it is and where its bounding square lies."""

    shape: str
    colour: str
    size: str
    side: int
    x0: int
    y0: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Tight pixel box (x0, y0, x1, y1), upper bounds exclusive."""
        return (self.x0, self.y0, self.x0 + self.side, self.y0 + self.side)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.side / 2, self.y0 + self.side / 2)

    @property
    def kind(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@lru_cache(maxsize=None)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean (side, side) mask of a shape filling its bounding square.

    Pixel (r, c) is tested at its centre (c + 0.5, r + 0.5). The triangle is upright with
    its apex in row 0 and its base filling row side - 1.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    r, c = np.mgrid[0:side, 0:side]
    x, y, half = c + 0.5, r + 0.5, side / 2
    if shape == "square":
        mask = np.ones((side, side), dtype=bool)
    elif shape == "circle":
        mask = (x - half) ** 2 + (y - half) ** 2 <= half**2
    else:
        mask = np.abs(x - half) <= (r + 1) / 2
    mask.setflags(write=False)
    return mask


def render(objects: list[ShapeObject] | tuple[ShapeObject, ...]) -> np.ndarray:
    """Render a scene to a (64, 64, 3) uint8 RGB image with flat fills."""
    image = np.empty((CANVAS, CANVAS, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        if x0 < 0 or y0 < 0 or x1 > CANVAS or y1 > CANVAS:
            raise ValueError(f"object {obj} lies outside the {CANVAS}x{CANVAS} canvas")
        region = image[y0:y1, x0:x1]
        region[shape_mask(obj.shape, obj.side)] = PALETTE[obj.colour]
    return image


def apart(a: ShapeObject, b: ShapeObject, gap: int = MIN_GAP) -> bool:
    """True when the two bounding squares are at least `gap` pixels apart."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def holds(a: ShapeObject, relation: str, b: ShapeObject) -> bool:
    """Whether `a <relation> b` holds under the world's definitions."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = bx - ax, by - ay  # positive when b is right of / below a
    if relation == "to the left of":
        return dx >= RELATION_MARGIN and abs(dx) >= abs(dy)
    if relation == "to the right of":
        return -dx >= RELATION_MARGIN and abs(dx) >= abs(dy)
    if relation == "above":
        return dy >= RELATION_MARGIN and abs(dy) >= abs(dx)
    if relation == "below":
        return -dy >= RELATION_MARGIN and abs(dy) >= abs(dx)
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def place(
    rng: np.random.Generator,
    kinds: list[tuple[str, str, str | None]],
    relation: str | None = None,
    n_subjects: int = 1,
    tries: int = 2000,
) -> list[ShapeObject]:
    """Place objects at random, non-overlapping positions.

    Args:
        rng: numpy generator; the result depends only on its state.
        kinds: (shape, colour, size) per object; a size of None is drawn at random.
        relation: if given, each of the first `n_subjects` objects must stand in this
            relation to the object that follows them (the anchor).
        n_subjects: how many leading objects the relation constrains.
        tries: whole-scene attempts before giving up (with a relation, then as many
            anchor-first attempts, for crowded scenes rejection rarely hits).

    Returns:
        The objects, in the order of `kinds`.
    """
    if not 1 <= len(kinds) <= MAX_OBJECTS:
        raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(kinds)}")
    for _ in range(tries):
        placed: list[ShapeObject] = []
        for kind in kinds:
            obj = _draw_object(rng, kind, placed, attempts=50)
            if obj is None:
                break
            placed.append(obj)
        if len(placed) == len(kinds) and _relation_ok(placed, relation, n_subjects):
            return placed
    # Crowded relational scenes (e.g. three large circles to the right of a large square) are
    # rarely hit by whole-scene rejection; only then fall back, so other scenes stay as they were.
    placed = _place_anchor_first(rng, kinds, relation, n_subjects, tries) if relation else None
    if placed is not None:
        return placed
    raise RuntimeError(f"could not place {kinds} with relation {relation!r} in {tries} tries")


def _place_anchor_first(
    rng: np.random.Generator,
    kinds: list[tuple[str, str, str | None]],
    relation: str,
    n_subjects: int,
    tries: int,
) -> list[ShapeObject] | None:
    """Fallback of `place`: the anchor first, then each subject drawn among positions that
    stand in the relation to it, then the rest; None if `tries` attempts all fail."""
    order = [n_subjects, *range(n_subjects), *range(n_subjects + 1, len(kinds))]
    for _ in range(tries):
        placed: dict[int, ShapeObject] = {}
        for i in order:
            accept = (lambda o: holds(o, relation, placed[n_subjects])) if i < n_subjects else None
            obj = _draw_object(rng, kinds[i], list(placed.values()), attempts=200, accept=accept)
            if obj is None:
                break
            placed[i] = obj
        if len(placed) == len(kinds):
            return [placed[i] for i in range(len(kinds))]
    return None


def _draw_object(
    rng: np.random.Generator,
    kind: tuple[str, str, str | None],
    placed: list[ShapeObject],
    attempts: int,
    accept: Callable[[ShapeObject], bool] | None = None,
) -> ShapeObject | None:
    """Draw a size (if the kind leaves it open) and a side, then up to `attempts` positions;
    the first clear of `placed` and passing `accept` wins, None if none does."""
    shape, colour, size = kind
    size = size or SIZES[rng.integers(len(SIZES))]
    lo, hi = SIDES[size]
    side = int(rng.integers(lo, hi + 1))
    for _ in range(attempts):
        obj = ShapeObject(shape, colour, size, side,
                          int(rng.integers(0, CANVAS - side + 1)),
                          int(rng.integers(0, CANVAS - side + 1)))
        if (accept is None or accept(obj)) and all(apart(obj, other) for other in placed):
            return obj
    return None


def _relation_ok(objects: list[ShapeObject], relation: str | None, n_subjects: int) -> bool:
    if relation is None:
        return True
    anchor = objects[n_subjects]
    return all(holds(o, relation, anchor) for o in objects[:n_subjects])


def random_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> list[ShapeObject]:
    """A scene of 1..max_objects objects of uniformly random kind and size."""
    n = int(rng.integers(1, max_objects + 1))
    kinds = [(SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))], None)
             for _ in range(n)]
    return place(rng, kinds)
