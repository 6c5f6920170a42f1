"""Prompt grammar: round trips, families, parse errors and truth in hand-built scenes."""

import numpy as np
import pytest

from dpt_t2i.data.shapes.grammar import (FAMILIES, Phrase, Prompt, PromptError, parse_prompt,
                                         random_prompt, satisfied, scene_for, vocabulary)
from dpt_t2i.data.shapes.world import ShapeObject


def obj(shape: str, colour: str, x0: int, y0: int, side: int = 10) -> ShapeObject:
    return ShapeObject(shape, colour, "small" if side <= 12 else "large", side, x0, y0)


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_of_random_prompts(family):
    rng = np.random.default_rng([31, FAMILIES.index(family)])
    for _ in range(2000):
        prompt = random_prompt(rng, family)
        assert prompt.family == family
        assert parse_prompt(prompt.text) == prompt
        assert sum(p.count for p in prompt.phrases) <= 4


def test_parse_known_prompts():
    assert parse_prompt("two yellow squares and a purple circle") == Prompt(
        Phrase(2, "yellow", "square", None, True), "and", Phrase(1, "purple", "circle"))
    p = parse_prompt("two small red circles above a large cyan triangle")
    assert (p.family, p.link, p.first.size, p.second.size) == ("mixed", "above", "small", "large")
    assert parse_prompt("a red circle to the right of a blue square").family == "spatial"
    assert parse_prompt("a red circle and a blue square").family == "pair"
    assert parse_prompt("three green triangles").family == "counting"
    assert parse_prompt("one green triangle").family == "counting"
    assert parse_prompt("  a small blue square ").text == "a small blue square"


@pytest.mark.parametrize("text, word", [
    ("a red hexagon", "'hexagon'"),
    ("a red circle near a blue square", "'near'"),
    ("a red circle the blue square", "'the'"),
    ("a red circles", "'circles'"),
    ("two red circle", "'circle'"),
    ("a circle", "'circle'"),
    ("red circle", "'red'"),
    ("a red circle and a blue square above", "'above'"),
    ("a red", "end of the prompt"),
    ("three red circles and two blue squares", "more than 4"),
    ("", "empty"),
])
def test_parse_errors_name_the_offending_word(text, word):
    with pytest.raises(PromptError, match=word):
        parse_prompt(text)


def test_vocabulary_covers_prompt_and_refexp_words():
    vocab = set(vocabulary())
    assert {"a", "four", "small", "cyan", "triangles", "left", "below", "second", "larger"} <= vocab
    assert len(vocab) == len(vocabulary())


def test_counts_are_exact_and_counting_forbids_extra_objects():
    two = parse_prompt("two red circles")
    reds = [obj("circle", "red", 0, 0), obj("circle", "red", 20, 0)]
    assert satisfied(two, reds)
    assert not satisfied(two, reds + [obj("square", "blue", 40, 40)])  # counting: nothing else
    assert not satisfied(two, reds + [obj("circle", "red", 40, 40)])
    assert not satisfied(two, reds[:1])
    one = parse_prompt("a red circle")
    assert satisfied(one, reds[:1] + [obj("square", "blue", 40, 40)])  # others allowed
    assert not satisfied(one, reds)  # but not a second red circle
    mixed = parse_prompt("two red circles and a blue square")
    assert satisfied(mixed, reds + [obj("square", "blue", 40, 40), obj("square", "green", 0, 40)])


def test_sizes_count_only_when_named():
    large = [obj("circle", "red", 0, 0, side=18)]
    assert satisfied(parse_prompt("a red circle"), large)
    assert satisfied(parse_prompt("a large red circle"), large)
    assert not satisfied(parse_prompt("a small red circle"), large)


def test_relation_semantics():
    red, blue = obj("circle", "red", 0, 20), obj("square", "blue", 30, 24)
    assert satisfied(parse_prompt("a red circle to the left of a blue square"), [red, blue])
    assert not satisfied(parse_prompt("a red circle to the right of a blue square"), [red, blue])
    assert not satisfied(parse_prompt("a red circle above a blue square"), [red, blue])
    assert satisfied(parse_prompt("a blue square to the right of a red circle"), [red, blue])
    under = obj("square", "blue", 2, 45)  # mostly below the circle
    assert satisfied(parse_prompt("a red circle above a blue square"), [red, under])
    assert not satisfied(parse_prompt("a red circle to the left of a blue square"), [red, under])


def test_relation_with_counts_needs_every_subject():
    anchor = obj("square", "blue", 30, 50)
    high = [obj("circle", "red", 25, 0), obj("circle", "red", 40, 20)]
    prompt = parse_prompt("two red circles above a blue square")
    assert satisfied(prompt, high + [anchor])
    beside = [high[0], obj("circle", "red", 5, 50)]  # second circle level with the square
    assert not satisfied(prompt, beside + [anchor])


@pytest.mark.parametrize("family", FAMILIES)
def test_scene_for_satisfies_its_prompt(family):
    rng = np.random.default_rng([32, FAMILIES.index(family)])
    for _ in range(100):
        prompt = random_prompt(rng, family)
        assert satisfied(prompt, scene_for(prompt, rng))
