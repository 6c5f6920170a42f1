"""Scene parser: read an image of the Shapes world back into objects.

The parser is exact on clean renders and is the alignment judge for generated images, which
are blurry, have soft edges and slightly-off colours. It works in four steps:

1. Colour lines. Every pixel is read as `background + alpha * (palette colour - background)`:
   its label is the palette colour whose direction from the background is closest in angle,
   and alpha is its projection on that direction (1 on a flat fill, 0 on the background).
   A soft edge between an object and the background lies on that object's line, so blurred
   edge pixels keep the right label, where the nearest palette colour would often be wrong.
2. Foreground. Pixels with alpha >= FG_ALPHA whose hue is within MAX_HUE_ANGLE of a palette
   hue. Under Gaussian blur up to sigma ~0.7 this threshold keeps the box of the sharp render
   (heavier blur moves box edges by about a pixel).
3. Components. Connected components (8-neighbour) per colour label, so two touching objects
   of different colours come out as two objects. Fragments (under MIN_AREA pixels or thinner
   than MIN_THICKNESS) merge into a touching large component (mislabelled edge pixels, the
   blurred seam between touching objects) or are dropped (noise).
4. Reading. Box, area and fill ratio per component; colour by majority vote of its pixels;
   shape by the nearest prototype in fill ratio and two blur-invariant moments (`moments`);
   size from the box side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .world import BACKGROUND, COLOURS, PALETTE, ShapeObject

# Alpha above which a pixel is foreground. Gaussian blur of sigma 0.7 (1.0) leaves ~0.21 (0.30)
# on the pixel just outside a straight edge and ~0.53 (0.43) on a one-pixel triangle apex, so
# a threshold between them recovers the sharp box; a flat fill has alpha 1.
FG_ALPHA = 0.37
# Largest angle (degrees) between a pixel's colour direction and a palette hue. The closest
# palette hues (blue, purple) are 24.3 deg apart, so 16 deg labels everything between two hues;
# neutral grey/black lies >= 19 deg from every hue and is not read as a coloured object.
MAX_HUE_ANGLE = 16.0
# Smallest component kept as an object. The smallest real object (triangle of side 10) covers
# 60 px; specks and mislabelled edge runs are far smaller.
MIN_AREA = 20
# Thinnest box side of a component kept as an object: the smallest object is 10 px wide, and
# the seam between two touching objects of different colours blurs into a 1-2 px line of a
# third hue (blue + red reads as purple), which must not count as an object.
MIN_THICKNESS = 4
# Largest bounding-box side still read as "small": small sides are 10-12, large 16-20, and blur
# may grow a box by a pixel; 14 is midway.
SMALL_MAX_SIDE = 14
# Shape prototypes in (fill ratio of the box, skew, cross) (see `moments`), measured on the
# rasteriser for sides 10..20: fill square 1.0, circle 0.78-0.81, triangle 0.55-0.60; skew
# triangle -0.018..-0.021, others 0; cross circle -0.0020..-0.0024, triangle ~-0.0019, square 0.
# Fill is exact on sharp renders but blur eats square corners; the moments survive blur.
SHAPE_PROTOTYPES = {"square": (1.0, 0.0, 0.0), "circle": (0.795, 0.0, -0.0021),
                    "triangle": (0.57, -0.020, -0.0019)}
# Per-feature scale of the prototype distance. The moments weigh most: fill is exact on sharp
# renders but blur (sigma >= 1) eats square corners and fill drifts towards the circle's.
SHAPE_SCALES = (0.5, 0.01, 0.001)
# Pixels within this many pixels of a component carry its blurred edge into the moments.
HALO = 2
# Alpha below which a halo pixel counts as background in the moments (noise is ~0.03).
TAIL_ALPHA = 0.1

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-neighbour connectivity
_BG = np.array(BACKGROUND, dtype=np.float64)
_DIRECTIONS = np.array([PALETTE[c] for c in COLOURS], dtype=np.float64) - _BG  # (6, 3)
_LENGTHS = np.linalg.norm(_DIRECTIONS, axis=1)  # (6,)


@dataclass(frozen=True)
class ParsedObject:
    """One object read from an image.

    `box` is (x0, y0, x1, y1) with exclusive upper bounds, as `ShapeObject.box`; `area` is its
    pixel count and `fill` = area / box area; `skew` and `cross` are the blur-invariant
    moments of `moments`. It quacks like a ShapeObject for `grammar.satisfied` and `world.holds`
    (colour, shape, size, centre), with the centre taken from the real box.
    """

    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]
    area: int
    fill: float
    skew: float
    cross: float

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def x0(self) -> int:
        return self.box[0]

    @property
    def y0(self) -> int:
        return self.box[1]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def kind(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    def to_shape_object(self) -> ShapeObject:
        """The ShapeObject of side max(width, height) at the box's top-left corner."""
        return ShapeObject(self.shape, self.colour, self.size, self.side, self.x0, self.y0)


