"""Alignment of image folders: per-image verdicts, per split and family accuracy, the table."""

import json
import re

import pytest

from dpt_t2i.data.shapes.grammar import FAMILIES
from dpt_t2i.eval.alignment import (format_folder_tables, format_table, judge_folders,
                                    judge_images, read_folders, summarize)


def test_clean_renders_are_all_judged_aligned(judged_folders):
    verdicts = judge_folders([judged_folders["clean"]])
    assert len(verdicts) == 40 and all(v["satisfied"] for v in verdicts)
    assert [v["split"] for v in verdicts] == ["id"] * 20 + ["ood"] * 20
    assert [v["family"] for v in verdicts[:20]] == [f for f in FAMILIES for _ in range(4)]
    first = verdicts[0]  # the index record is kept whole
    assert first["file"] == "00000.png" and first["seed"] == 0 and first["method"] == "base"
    assert summarize(verdicts) == {
        split: {**{f: 1.0 for f in FAMILIES}, "overall": 1.0, "n": 20} for split in ("id", "ood")}


def test_wrong_renders_are_judged_unaligned(judged_folders):
    verdicts = judge_folders([judged_folders["mixed"]])
    assert [v["satisfied"] for v in verdicts] == [v["shown"] == v["prompt"] for v in verdicts]
    assert sum(not v["satisfied"] for v in verdicts) == 20
    # conftest.WRONG_IMAGES replaced k of each group's 4 images: accuracy 1 - k/4
    assert summarize(verdicts) == {
        "id": {"object": 0.5, "pair": 0.75, "spatial": 0.25, "counting": 0.5, "mixed": 0.5,
               "overall": 0.5, "n": 20},
        "ood": {"object": 0.5, "pair": 0.25, "spatial": 0.75, "counting": 0.5, "mixed": 0.5,
                "overall": 0.5, "n": 20}}


def test_summarize_averages_over_the_families_present():
    verdicts = ([{"split": "id", "family": "object", "satisfied": s} for s in (1, 1, 1, 0)]
                + [{"split": "id", "family": "counting", "satisfied": s} for s in (0, 1)]
                + [{"split": "ood", "family": "pair", "satisfied": False}])
    table = summarize(verdicts)
    assert list(table) == ["id", "ood"]
    assert table["id"] == {"object": 0.75, "counting": 0.5, "overall": 0.625, "n": 6}
    assert table["ood"] == {"pair": 0.0, "overall": 0.0, "n": 1}
    assert summarize([]) == {}


def test_format_table_has_a_row_per_split_and_dashes_for_absent_families():
    table = {"id": {"object": 0.75, "counting": 0.5, "overall": 0.625, "n": 6},
             "ood": {"pair": 0.0, "overall": 0.0, "n": 1}}
    assert format_table(table).splitlines() == [
        "| split | object | pair | spatial | counting | mixed | overall | images |",
        "|---|---|---|---|---|---|---|---|",
        "| id | 0.750 | - | - | 0.500 | - | 0.625 | 6 |",
        "| ood | - | 0.000 | - | - | - | 0.000 | 1 |"]


def _folder_with(tmp_path, clean, records):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "00000.png").write_bytes((clean / "00000.png").read_bytes())
    (folder / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_missing_image_and_foreign_prompt_raise_usage_errors(judged_folders, tmp_path):
    ok = {"file": "00000.png", "prompt": "a red circle", "seed": 0}
    folder = _folder_with(tmp_path, judged_folders["clean"], [ok, {**ok, "file": "00007.png"}])
    with pytest.raises(ValueError, match=r"names 00007\.png, which is missing"):
        judge_folders([folder])
    (folder / "index.jsonl").write_text(json.dumps({**ok, "prompt": "a pink dog"}) + "\n")
    with pytest.raises(ValueError, match=r"'a pink dog' of 00000\.png is not a Shapes prompt"):
        judge_folders([folder])


def test_read_and_judge_keep_what_they_skip_with_the_reason(judged_folders, tmp_path):
    ok = {"file": "00000.png", "prompt": "a red circle", "seed": 0}
    folder = _folder_with(tmp_path, judged_folders["clean"],
                          [ok, {**ok, "prompt": "a pink dog"}, {**ok, "file": "broken.png"}])
    (folder / "broken.png").write_bytes((folder / "00000.png").read_bytes()[:100])
    [judgement] = read_folders([folder])
    assert judgement.images == 3 and len(judgement.pending) == 2 and not judgement.verdicts
    assert [s["skip"] for s in judgement.skipped] == ["prompt"]
    judge_images([judgement])
    assert judgement.pending == [] and [v["file"] for v in judgement.verdicts] == ["00000.png"]
    assert [(s["file"], s["skip"]) for s in judgement.skipped] == [
        ("00000.png", "prompt"), ("broken.png", "image")]
    note = judgement.skip_note()
    assert note.startswith(f"skipped 2 of 3 images: 1 whose prompts are not Shapes prompts "
                           f"(first: {folder}/index.jsonl: prompt 'a pink dog' of 00000.png ")
    assert f"; 1 whose images cannot be read (first: {folder / 'broken.png'}: " in note
    (folder / "index.jsonl").write_text(json.dumps(ok) + "\n" + json.dumps(
        {**ok, "file": "broken.png"}) + "\n")  # the strict form: no skipping
    with pytest.raises(ValueError, match=r"broken\.png: .*; expected a PNG as `dpt generate` "):
        judge_folders([folder])


@pytest.mark.parametrize("record, message", [
    ({"file": 5, "prompt": "a red circle"}, "record 1: file is 5; expected a string"),
    ({"file": "00000.png", "prompt": None}, "record 1: prompt is null; expected a string"),
])
def test_records_of_other_types_are_usage_errors(judged_folders, tmp_path, record, message):
    folder = _folder_with(tmp_path, judged_folders["clean"], [record])
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'index.jsonl'} {message}")):
        read_folders([folder])


def test_an_index_that_is_not_utf8_is_a_usage_error(tmp_path):
    (tmp_path / "index.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"cannot read .*index\.jsonl \(.*\); expected the index"):
        read_folders([tmp_path])


def test_folder_tables_label_rows_and_escape_pipes():
    tables = {"runs/a|b": {"id": {"object": 0.5, "overall": 0.5, "n": 2, "fd": 1.234}},
              "c\nd": {"other": {"n": 3, "clip_score": 31.0}}}
    assert format_folder_tables(tables).splitlines() == [
        "| folder | split | object | pair | spatial | counting | mixed | overall | images "
        "| FD to renders | CLIPScore |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| runs/a\\|b | id | 0.500 | - | - | - | - | 0.500 | 2 | 1.23 | - |",
        "| c d | other | - | - | - | - | - | - | 3 | - | 31.00 |"]
