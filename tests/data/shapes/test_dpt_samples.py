"""DPT training samples: negatives false for the image, boxes on the referred object."""

import numpy as np
import pytest

from dpt_t2i.data.shapes.dataset import make_sample
from dpt_t2i.data.shapes.dpt_samples import collate, make_dpt_sample
from dpt_t2i.data.shapes.grammar import parse_prompt, satisfied
from dpt_t2i.data.shapes.parse import parse_image


def test_samples_are_deterministic():
    a, b = make_dpt_sample(3, 17), make_dpt_sample(3, 17)
    assert a.caption == b.caption and a.negatives == b.negatives and a.refexp == b.refexp
    assert np.array_equal(a.image, b.image)
    assert make_dpt_sample(3, 18).caption != a.caption or make_dpt_sample(3, 18).box != a.box


@pytest.mark.parametrize("k", [1, 3, 5])
def test_every_negative_is_false_for_its_image_and_the_caption_true(k):
    for i in range(60):
        s = make_dpt_sample(0, i, n_negatives=k)
        objects = [o.to_shape_object() for o in parse_image(s.image)]
        assert satisfied(parse_prompt(s.caption), objects)
        assert len(s.negatives) == k
        for text in s.negatives:
            assert text != s.caption and not satisfied(parse_prompt(text), objects)


def test_box_is_the_referred_objects_box_in_unit_cxcywh():
    checked = 0
    for i in range(60):
        s = make_dpt_sample(1, i)
        if s.box is None:
            continue
        cx, cy, w, h = (v * 64 for v in s.box)
        box = (round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2))
        ref = make_sample(1, i, with_refexp=True).refexp
        assert (s.refexp, box) == (ref.text, ref.box)  # the referred object's own box
        assert box in [o.box for o in parse_image(s.image)]
        checked += 1
    assert checked >= 50  # nearly every scene has an unambiguous expression


def test_collate_shapes():
    batch = collate([make_dpt_sample(0, i, n_negatives=2) for i in range(5)])
    assert batch["pixels"].shape == (5, 3, 64, 64)
    assert batch["boxes"].shape == (5, 4) and batch["has_ref"].shape == (5,)
    assert all(len(n) == 2 for n in batch["negatives"]) and len(batch["captions"]) == 5
    assert float(batch["pixels"].min()) >= -1 and float(batch["pixels"].max()) <= 1


def test_other_objects_are_the_rest_of_the_scene():
    for i in range(40):
        s = make_dpt_sample(2, i)
        if s.box is None:
            assert s.others == []
            continue
        scene = sorted(tuple(round(v * 64) for v in b) for b in [s.box, *s.others])
        parsed = sorted((round((o.box[0] + o.box[2]) / 2), round((o.box[1] + o.box[3]) / 2),
                         o.box[2] - o.box[0], o.box[3] - o.box[1]) for o in parse_image(s.image))
        assert scene == parsed


def test_collate_puts_the_referred_object_first_and_pads_the_scene():
    samples = [make_dpt_sample(0, i) for i in range(8)]
    batch = collate(samples)
    width = max(1 + len(s.others) for s in samples if s.box is not None)
    assert batch["object_boxes"].shape == (8, width, 4)
    for row, s in enumerate(samples):
        n = 1 + len(s.others) if s.box is not None else 0
        assert batch["object_mask"][row].tolist() == [True] * n + [False] * (width - n)
        if n:
            assert batch["object_boxes"][row, 0].tolist() == batch["boxes"][row].tolist()
