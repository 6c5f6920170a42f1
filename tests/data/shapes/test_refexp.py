"""Referring expressions: each names exactly its target, checked by an independent reader."""

import re

import numpy as np

from dpt_t2i.data.shapes.refexp import random_refexp, referring_expressions
from dpt_t2i.data.shapes.world import COLOURS, RELATIONS, SHAPES, ShapeObject, holds, random_scene

_SHAPE = "|".join(SHAPES)
_COLOUR = "|".join(COLOURS)
_RELATION = "|".join(RELATIONS)


def _extreme(objects, idx, i, axis, sign) -> bool:
    """Object i leads every other of idx along axis by at least 4 px (sign -1: smallest)."""
    return all(sign * (objects[i].centre[axis] - objects[j].centre[axis]) >= 4
               for j in idx if j != i)


def resolve(text: str, objects: list[ShapeObject]) -> list[int]:
    """Indices of the objects the expression fits, read independently of refexp.py."""
    n = range(len(objects))
    if m := re.fullmatch(rf"the ({_COLOUR}) ({_SHAPE})", text):
        return [i for i in n if objects[i].kind == (m[1], m[2])]
    if m := re.fullmatch(rf"the ({_SHAPE})", text):
        return [i for i in n if objects[i].shape == m[1]]
    if m := re.fullmatch(rf"the ({_COLOUR}) shape", text):
        return [i for i in n if objects[i].colour == m[1]]
    if m := re.fullmatch(rf"the ({_SHAPE}) (on the left|on the right|at the top|at the bottom)",
                         text):
        idx = [i for i in n if objects[i].shape == m[1]]
        axis, sign = {"on the left": (0, -1), "on the right": (0, 1),
                      "at the top": (1, -1), "at the bottom": (1, 1)}[m[2]]
        return [i for i in idx if len(idx) >= 2 and _extreme(objects, idx, i, axis, sign)]
    if m := re.fullmatch(rf"the (larger|smaller) ({_SHAPE})", text):
        idx = [i for i in n if objects[i].shape == m[2]]
        sign = 1 if m[1] == "larger" else -1
        return [i for i in idx if len(idx) == 2 and all(
            sign * (objects[i].side - objects[j].side) >= 4 for j in idx if j != i)]
    if m := re.fullmatch(rf"the second ({_SHAPE}) from the (left|right)", text):
        idx = [i for i in n if objects[i].shape == m[1]]
        sign = 1 if m[2] == "left" else -1  # +1: "before" means smaller x
        out = []
        for i in idx:
            gaps = [sign * (objects[i].centre[0] - objects[j].centre[0]) for j in idx if j != i]
            before, after = sum(g >= 4 for g in gaps), sum(g <= -4 for g in gaps)
            if len(idx) >= 3 and before == 1 and after == len(gaps) - 1:
                out.append(i)
        return out
    if m := re.fullmatch(rf"the ({_SHAPE}) ({_RELATION}) the ({_SHAPE})", text):
        subjects = [i for i in n if objects[i].shape == m[1]]
        anchors = [i for i in n if objects[i].shape == m[3]]
        if len(subjects) != 1 or len(anchors) != 1:
            return []
        return subjects if holds(objects[subjects[0]], m[2], objects[anchors[0]]) else []
    raise AssertionError(f"unknown referring expression form: {text!r}")


def test_every_expression_of_random_scenes_names_exactly_its_target():
    forms = set()
    for i in range(400):
        scene = random_scene(np.random.default_rng([51, i]))
        refs = referring_expressions(scene)
        assert len({r.text for r in refs}) == len(refs)
        for ref in refs:
            assert resolve(ref.text, scene) == [ref.target], ref.text
            assert ref.box == scene[ref.target].box
            forms.add(re.sub(rf"{_COLOUR}", "C", re.sub(rf"{_SHAPE}", "S", ref.text)))
    assert {"the C S", "the S", "the C shape", "the S on the left", "the larger S",
            "the second S from the left", "the S above the S"} <= forms


def test_expressions_of_a_hand_built_scene():
    scene = [ShapeObject("circle", "red", "small", 10, 5, 20),      # centre (10, 25)
             ShapeObject("square", "blue", "small", 10, 30, 20),     # centre (35, 25)
             ShapeObject("triangle", "green", "small", 10, 50, 45)]  # centre (55, 50)
    got = {(r.text, r.target) for r in referring_expressions(scene)}
    assert got == {
        ("the red circle", 0), ("the circle", 0), ("the red shape", 0),
        ("the blue square", 1), ("the square", 1), ("the blue shape", 1),
        ("the green triangle", 2), ("the triangle", 2), ("the green shape", 2),
        ("the circle to the left of the square", 0), ("the square to the right of the circle", 1),
        ("the circle to the left of the triangle", 0),
        ("the triangle to the right of the circle", 2),
        ("the square above the triangle", 1), ("the triangle below the square", 2),
    }


def test_ordinal_extreme_and_size_forms():
    row = [ShapeObject("circle", c, "small", 10, x, 5) for c, x in
           (("red", 5), ("red", 25), ("blue", 45))]
    got = {(r.text, r.target) for r in referring_expressions(row)}
    assert {("the second circle from the left", 1), ("the second circle from the right", 1),
            ("the circle on the left", 0), ("the circle on the right", 2),
            ("the blue circle", 2), ("the blue shape", 2)} <= got
    assert not any("top" in t or "bottom" in t or "larger" in t for t, _ in got)  # level row
    pair = [ShapeObject("square", "red", "small", 10, 5, 5),
            ShapeObject("square", "red", "large", 16, 30, 30)]
    assert {("the larger square", 1), ("the smaller square", 0)} <= {
        (r.text, r.target) for r in referring_expressions(pair)}
    close = [ShapeObject("square", "red", "small", 10, 5, 5),
             ShapeObject("square", "red", "small", 12, 30, 30)]  # sides differ by 2
    assert not any("larger" in r.text for r in referring_expressions(close))


def test_near_ties_give_no_positional_expression():
    tie = [ShapeObject("circle", "red", "small", 10, 5, 5),
           ShapeObject("circle", "blue", "small", 10, 8, 30)]  # centres 3 px apart in x
    texts = {r.text for r in referring_expressions(tie)}
    assert "the circle on the left" not in texts and "the circle on the right" not in texts
    assert {"the circle at the top", "the circle at the bottom"} <= texts


def test_random_refexp_is_one_of_the_expressions():
    scene = random_scene(np.random.default_rng(52))
    ref = random_refexp(scene, np.random.default_rng(0))
    assert ref in referring_expressions(scene)
    assert random_refexp([], np.random.default_rng(0)) is None
