"""Renderer, shape masks, placement and relations of the Shapes world."""

import numpy as np
import pytest
from scipy import ndimage

from dpt_t2i.data.shapes.world import (BACKGROUND, CANVAS, PALETTE, SIDES, ShapeObject, apart,
                                       holds, place, random_scene, render, shape_mask)

SCENES = [random_scene(np.random.default_rng([11, i])) for i in range(300)]


def _object_pixels(obj: ShapeObject) -> np.ndarray:
    """(64, 64) bool mask of the pixels one object paints when rendered alone."""
    return np.any(render([obj]) != BACKGROUND, axis=-1)


def test_shape_mask_areas_and_extent():
    assert shape_mask("square", 10).sum() == 100
    assert shape_mask("circle", 10).sum() == 80
    assert shape_mask("triangle", 10).sum() == 60
    assert shape_mask("triangle", 11)[0].sum() == 1  # odd side: one-pixel apex
    assert shape_mask("triangle", 12)[0].sum() == 2
    for shape in ("circle", "square", "triangle"):
        for side in range(10, 21):
            mask = shape_mask(shape, side)
            # every shape touches all four sides of its bounding square
            assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
    assert shape_mask("triangle", 15)[-1].all()  # the base fills the last row
    with pytest.raises(ValueError, match="hexagon"):
        shape_mask("hexagon", 10)


def test_render_uses_only_palette_and_background_colours():
    allowed = {tuple(BACKGROUND), *map(tuple, PALETTE.values())}
    for scene in SCENES[:100]:
        image = render(scene)
        assert image.shape == (CANVAS, CANVAS, 3) and image.dtype == np.uint8
        assert set(map(tuple, image.reshape(-1, 3))) <= allowed


def test_render_background_and_object_pixel_counts():
    scene = [ShapeObject("square", "red", "small", 10, 0, 0),
             ShapeObject("circle", "blue", "large", 16, 40, 40)]
    image = render(scene)
    assert tuple(image[30, 30]) == (245, 245, 245)
    assert tuple(image[5, 5]) == (220, 30, 30)
    assert tuple(image[48, 48]) == (30, 60, 220)
    assert np.all(image == (245, 245, 245), axis=-1).sum() == 64 * 64 - 100 - 208


def test_objects_inside_canvas_with_tight_boxes_and_valid_sides():
    for scene in SCENES:
        assert 1 <= len(scene) <= 4
        for obj in scene:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= CANVAS and 0 <= y0 < y1 <= CANVAS
            lo, hi = SIDES[obj.size]
            assert lo <= obj.side <= hi
            ys, xs = np.nonzero(_object_pixels(obj))
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.box


def test_objects_are_at_least_two_pixels_apart():
    eight = np.ones((3, 3), dtype=bool)
    for scene in SCENES:
        masks = [_object_pixels(o) for o in scene]
        for i in range(len(scene)):
            grown = ndimage.binary_dilation(masks[i], structure=eight, iterations=2)
            for j in range(i + 1, len(scene)):
                assert apart(scene[i], scene[j])
                assert not (grown & masks[j]).any()  # two clear pixels between them


def test_render_rejects_objects_outside_the_canvas():
    with pytest.raises(ValueError, match="outside"):
        render([ShapeObject("square", "red", "small", 10, 60, 0)])


def test_relations_follow_the_spec():
    a = ShapeObject("circle", "red", "small", 10, 0, 20)  # centre (5, 25)
    for dx, left in ((3, False), (4, True)):
        b = ShapeObject("square", "blue", "small", 10, dx, 20)
        assert holds(a, "to the left of", b) is left
        assert holds(b, "to the right of", a) is left
    below = ShapeObject("square", "blue", "small", 10, 4, 40)  # centre (9, 45): dy 20, dx 4
    assert holds(a, "above", below) and holds(below, "below", a)
    assert not holds(a, "to the left of", below)  # |dx| < |dy|
    with pytest.raises(ValueError, match="near"):
        holds(a, "near", below)


def test_place_honours_the_relation_for_every_subject():
    for i in range(50):
        rng = np.random.default_rng([12, i])
        kinds = [("circle", "red", None), ("circle", "red", None), ("square", "blue", "large")]
        objects = place(rng, kinds, relation="above", n_subjects=2)
        assert [o.kind for o in objects] == [("red", "circle")] * 2 + [("blue", "square")]
        assert objects[2].size == "large"
        assert all(holds(o, "above", objects[2]) for o in objects[:2])


@pytest.mark.parametrize("relation", ["to the left of", "to the right of", "above", "below"])
def test_place_crowded_relational_scenes(relation):
    # Three large subjects around a large anchor: whole-scene rejection alone used to fail
    # (make_sample(0, 3024) raised RuntimeError); the anchor-first fallback places them.
    kinds = [("square", "purple", "large")] * 3 + [("circle", "cyan", "large")]
    for i in range(10):
        objects = place(np.random.default_rng([13, i]), kinds, relation=relation, n_subjects=3)
        assert all(holds(o, relation, objects[3]) for o in objects[:3])
        assert all(apart(a, b) for j, a in enumerate(objects) for b in objects[j + 1:])
        assert [o.kind for o in objects] == [k[1::-1] for k in kinds]
