"""Caption negatives: one change each, of the expected kind, distinct, deterministic."""

import numpy as np
import pytest

from dpt_t2i.data.text_negatives import caption_negatives

CAPTIONS = ["A red bus to the left of a white van.", "Two dogs on top of a blue bed",
            "A big dog in front of a small cat, inside.", "A man riding a horse."]


def all_negatives(caption: str) -> list[str]:
    return caption_negatives(caption, 1000, np.random.default_rng(0))


def changed_words(caption: str, negative: str) -> list[tuple[str, str]]:
    """Word pairs that differ, an "a" <-> "an" fixed to fit its next word aside."""
    return [(a, b) for a, b in zip(caption.split(), negative.split())
            if a != b and {a.lower(), b.lower()} != {"a", "an"}]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_negatives_are_distinct_and_differ_from_the_caption(caption):
    for k in (1, 3, 5):
        negatives = caption_negatives(caption, k, np.random.default_rng(k))
        assert 1 <= len(negatives) <= k
        lowered = [n.lower() for n in negatives]
        assert len(set(lowered)) == len(lowered) and caption.lower() not in lowered


def test_colour_relation_and_swap_changes_of_a_known_caption():
    caption = "A red bus to the left of a white van."
    negatives = all_negatives(caption)
    assert "A red bus to the right of a white van." in negatives
    assert "A white bus to the left of a red van." in negatives
    assert "A blue bus to the left of a white van." in negatives
    assert "A red bus to the left of a black van." in negatives
    assert "An orange bus to the left of a white van." in negatives
    for negative in negatives:  # punctuation and the capital are kept
        assert negative[0] == "A" and negative.endswith(" van.")
        changed = changed_words(caption, negative)
        assert len(changed) in (1, 2)  # one replacement, or one swap of two colours


def test_multi_word_relations_numbers_and_articles():
    negatives = all_negatives("Two dogs on top of a blue bed")
    assert "Two dogs under a blue bed" in negatives
    assert "Five dogs on top of a blue bed" in negatives  # capital kept
    assert "Two dogs on top of an orange bed" in negatives  # "a" -> "an"
    assert not any(n.lower().startswith("one ") for n in negatives)  # noun stays plural
    assert "A big dog behind a small cat." in all_negatives("A big dog in front of a small cat.")
    assert "3 cats" in " ".join(all_negatives("2 cats sleep"))
    # grey and gray are one colour: not a negative of each other
    assert "A gray cat" not in all_negatives("A grey cat")
    assert "A white and black photo" not in all_negatives("A black and white photo")


def test_shuffle_fallback_when_no_rule_applies():
    caption = "A man riding a horse."
    negatives = caption_negatives(caption, 4, np.random.default_rng(3))
    assert len(negatives) == 4
    for negative in negatives:
        assert sorted(negative.lower().rstrip(".").split()) == sorted(
            caption.lower().rstrip(".").split())
        assert negative[0].isupper() and negative.endswith(".")
    assert caption_negatives("Dogs run", 3, np.random.default_rng(0)) == ["Run dogs"]


def test_too_short_or_unshuffleable_captions_give_nothing():
    rng = np.random.default_rng(0)
    assert caption_negatives("Red.", 3, rng) == []
    assert caption_negatives("", 3, rng) == []
    assert caption_negatives("ha ha", 3, rng) == []
    assert caption_negatives("A red bus", 0, rng) == []


def test_deterministic_given_the_generator_and_varied_across_seeds():
    caption = CAPTIONS[0]
    first = caption_negatives(caption, 3, np.random.default_rng([5, 1]))
    assert first == caption_negatives(caption, 3, np.random.default_rng([5, 1]))
    draws = {tuple(caption_negatives(caption, 3, np.random.default_rng(s))) for s in range(8)}
    assert len(draws) > 1
