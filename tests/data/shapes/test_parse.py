"""The scene parser: exact on clean renders, robust on blurred and noisy ones."""

from collections import Counter

import numpy as np
import pytest

from dpt_t2i.data.shapes.dataset import make_sample
from dpt_t2i.data.shapes.parse import ParsedObject, classify_shape, parse_image, size_of_side
from dpt_t2i.data.shapes.world import (BACKGROUND, PALETTE, SHAPES, ShapeObject, random_scene,
                                       render)

from .degradation import degrade


def _key(objects) -> Counter:
    return Counter((o.shape, o.colour, o.size, tuple(o.box)) for o in objects)


def _near(scene, parsed, tolerance: int = 1) -> bool:
    """Same (shape, colour, size) multiset and every box matched within `tolerance` px."""
    kinds = Counter((o.shape, o.colour, o.size) for o in scene)
    if kinds != Counter((o.shape, o.colour, o.size) for o in parsed):
        return False
    return all(any(o.kind == p.kind and max(abs(a - b) for a, b in zip(o.box, p.box)) <= tolerance
                   for p in parsed) for o in scene)


def test_parser_is_exact_on_1000_random_clean_scenes():
    wrong = []
    for i in range(1000):
        scene = random_scene(np.random.default_rng([21, i]))
        if _key(parse_image(render(scene))) != _key(scene):
            wrong.append(i)
    assert wrong == []


@pytest.mark.parametrize("split", ["train", "ood"])
def test_parser_is_exact_on_dataset_samples(split):
    for i in range(200):
        sample = make_sample(3, i, split=split)
        parsed = parse_image(sample.image)
        assert _key(parsed) == _key(sample.objects), (split, i, sample.prompt.text)
        assert [p.to_shape_object() for p in parsed] == sorted(
            sample.objects, key=lambda o: (o.y0, o.x0))


def test_parser_reads_fill_and_area_of_each_shape():
    scene = [ShapeObject("square", "red", "small", 10, 2, 2),
             ShapeObject("circle", "green", "small", 10, 20, 2),
             ShapeObject("triangle", "yellow", "large", 20, 2, 30)]
    parsed = {p.shape: p for p in parse_image(render(scene))}
    assert (parsed["square"].area, parsed["square"].fill) == (100, 1.0)
    assert (parsed["circle"].area, parsed["circle"].fill) == (80, 0.8)
    assert (parsed["triangle"].area, parsed["triangle"].fill) == (220, 0.55)
    assert parsed["triangle"].skew < -0.015 < parsed["circle"].skew
    assert parsed["circle"].centre == (25.0, 7.0)


def test_parser_is_exact_on_blurred_noisy_scenes():
    # Gaussian blur sigma 0.7 + N(0, 6) noise: 1000/1000 exact when measured; bound with margin.
    exact = 0
    for i in range(300):
        rng = np.random.default_rng([22, i])
        scene = random_scene(rng)
        exact += _key(parse_image(degrade(render(scene), rng, 0.7, 6.0))) == _key(scene)
    assert exact / 300 >= 0.97


def test_parser_keeps_shapes_colours_sizes_under_heavy_blur():
    # sigma 1.3 + N(0, 6): boxes move by a pixel, but kinds and sizes survive (99% measured).
    near = 0
    for i in range(300):
        rng = np.random.default_rng([23, i])
        scene = random_scene(rng)
        near += _near(scene, parse_image(degrade(render(scene), rng, 1.3, 6.0)))
    assert near / 300 >= 0.95


def test_parser_survives_a_global_colour_shift():
    exact = 0
    for i in range(200):
        rng = np.random.default_rng([24, i])
        scene = random_scene(rng)
        shifted = render(scene).astype(np.float64) + rng.uniform(-20, 20, size=3)
        image = degrade(np.clip(shifted, 0, 255).astype(np.uint8), rng, 0.7, 6.0)
        exact += _near(scene, parse_image(image), tolerance=0)
    assert exact / 200 >= 0.95


def _canvas() -> np.ndarray:
    return np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)


@pytest.mark.parametrize("sigma", [0.0, 0.7, 1.3])
def test_touching_objects_of_two_colours_are_two_objects(sigma):
    image = _canvas()
    image[20:38, 10:28] = PALETTE["red"]
    image[20:38, 28:46] = PALETTE["blue"]
    if sigma:
        image = degrade(image, np.random.default_rng(0), sigma, 0.0)
    parsed = sorted(parse_image(image), key=lambda o: o.box[0])
    assert [(o.shape, o.colour, o.size) for o in parsed] == [("square", "red", "large"),
                                                             ("square", "blue", "large")]
    if not sigma:
        assert [o.box for o in parsed] == [(10, 20, 28, 38), (28, 20, 46, 38)]


def test_touching_objects_of_one_colour_merge():
    image = _canvas()
    image[20:38, 10:28] = PALETTE["green"]
    image[20:38, 28:46] = PALETTE["green"]
    assert [o.box for o in parse_image(image)] == [(10, 20, 46, 38)]


def test_specks_grey_blobs_and_thin_lines_are_not_objects():
    image = _canvas()
    image[5:8, 5:8] = PALETTE["red"]  # 9 px speck
    image[30:45, 30:45] = (100, 100, 100)  # uncoloured blob
    image[50, 10:40] = PALETTE["blue"]  # 30 px, one pixel thick
    image[10:22, 40:52] = PALETTE["cyan"]  # a real small square
    parsed = parse_image(image)
    assert [(o.shape, o.colour, o.size, o.box) for o in parsed] == [
        ("square", "cyan", "small", (40, 10, 52, 22))]


def test_mislabelled_edge_pixels_join_their_object():
    image = render([ShapeObject("square", "blue", "large", 16, 10, 10)])
    image[10, 12:16] = PALETTE["purple"]  # a run of wrong-hue pixels on the top edge
    parsed = parse_image(image)
    assert [(o.colour, o.box, o.area) for o in parsed] == [("blue", (10, 10, 26, 26), 256)]


def test_classify_shape_and_size_thresholds():
    assert classify_shape(1.0, 0.0, 0.0) == "square"
    assert classify_shape(0.79, 0.0, -0.0021) == "circle"
    assert classify_shape(0.56, -0.02, -0.0019) == "triangle"
    assert classify_shape(0.84, 0.0, -0.0002) == "square"  # blurred square: moments win
    assert [size_of_side(s) for s in (10, 12, 14, 15, 16, 20)] == ["small"] * 3 + ["large"] * 3


def test_parsed_object_geometry():
    obj = ParsedObject("circle", "red", "large", (10, 20, 27, 36), 200, 0.73, 0.0, -0.002)
    assert (obj.width, obj.height, obj.side) == (17, 16, 17)
    assert obj.centre == (18.5, 28.0)  # from the real box, not from side
    assert obj.to_shape_object() == ShapeObject("circle", "red", "large", 17, 10, 20)
    assert set(SHAPES) == {"circle", "square", "triangle"}


@pytest.mark.parametrize("bad", [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.float32),
                                 np.zeros((64, 64, 4), np.uint8)])
def test_parser_rejects_non_rgb_uint8(bad):
    with pytest.raises(ValueError, match="uint8"):
        parse_image(bad)
