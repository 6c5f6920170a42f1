"""`dpt evaluate DIR`: alignment accuracy of image folders, per split and family."""

import json
import re

import pytest

from dpt_t2i.cli import main

FAMILIES = ("object", "pair", "spatial", "counting", "mixed")


def _evaluate(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_clean_renders_score_one_everywhere(judged_folders, capsys):
    code, out, _ = _evaluate(capsys, judged_folders["clean"], "--json")
    assert code == 0
    assert json.loads(out) == {
        split: {**{f: 1.0 for f in FAMILIES}, "overall": 1.0, "n": 20} for split in ("id", "ood")}


def test_wrong_images_lower_accuracy_to_the_exact_fractions(judged_folders, capsys):
    code, out, _ = _evaluate(capsys, judged_folders["mixed"], "--json")
    assert code == 0
    assert json.loads(out) == {  # conftest.WRONG_IMAGES: k of 4 images per group are wrong
        "id": {"object": 0.5, "pair": 0.75, "spatial": 0.25, "counting": 0.5, "mixed": 0.5,
               "overall": 0.5, "n": 20},
        "ood": {"object": 0.5, "pair": 0.25, "spatial": 0.75, "counting": 0.5, "mixed": 0.5,
                "overall": 0.5, "n": 20}}


def test_several_folders_are_pooled_and_verdicts_written(judged_folders, tmp_path, capsys):
    verdicts = tmp_path / "verdicts.jsonl"
    code, out, _ = _evaluate(capsys, judged_folders["clean"], judged_folders["mixed"], "--json",
                             "--verdicts", verdicts)
    assert code == 0
    table = json.loads(out)
    assert table["id"]["n"] == table["ood"]["n"] == 40
    assert table["id"]["spatial"] == (1.0 + 0.25) / 2 and table["ood"]["pair"] == (1.0 + 0.25) / 2
    rows = [json.loads(line) for line in verdicts.read_text().splitlines()]
    assert len(rows) == 80
    assert [r["satisfied"] for r in rows] == [True] * 40 + [r["shown"] == r["prompt"]
                                                            for r in rows[40:]]
    assert set(rows[0]) >= {"file", "prompt", "seed", "family", "split", "satisfied"}


def test_table_output(judged_folders, capsys):
    code, out, _ = _evaluate(capsys, judged_folders["mixed"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "| split | object | pair | spatial | counting | mixed | overall | images |"
    assert lines[2:] == ["| id | 0.500 | 0.750 | 0.250 | 0.500 | 0.500 | 0.500 | 20 |",
                         "| ood | 0.500 | 0.250 | 0.750 | 0.500 | 0.500 | 0.500 | 20 |"]


def _copy_with_index(src, dst, records):
    dst.mkdir()
    (dst / "00000.png").write_bytes((src / "00000.png").read_bytes())
    (dst / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return dst


OK = {"file": "00000.png", "prompt": "a red circle", "seed": 0}
BAD = {  # case: (index records, or None for no index; what the one-line error must say)
    "no index": (None, r"{dir} has no index\.jsonl; expected a folder written by `dpt generate`"),
    "missing image": ([OK, {**OK, "file": "00009.png"}],
                      r"{dir}/index\.jsonl names 00009\.png, which is missing"),
    "foreign prompt": ([{**OK, "prompt": "a photo of a dog"}],
                       r"{dir}/index\.jsonl: prompt 'a photo of a dog' of 00000\.png is not a "
                       r"Shapes prompt: word 'photo'"),
    "ungrammatical prompt": ([{**OK, "prompt": "red a circle"}],
                             r"prompt 'red a circle' of 00000\.png is not a Shapes prompt"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folders_exit_2_with_one_line(case, judged_folders, tmp_path, capsys):
    records, pattern = BAD[case]
    folder = tmp_path / "run"
    if records is None:
        folder.mkdir()
        (folder / "00000.png").write_bytes((judged_folders["clean"] / "00000.png").read_bytes())
    else:
        _copy_with_index(judged_folders["clean"], folder, records)
    verdicts = tmp_path / "verdicts.jsonl"
    code, out, err = _evaluate(capsys, folder, "--verdicts", verdicts)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip() and "judge:" not in line]  # no bars
    assert len(lines) == 1 and lines[0].startswith("dpt evaluate: error: ")
    assert re.search(pattern.format(dir=re.escape(str(folder))), lines[0]), err
    assert not verdicts.exists()


def test_folders_without_index_are_refused_before_judging(judged_folders, tmp_path, capsys):
    code, out, err = _evaluate(capsys, judged_folders["clean"], tmp_path, "--json")
    assert code == 2 and out == ""
    assert err == f"dpt evaluate: error: {tmp_path} has no index.jsonl; expected a folder " \
                  "written by `dpt generate`\n"


@pytest.mark.parametrize("line, expected", [
    ("{not json", "line 2 is not JSON"),
    ('{"file": "00000.png"}', "line 2 lacks prompt"),
    ('["a red circle"]', "line 2 lacks file, prompt"),
])
def test_malformed_index_line_is_a_one_line_error(tmp_path, capsys, line, expected):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "index.jsonl").write_text(
        json.dumps({"file": "00000.png", "prompt": "a red circle"}) + "\n" + line + "\n")
    code, out, err = _evaluate(capsys, folder)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert expected in err and "index.jsonl" in err


def test_a_bad_second_folder_is_reported_before_judging_the_first(judged_folders, tmp_path,
                                                                 capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.jsonl").write_text(json.dumps({"file": "gone.png", "prompt": "a red circle"}))
    code, _, err = _evaluate(capsys, judged_folders["clean"], bad)
    assert code == 2
    assert "gone.png" in err and "judge" not in err  # no progress bar: nothing was judged
