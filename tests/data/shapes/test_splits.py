"""In-distribution / out-of-distribution prompt splits."""

import numpy as np
import pytest

from dpt_t2i.data.shapes.grammar import FAMILIES, NUMBERS
from dpt_t2i.data.shapes.splits import (OOD_COUNTS, OOD_PAIRS, OOD_SIZED, benchmark_prompts,
                                        is_ood, sample_prompt)
from dpt_t2i.data.shapes.world import COLOURS, RELATIONS, SHAPES, SIZES


def _train_prompts(n_per_family: int = 600):
    rng = np.random.default_rng(41)
    return [sample_prompt(rng, f, "train") for f in FAMILIES for _ in range(n_per_family)]


TRAIN = _train_prompts()


def test_held_out_sets_have_their_sizes():
    assert (len(OOD_SIZED), len(OOD_PAIRS), len(OOD_COUNTS)) == (6, 30, 10)
    kinds = [(c, s) for _, c, s in OOD_SIZED]
    assert len(set(kinds)) == 6  # never both sizes of one kind


def test_no_training_prompt_is_ood():
    assert not any(is_ood(p) for p in TRAIN)


def test_training_prompts_use_every_word():
    words = set(" ".join(p.text for p in TRAIN).split())
    needed = {*COLOURS, *SHAPES, *SIZES, *NUMBERS[1:], *(s + "s" for s in SHAPES)}
    for relation in RELATIONS:
        needed |= set(relation.split())
    assert needed <= words
    assert {r for r in RELATIONS if any(p.link == r for p in TRAIN)} == set(RELATIONS)
    assert {p.family for p in TRAIN} == set(FAMILIES)


def test_ood_benchmark_prompts_are_all_ood_and_id_ones_are_not():
    ood, in_dist = benchmark_prompts("ood"), benchmark_prompts("id")
    assert all(is_ood(p) for p in ood)
    assert not any(is_ood(p) for p in in_dist)
    assert len({p.text for p in ood}) == len(ood)
    counts = {f: sum(p.family == f for p in ood) for f in FAMILIES}
    # object and counting OOD prompts are exactly the held-out sized objects and counts
    assert counts == {"object": 6, "pair": 20, "spatial": 20, "counting": 10, "mixed": 20}
    assert {(p.first.count, p.first.colour, p.first.shape)
            for p in ood if p.family == "counting"} == OOD_COUNTS
    assert [p.text for p in benchmark_prompts("ood")] == [p.text for p in ood]  # fixed list


def test_is_ood_on_held_out_combinations():
    from dpt_t2i.data.shapes.grammar import Phrase, Prompt
    size, colour, shape = sorted(OOD_SIZED)[0]
    assert is_ood(Prompt(Phrase(1, colour, shape, size)))
    assert not is_ood(Prompt(Phrase(1, colour, shape)))
    n, colour, shape = sorted(OOD_COUNTS)[0]
    assert is_ood(Prompt(Phrase(n, colour, shape, None, True)))
    a, b = sorted(sorted(p) for p in OOD_PAIRS)[0]
    assert is_ood(Prompt(Phrase(1, *a), "above", Phrase(1, *b)))
    assert is_ood(Prompt(Phrase(1, *b), "and", Phrase(1, *a)))


def test_sample_prompt_rejects_unknown_split():
    with pytest.raises(ValueError, match="'test'"):
        sample_prompt(np.random.default_rng(0), "object", "test")
