"""The alignment judge on renders, degraded renders and wrong images."""

import numpy as np
import pytest

from dpt_t2i.data.shapes.grammar import (FAMILIES, PromptError, parse_prompt, random_prompt,
                                         scene_for)
from dpt_t2i.data.shapes.judge import judge
from dpt_t2i.data.shapes.negatives import sample_hard_negatives
from dpt_t2i.data.shapes.world import ShapeObject, render

from .degradation import degrade


@pytest.mark.parametrize("family", FAMILIES)
def test_renders_are_judged_aligned_and_hard_negatives_not(family):
    rng = np.random.default_rng([71, FAMILIES.index(family)])
    for _ in range(60):
        prompt = random_prompt(rng, family)
        scene = scene_for(prompt, rng)
        image = render(scene)
        verdict = judge(prompt.text, image)
        assert verdict.satisfied and verdict.prompt == prompt
        assert len(verdict.objects) == len(scene)
        for _, negative in sample_hard_negatives(prompt, 3, rng, scene):
            assert not judge(negative, image).satisfied


def test_judge_on_blurred_noisy_renders():
    rng = np.random.default_rng(72)
    hits, n = 0, 200
    for i in range(n):
        prompt = random_prompt(rng, FAMILIES[i % len(FAMILIES)])
        image = degrade(render(scene_for(prompt, rng)), rng, 0.7, 6.0)
        hits += judge(prompt, image).satisfied
    assert hits / n >= 0.97  # measured 200/200


def test_judge_hand_built_cases():
    red = ShapeObject("circle", "red", "small", 10, 5, 20)
    blue = ShapeObject("square", "blue", "large", 16, 30, 17)
    image = render([red, blue])
    assert judge("a red circle to the left of a blue square", image).satisfied
    assert not judge("a red circle to the right of a blue square", image).satisfied
    assert judge("a small red circle and a large blue square", image).satisfied
    assert not judge("a large red circle", image).satisfied
    assert not judge("one red circle", image).satisfied  # counting forbids the square
    assert not judge("two red circles", render([red])).satisfied
    verdict = judge(parse_prompt("a blue square"), image)
    assert verdict.satisfied
    assert [(o.shape, o.colour, o.size, o.box) for o in verdict.objects] == [
        ("square", "blue", "large", (30, 17, 46, 33)), ("circle", "red", "small", (5, 20, 15, 30))]


def test_judge_uses_real_box_centres():
    # A 30x10 red bar: its real centre (25, 25) is 13 px above the blue square's (26, 38);
    # a centre from side = max(w, h) at the box corner, (25, 35), would be only 3 px above.
    image = render([ShapeObject("square", "blue", "small", 10, 21, 33)])
    image[20:30, 10:40] = (220, 30, 30)
    verdict = judge("a red square above a blue square", image)
    red = next(o for o in verdict.objects if o.colour == "red")
    assert (red.box, red.centre, red.to_shape_object().centre) == (
        (10, 20, 40, 30), (25.0, 25.0), (25.0, 35.0))
    assert verdict.satisfied


def test_judge_rejects_text_outside_the_grammar():
    with pytest.raises(PromptError, match="'pentagon'"):
        judge("a red pentagon", render([]))
    with pytest.raises(TypeError, match="int"):
        judge(3, render([]))
