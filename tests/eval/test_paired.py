"""Paired differences with a cluster bootstrap over prompts (`eval/paired.py`)."""

import numpy as np
import pytest

from dpt_t2i.eval.paired import format_paired, pair_verdicts, paired_difference


def _verdicts(satisfied: dict[tuple[str, int], bool], family_of=None, split="ood"):
    family_of = family_of or (lambda prompt: "object" if prompt.startswith("o") else "pair")
    return [{"prompt": p, "seed": s, "split": split, "family": family_of(p), "satisfied": ok}
            for (p, s), ok in satisfied.items()]


def test_identical_methods_differ_by_exactly_zero():
    rng = np.random.default_rng(0)
    keys = [(f"o{i}", s) for i in range(5) for s in range(4)]
    first = _verdicts({k: bool(rng.random() < 0.5) for k in keys})
    table = paired_difference(first, first)["ood"]
    assert table["object"] == {"diff": 0.0, "low": 0.0, "high": 0.0}
    assert table["pairs"] == 20 and table["prompts"] == 5


def test_difference_per_family_and_overall_as_the_mean_of_families():
    keys_o = [(f"o{i}", s) for i in range(4) for s in range(2)]  # 8 object images
    keys_p = [(f"p{i}", s) for i in range(2) for s in range(2)]  # 4 pair images
    first = _verdicts({k: False for k in keys_o + keys_p})
    won = {k: k[0] in ("o0", "o1") for k in keys_o}  # half the object images now pass
    second = _verdicts({**won, **{k: True for k in keys_p}})  # every pair image passes
    table = paired_difference(first, second, resamples=500)["ood"]
    assert table["object"]["diff"] == pytest.approx(0.5)
    assert table["pair"]["diff"] == pytest.approx(1.0)
    assert table["pair"]["low"] == table["pair"]["high"] == pytest.approx(1.0)
    assert table["overall"]["diff"] == pytest.approx(0.75)  # families weigh equally
    assert table["object"]["low"] < 0.5 < table["object"]["high"]
    # the reverse comparison mirrors it
    back = paired_difference(second, first, resamples=500)["ood"]
    assert back["overall"]["diff"] == pytest.approx(-0.75)


def test_interval_narrows_with_more_prompts_and_covers_a_true_effect():
    rng = np.random.default_rng(1)

    def draw(n_prompts):
        keys = [(f"o{i}", s) for i in range(n_prompts) for s in range(4)]
        base = {k: bool(rng.random() < 0.4) for k in keys}
        better = {k: base[k] or bool(rng.random() < 0.25) for k in keys}  # + 0.15 expected
        return paired_difference(_verdicts(base), _verdicts(better), seed=3)["ood"]["object"]

    small, large = draw(10), draw(200)
    assert (large["high"] - large["low"]) < 0.5 * (small["high"] - small["low"])
    assert large["low"] > 0.05 and large["low"] <= large["diff"] <= large["high"]


def test_only_shared_prompt_and_seed_pairs_count():
    first = _verdicts({("o1", 0): True, ("o1", 1): True, ("o2", 0): False})
    second = _verdicts({("o1", 0): False, ("o2", 0): True, ("o3", 0): True})
    pairs = pair_verdicts(first, second)
    assert [(a["prompt"], a["seed"]) for a, _ in pairs] == [("o1", 0), ("o2", 0)]
    assert paired_difference(first, second)["ood"]["pairs"] == 2
    with pytest.raises(ValueError, match="share no \\(prompt, seed\\)"):
        paired_difference(first, _verdicts({("o1", 7): True}))


def test_the_table_names_each_folder_and_the_interval():
    first = _verdicts({("o1", 0): False, ("o1", 1): True})
    second = _verdicts({("o1", 0): True, ("o1", 1): True})
    text = format_paired({"sc": paired_difference(first, second)}, "base")
    assert "against base" in text
    assert "| sc | ood | +0.500 [+0.500, +0.500] | +0.500 [+0.500, +0.500] | 2 |" in text