def colour_lines(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel palette label, alpha and hue angle (step 1 of the module docstring).

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        label (H, W) int index into COLOURS; alpha (H, W) float, the projection on that
        colour's direction from the background in units of its length; angle (H, W) float,
        degrees between the pixel's direction and that colour's (180 on the background itself).
    """
    offset = image.astype(np.float64) - _BG  # (H, W, 3)
    norm = np.linalg.norm(offset, axis=-1)  # (H, W)
    proj = offset @ (_DIRECTIONS / _LENGTHS[:, None]).T  # (H, W, 6) projection lengths
    cosine = proj / np.maximum(norm, 1e-9)[..., None]  # (H, W, 6)
    label = cosine.argmax(axis=-1)  # (H, W)
    best = np.take_along_axis(cosine, label[..., None], axis=-1)[..., 0]
    best = np.where(norm > 0, best, -1.0)
    alpha = np.take_along_axis(proj, label[..., None], axis=-1)[..., 0] / _LENGTHS[label]
    angle = np.degrees(np.arccos(np.clip(best, -1.0, 1.0)))
    return label, alpha, angle


def components(label: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Connected components per colour label, with small fragments merged or dropped.

    Args:
        label: (H, W) int colour index per pixel.
        foreground: (H, W) bool.

    Returns:
        ids (H, W) int, 0 on the background; and the ids of the kept components (each at
        least MIN_AREA pixels and MIN_THICKNESS wide before merging), in increasing order.
        A fragment joins the kept component it touches most, or is dropped.
    """
    ids = np.zeros(label.shape, dtype=np.int64)
    count = 0
    for colour in range(len(COLOURS)):
        labelled, n = ndimage.label(foreground & (label == colour), structure=_EIGHT)
        ids[labelled > 0] = labelled[labelled > 0] + count
        count += n
    areas = np.bincount(ids.ravel(), minlength=count + 1)
    areas[0] = 0
    thickness = np.zeros(count + 1, dtype=np.int64)
    for i, box in enumerate(ndimage.find_objects(ids), start=1):
        if box is not None:
            thickness[i] = min(box[0].stop - box[0].start, box[1].stop - box[1].start)
    large = (areas >= MIN_AREA) & (thickness >= MIN_THICKNESS)
    for fragment in np.flatnonzero((areas > 0) & ~large):
        mask = ids == fragment
        ring = ndimage.binary_dilation(mask, structure=_EIGHT) & ~mask
        touching = ids[ring]
        touching = touching[large[touching]]
        ids[mask] = np.bincount(touching).argmax() if touching.size else 0
    return ids, [int(i) for i in np.flatnonzero(large)]


def moments(ys: np.ndarray, xs: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Blur-invariant shape moments of a weighted pixel set.

    Gaussian blur adds its cumulants to the shape's, and a Gaussian has no cumulant above the
    second, so the third cumulant of y and the covariance of x^2 and y^2 survive blur; the
    mass (area) does too and makes them scale-free.

    Args:
        ys, xs: (N,) pixel rows and columns.
        weights: (N,) alpha of each pixel.

    Returns:
        skew: third cumulant of y / mass^1.5 (upright triangle ~ -0.020, circle and square 0);
        cross: cov(x^2, y^2) / mass^2 (square 0, circle ~ -0.0021, triangle ~ -0.0019).
    """
    mass = weights.sum()
    dx = xs + 0.5 - (weights * (xs + 0.5)).sum() / mass
    dy = ys + 0.5 - (weights * (ys + 0.5)).sum() / mass
    var_x, var_y = (weights * dx**2).sum() / mass, (weights * dy**2).sum() / mass
    skew = (weights * dy**3).sum() / mass / mass**1.5
    cross = ((weights * dx**2 * dy**2).sum() / mass - var_x * var_y) / mass**2
    return float(skew), float(cross)


def classify_shape(fill: float, skew: float, cross: float) -> str:
    """The shape whose prototype is nearest in (fill, skew, cross), each axis in SHAPE_SCALES."""
    features = (fill, skew, cross)
    return min(SHAPE_PROTOTYPES, key=lambda s: sum(
        ((f - p) / scale) ** 2 for f, p, scale in zip(features, SHAPE_PROTOTYPES[s], SHAPE_SCALES)))


def read_component(ys: np.ndarray, xs: np.ndarray, colour: int,
                   halo: tuple[np.ndarray, np.ndarray, np.ndarray]) -> ParsedObject:
    """Read one component into an object.

    Args:
        ys, xs: (N,) int pixel rows and columns of the component.
        colour: index into COLOURS, the majority label of its pixels.
        halo: rows, columns and alpha (M,) of the component and the soft edge around it,
            for the blur-invariant moments.
    """
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    area = int(ys.size)
    fill = area / ((x1 - x0) * (y1 - y0))
    skew, cross = moments(*halo)
    size = size_of_side(max(x1 - x0, y1 - y0))
    return ParsedObject(classify_shape(fill, skew, cross), COLOURS[colour], size,
                        (x0, y0, x1, y1), area, fill, skew, cross)


def parse_image(image: np.ndarray) -> list[ParsedObject]:
    """Read an image of the Shapes world back into objects.

    Args:
        image: (H, W, 3) uint8 RGB, normally (64, 64, 3).

    Returns:
        The objects, ordered by box (top-left corner, row-major).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} "
                         f"dtype {image.dtype}")
    label, alpha, angle = colour_lines(image)
    foreground = (alpha >= FG_ALPHA) & (angle <= MAX_HUE_ANGLE)
    ids, kept = components(label, foreground)
    objects = []
    weights = np.where(alpha >= TAIL_ALPHA, np.clip(alpha, 0.0, 1.0), 0.0)
    for i in kept:
        mask = ids == i
        ys, xs = np.nonzero(mask)
        colour = int(np.bincount(label[ys, xs]).argmax())  # majority vote
        # the soft edge around it: unclaimed pixels of its own hue within HALO pixels
        edge = ndimage.binary_dilation(mask, structure=_EIGHT, iterations=HALO)
        hy, hx = np.nonzero(mask | (edge & (ids == 0) & (label == colour)))
        objects.append(read_component(ys, xs, colour, (hy, hx, weights[hy, hx])))
    return sorted(objects, key=lambda o: (o.box[1], o.box[0], o.box))


def size_of_side(side: int) -> str:
    """The size word of a bounding-box side, by the same rule as the parser."""
    if side < 1:
        raise ValueError(f"a side must be positive, got {side}")
    return "small" if side <= SMALL_MAX_SIDE else "large"

