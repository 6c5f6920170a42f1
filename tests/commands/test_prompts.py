"""`dpt prompts`: the fixed benchmark prompt lists of the ID and OOD splits."""

from collections import Counter

import pytest

from dpt_t2i.cli import main
from dpt_t2i.data.shapes.grammar import FAMILIES, parse_prompt
from dpt_t2i.data.shapes.splits import is_ood


def _prompts(capsys, *args):
    code = main(["prompts", *map(str, args)])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    return captured.out.splitlines()


@pytest.mark.parametrize("split", ["id", "ood"])
def test_lines_parse_and_belong_to_the_split(split, capsys):
    lines = _prompts(capsys, "--split", split)
    prompts = [parse_prompt(line) for line in lines]
    assert all(is_ood(p) == (split == "ood") for p in prompts)
    assert len(set(lines)) == len(lines)  # distinct
    counts = Counter(p.family for p in prompts)
    # 20 per family by default; the OOD split has only 6 objects (the held-out sized objects)
    # and 10 counting prompts (the held-out counted kinds)
    expected = {f: 20 for f in FAMILIES} | ({"object": 6, "counting": 10} if split == "ood" else {})
    assert counts == expected
    assert [p.family for p in prompts] == sorted((p.family for p in prompts), key=FAMILIES.index)


def test_per_family_caps_each_family(capsys):
    lines = _prompts(capsys, "--split", "ood", "--per-family", 3)
    assert Counter(parse_prompt(line).family for line in lines) == {f: 3 for f in FAMILIES}
    lines = _prompts(capsys, "--split", "ood", "--per-family", 8)
    assert Counter(parse_prompt(line).family for line in lines) == (
        {f: 8 for f in FAMILIES} | {"object": 6})


def test_lists_are_fixed_by_seed_and_out_writes_the_same_text(tmp_path, capsys):
    first = _prompts(capsys, "--split", "id", "--per-family", 5)
    assert _prompts(capsys, "--split", "id", "--per-family", 5) == first
    assert _prompts(capsys, "--split", "id", "--per-family", 5, "--seed", 1) != first
    assert _prompts(capsys, "--split", "id", "--per-family", 10)[:5] == first[:5]  # a prefix
    out = tmp_path / "prompts.txt"
    assert _prompts(capsys, "--split", "id", "--per-family", 5, "--out", out) == []
    assert out.read_text() == "".join(line + "\n" for line in first)


@pytest.mark.parametrize("n", [0, -2])
def test_non_positive_per_family_exits_2(n, capsys):
    assert main(["prompts", "--split", "id", "--per-family", str(n)]) == 2
    err = capsys.readouterr().err
    assert err == f"dpt prompts: error: --per-family must be a positive whole number, got {n}\n"


def test_unknown_split_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prompts", "--split", "train"])
    assert exit_info.value.code == 2 and "invalid choice: 'train'" in capsys.readouterr().err
