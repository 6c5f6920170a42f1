"""Hard negatives: one declared alteration each, grammatical, and false for the scene."""

from dataclasses import replace

import numpy as np
import pytest

from dpt_t2i.data.shapes.grammar import (FAMILIES, Prompt, parse_prompt, random_prompt, satisfied,
                                         scene_for)
from dpt_t2i.data.shapes.negatives import FLIPS, KINDS, hard_negatives, sample_hard_negatives
from dpt_t2i.data.shapes.world import ShapeObject


def explained(kind: str, original: Prompt, negative: Prompt) -> bool:
    """Whether `negative` is `original` with exactly one alteration of `kind`."""
    a, b = original.first, original.second
    if kind in ("swap_colour", "swap_shape"):
        field = kind.split("_")[1]
        if b is None or getattr(a, field) == getattr(b, field):
            return False
        return negative == Prompt(replace(a, **{field: getattr(b, field)}), original.link,
                                  replace(b, **{field: getattr(a, field)}))
    if kind == "flip_relation":
        return original.link in FLIPS and negative == Prompt(a, FLIPS[original.link], b)
    if negative.link != original.link or len(negative.phrases) != len(original.phrases):
        return False
    changed = [(o, n) for o, n in zip(original.phrases, negative.phrases) if o != n]
    if len(changed) != 1:
        return False
    old, new = changed[0]
    if kind == "count":
        return new.count != old.count and replace(new, count=old.count, numeric=old.numeric) == old
    field = kind
    return (getattr(old, field) is not None and getattr(new, field) != getattr(old, field)
            and replace(new, **{field: getattr(old, field)}) == old)


@pytest.mark.parametrize("family", FAMILIES)
def test_negatives_alter_one_thing_and_are_false_for_the_scene(family):
    rng = np.random.default_rng([61, FAMILIES.index(family)])
    kinds_seen = set()
    for _ in range(150):
        prompt = random_prompt(rng, family)
        scene = scene_for(prompt, rng)
        negatives = hard_negatives(prompt, scene)
        assert negatives, prompt.text
        assert len({n.text for _, n in negatives}) == len(negatives)
        for kind, negative in negatives:
            kinds_seen.add(kind)
            assert explained(kind, prompt, negative), (kind, prompt.text, negative.text)
            assert parse_prompt(negative.text) == negative
            assert not satisfied(negative, scene)
            assert sum(p.count for p in negative.phrases) <= 4
            if negative.second is not None:
                assert ((negative.first.colour, negative.first.shape)
                        != (negative.second.colour, negative.second.shape))
    expected = {"object": {"count", "colour", "shape", "size"},
                "counting": {"count", "colour", "shape"},
                "pair": {"swap_colour", "swap_shape", "count", "colour", "shape"},
                "spatial": set(KINDS) - {"size"},
                "mixed": set(KINDS)}[family]
    assert kinds_seen == expected


def test_negatives_of_a_spatial_prompt():
    prompt = parse_prompt("a red circle to the left of a blue square")
    negatives = hard_negatives(prompt)
    by_kind = {}
    for kind, negative in negatives:
        by_kind.setdefault(kind, []).append(negative.text)
    assert by_kind["flip_relation"] == ["a red circle to the right of a blue square"]
    assert by_kind["swap_colour"] == ["a blue circle to the left of a red square"]
    assert by_kind["swap_shape"] == ["a red square to the left of a blue circle"]
    assert by_kind["count"] == ["two red circles to the left of a blue square",
                                "three red circles to the left of a blue square",
                                "a red circle to the left of two blue squares",
                                "a red circle to the left of three blue squares"]
    assert len(by_kind["colour"]) == 10 and len(by_kind["shape"]) == 4
    assert len(negatives) == 21 and "size" not in by_kind


def test_no_negative_that_means_the_same_or_merges_two_kinds():
    prompt = parse_prompt("a red circle and a blue circle")
    texts = {n.text for _, n in hard_negatives(prompt)}
    assert "a blue circle and a red circle" not in texts  # same pair, reordered
    assert "a blue circle and a blue circle" not in texts  # two phrases of one kind
    assert "a red circle and a green circle" in texts
    counting = {n.text for _, n in hard_negatives(parse_prompt("three green triangles"))}
    assert {"one green triangle", "two green triangles", "four green triangles"} <= counting
    assert "five green triangles" not in counting
    mixed = {n.text for _, n in hard_negatives(parse_prompt("three red circles and a blue square"))}
    assert not any(t.startswith("four") or "two blue" in t for t in mixed)  # at most 4 objects


def test_sized_phrases_get_size_negatives():
    negatives = hard_negatives(parse_prompt("two small red circles above a large cyan triangle"))
    sizes = [n.text for k, n in negatives if k == "size"]
    assert sizes == ["two large red circles above a large cyan triangle",
                     "two small red circles above a small cyan triangle"]


def test_scene_drops_negatives_it_satisfies():
    prompt = parse_prompt("a red circle")
    scene = [ShapeObject("circle", "red", "small", 10, 5, 5),
             ShapeObject("circle", "green", "large", 16, 30, 30)]
    texts = {n.text for _, n in hard_negatives(prompt, scene)}
    assert "a green circle" not in texts  # true of this scene
    assert "a blue circle" in texts
    assert "a red circle" not in {n.text for _, n in hard_negatives(prompt)}


def test_sampling_draws_distinct_negatives_balanced_over_kinds():
    prompt = parse_prompt("a red circle to the left of a blue square")
    everything = {n.text for _, n in hard_negatives(prompt)}
    drawn = sample_hard_negatives(prompt, 6, np.random.default_rng(0))
    assert len(drawn) == 6 and len({n.text for _, n in drawn}) == 6
    assert {n.text for _, n in drawn} <= everything
    assert len({k for k, _ in drawn}) >= 4  # balanced: not six colour changes
    assert len(sample_hard_negatives(prompt, 100, np.random.default_rng(0))) == len(everything)
    first = sample_hard_negatives(prompt, 3, np.random.default_rng(7))
    assert first == sample_hard_negatives(prompt, 3, np.random.default_rng(7))
    shuffled = hard_negatives(prompt, rng=np.random.default_rng(1))
    assert sorted(n.text for _, n in shuffled) == sorted(everything)
