"""`dpt evaluate DIR`: alignment accuracy of image folders, per split and family."""

import json
import re
import shutil

import pytest

from dpt_t2i.cli import main

FAMILIES = ("object", "pair", "spatial", "counting", "mixed")


def _evaluate(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


CLEAN = {split: {**{f: 1.0 for f in FAMILIES}, "overall": 1.0, "n": 20} for split in ("id", "ood")}
MIXED = {  # conftest.WRONG_IMAGES: k of 4 images per group are wrong
    "id": {"object": 0.5, "pair": 0.75, "spatial": 0.25, "counting": 0.5, "mixed": 0.5,
           "overall": 0.5, "n": 20},
    "ood": {"object": 0.5, "pair": 0.25, "spatial": 0.75, "counting": 0.5, "mixed": 0.5,
            "overall": 0.5, "n": 20}}


def test_clean_renders_score_one_everywhere(judged_folders, capsys):
    code, out, err = _evaluate(capsys, judged_folders["clean"], "--json")
    assert code == 0 and "note" not in err
    assert json.loads(out) == {"folders": {str(judged_folders["clean"]): CLEAN}, "skipped": {}}


def test_wrong_images_lower_accuracy_to_the_exact_fractions(judged_folders, capsys):
    code, out, _ = _evaluate(capsys, judged_folders["mixed"], "--json")
    assert code == 0
    assert json.loads(out) == {"folders": {str(judged_folders["mixed"]): MIXED}, "skipped": {}}


def test_several_folders_get_a_row_each_and_verdicts_written(judged_folders, tmp_path, capsys):
    verdicts = tmp_path / "verdicts.jsonl"
    clean, mixed = judged_folders["clean"], judged_folders["mixed"]
    code, out, _ = _evaluate(capsys, clean, mixed, "--json", "--verdicts", verdicts)
    assert code == 0
    assert json.loads(out) == {"folders": {str(clean): CLEAN, str(mixed): MIXED}, "skipped": {}}
    rows = [json.loads(line) for line in verdicts.read_text().splitlines()]
    assert len(rows) == 80
    assert [r["satisfied"] for r in rows] == [True] * 40 + [r["shown"] == r["prompt"]
                                                            for r in rows[40:]]
    assert set(rows[0]) >= {"file", "prompt", "seed", "family", "split", "satisfied"}


def test_pool_adds_rows_over_all_folders(judged_folders, capsys):
    clean, mixed = judged_folders["clean"], judged_folders["mixed"]
    code, out, _ = _evaluate(capsys, clean, mixed, "--json", "--pool")
    assert code == 0
    table = json.loads(out)
    assert table["folders"] == {str(clean): CLEAN, str(mixed): MIXED}
    pooled = table["pooled"]
    assert pooled["id"]["n"] == pooled["ood"]["n"] == 40
    assert pooled["id"]["spatial"] == (1.0 + 0.25) / 2
    assert pooled["ood"]["pair"] == (1.0 + 0.25) / 2


def test_table_output(judged_folders, capsys):
    code, out, _ = _evaluate(capsys, judged_folders["mixed"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("| folder | split | object | pair | spatial | counting | mixed | overall "
                        "| images |")
    name = judged_folders["mixed"]
    assert lines[2:] == [f"| {name} | id | 0.500 | 0.750 | 0.250 | 0.500 | 0.500 | 0.500 | 20 |",
                         f"| {name} | ood | 0.500 | 0.250 | 0.750 | 0.500 | 0.500 | 0.500 | 20 |"]


def test_table_has_a_row_per_folder_and_split_then_the_pooled_rows(judged_folders, capsys):
    clean, mixed = judged_folders["clean"], judged_folders["mixed"]
    code, out, _ = _evaluate(capsys, clean, mixed, "--pool")
    assert code == 0
    rows = [line.split(" | ")[:2] for line in out.splitlines()[2:]]
    assert rows == [[f"| {clean}", "id"], [f"| {clean}", "ood"], [f"| {mixed}", "id"],
                    [f"| {mixed}", "ood"], ["| all folders", "id"], ["| all folders", "ood"]]
    assert out.splitlines()[3].endswith("| 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 20 |")


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


def _copy_folder(src, dst, edit=None):
    """A copy of the folder `src` at `dst`; `edit(records)` changes its index records."""
    shutil.copytree(src, dst)
    records = [json.loads(line) for line in (dst / "index.jsonl").read_text().splitlines()]
    if edit is not None:
        edit(records)
    (dst / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return dst


def _keeping(*positions):
    """An index edit that keeps the records at `positions` only."""
    def edit(records):
        records[:] = [records[k] for k in positions]
    return edit


def _break_images(folder, *names):
    """The first image named loses its second half (truncated); the others become junk."""
    first = folder / names[0]
    first.write_bytes(first.read_bytes()[:len(first.read_bytes()) // 2])
    for name in names[1:]:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))


def _foreign_prompts(records):
    records[5]["prompt"] = "a photo of a dog"
    records[25]["prompt"] = "red a circle"


def test_unreadable_images_and_foreign_prompts_are_skipped_per_folder(judged_folders,
                                                                      tmp_path, capsys):
    clean = judged_folders["clean"]
    broken = _copy_folder(clean, tmp_path / "broken", _foreign_prompts)
    _break_images(broken, "00003.png", "00004.png")
    verdicts = tmp_path / "verdicts.jsonl"
    code, out, err = _evaluate(capsys, clean, broken, "--json", "--verdicts", verdicts)
    assert code == 0, err
    result = json.loads(out)
    assert result["folders"][str(clean)] == CLEAN
    # images 0-19 are ID (3, 4, 5 skipped), 20-39 OOD (25 skipped); the rest are clean renders
    assert result["folders"][str(broken)] == {
        "id": {**{f: 1.0 for f in FAMILIES}, "overall": 1.0, "n": 17},
        "ood": {**{f: 1.0 for f in FAMILIES}, "overall": 1.0, "n": 19}}
    skipped = result["skipped"][str(broken)]
    assert list(result["skipped"]) == [str(broken)]
    assert [(s["file"], s["skip"]) for s in skipped] == [
        ("00005.png", "prompt"), ("00025.png", "prompt"), ("00003.png", "image"),
        ("00004.png", "image")]
    assert skipped[0]["prompt"] == "a photo of a dog" and "word 'photo'" in skipped[0]["why"]
    assert skipped[2]["why"].startswith(f"{broken / '00003.png'}: ")
    notes = [line for line in err.splitlines() if line.startswith("dpt evaluate: note:")]
    assert len(notes) == 1 and "Traceback" not in err
    assert notes[0].startswith(
        f"dpt evaluate: note: {broken}: skipped 4 of 40 images: 2 whose prompts are not Shapes "
        f"prompts (first: {broken}/index.jsonl: prompt 'a photo of a dog' of 00005.png is not a "
        "Shapes prompt: word 'photo'")
    assert f"; 2 whose images cannot be read (first: {broken / '00003.png'}: " in notes[0]
    rows = [json.loads(line) for line in verdicts.read_text().splitlines()]
    assert len(rows) == 40 + 36 and all(r["satisfied"] for r in rows)
    assert {r["file"] for r in rows[40:]}.isdisjoint({s["file"] for s in skipped})


def test_a_folder_of_unreadable_images_is_a_one_line_error(judged_folders, tmp_path, capsys):
    folder = _copy_folder(judged_folders["clean"], tmp_path / "run", _keeping(0, 1))
    _break_images(folder, "00000.png", "00001.png")
    verdicts = tmp_path / "verdicts.jsonl"
    code, out, err = _evaluate(capsys, folder, "--verdicts", verdicts)
    assert code == 2 and out == "" and not verdicts.exists()
    lines = [line for line in err.splitlines() if line.strip() and "judge:" not in line]
    assert lines == [f"dpt evaluate: error: no image could be judged: {folder}: skipped 2 of 2 "
                     f"images: 2 whose images cannot be read (first: {folder / '00000.png'}: "
                     + lines[0].split(f"{folder / '00000.png'}: ", 1)[1]]
    assert "truncated" in lines[0]


def test_a_folder_of_foreign_prompts_does_not_stop_the_others(judged_folders, tmp_path,
                                                              capsys):
    other = _copy_folder(judged_folders["clean"], tmp_path / "photos",
                         lambda records: [r.update(prompt="a photo of a dog") for r in records])
    code, out, err = _evaluate(capsys, other, judged_folders["mixed"], "--json")
    assert code == 0
    result = json.loads(out)
    assert result["folders"] == {str(other): {}, str(judged_folders["mixed"]): MIXED}
    assert len(result["skipped"][str(other)]) == 40
    assert f"dpt evaluate: note: {other}: skipped 40 of 40 images: 40 whose prompts" in err
    code, out, _ = _evaluate(capsys, other, judged_folders["mixed"])
    assert code == 0 and str(other) not in out  # no rows: the note says why


@pytest.mark.parametrize("target", ["index", "image", "folder", "no parent"])
def test_verdicts_file_is_checked_before_judging(target, judged_folders, tmp_path, capsys):
    folder = _copy_folder(judged_folders["clean"], tmp_path / "run")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    path = {"index": folder / "index.jsonl", "image": folder / "." / "00007.png",
            "folder": folder, "no parent": tmp_path / "nope" / "v.jsonl"}[target]
    code, out, err = _evaluate(capsys, folder, "--verdicts", path)
    assert code == 2 and out == ""
    assert err.startswith(f"dpt evaluate: error: --verdicts {path}") and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not (tmp_path / "nope").exists()


def test_quality_is_measured_per_folder_and_needs_two_images_a_split(judged_folders, tmp_path,
                                                                     capsys):
    three = _copy_folder(judged_folders["clean"], tmp_path / "three", _keeping(0, 1, 20))
    code, out, err = _evaluate(capsys, three, judged_folders["clean"], "--quality", "--json")
    assert code == 0, err
    folders = json.loads(out)["folders"]
    assert folders[str(three)]["id"]["n"] == 2 and folders[str(three)]["ood"]["n"] == 1
    assert folders[str(three)]["id"]["fd"] >= 0 and folders[str(three)]["ood"]["fd"] is None
    assert all(row["fd"] >= 0 for row in folders[str(judged_folders["clean"])].values())


def test_threads_flag_sets_torch_threads_and_is_checked(judged_folders, monkeypatch, capsys):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    code, _, _ = _evaluate(capsys, judged_folders["clean"], "--threads", 3)
    assert code == 0 and calls == [3]
    code, out, err = _evaluate(capsys, judged_folders["clean"], "--threads", 0)
    assert code == 2 and out == "" and calls == [3]
    assert err == "dpt evaluate: error: --threads must be between 1 and 1024, got 0\n"


def test_paired_compares_each_folder_with_the_first_on_shared_images(judged_folders, capsys):
    clean, mixed = judged_folders["clean"], judged_folders["mixed"]
    code, out, _ = _evaluate(capsys, clean, mixed, "--json", "--paired")
    assert code == 0
    paired = json.loads(out)["paired"]
    assert paired["against"] == str(clean)
    table = paired["folders"][str(mixed)]
    for split in ("id", "ood"):  # mixed minus clean: its accuracy minus 1, family by family
        for family in FAMILIES:
            cell = table[split][family]
            assert cell["diff"] == pytest.approx(MIXED[split][family] - 1.0)
            assert cell["low"] <= cell["diff"] <= cell["high"] <= 0.0
        assert table[split]["overall"]["diff"] == pytest.approx(-0.5)
        assert table[split]["pairs"] == 20
    code, out, _ = _evaluate(capsys, clean, mixed, "--paired")
    assert code == 0 and f"Paired differences against {clean}" in out
    assert re.search(r"\| .*mixed \| ood \| -0\.500 \[-?[0-9.+-]+, [0-9.+-]+\]", out)


def test_paired_needs_two_folders(judged_folders, capsys):
    code, _, err = _evaluate(capsys, judged_folders["clean"], "--paired")
    assert code == 2 and "--paired needs two or more folders" in err
