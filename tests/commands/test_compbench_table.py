"""`dpt compbench-table`: T2I-CompBench's result files (in the formats its evaluators write)
as the paper's Table 1, beside the published figures."""

import json

import pytest

from dpt_t2i.cli import main
from dpt_t2i.data.compbench_results import PUBLISHED, read_result


def _write(path, answers):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"question_id": i, "answer": a} for i, a in enumerate(answers)]))


@pytest.fixture
def runs(tmp_path):
    base, dpt = tmp_path / "base", tmp_path / "dpt"
    # BLIP_vqa.py writes answers as '{:.4f}' strings
    _write(base / "color" / "annotation_blip" / "vqa_result.json", ["0.5000", "0.7000"])
    # 2D_spatial_eval.py: floats, scores under 0.5 set to 0
    _write(base / "spatial" / "labels" / "annotation_obj_detection_2d" / "vqa_result.json",
           [0, 0.75])
    _write(base / "non_spatial" / "annotation_clip" / "vqa_result.json", [0.30, 0.32])
    _write(base / "complex" / "annotation_3_in_1" / "vqa_result.json", [0.25] * 10 + [0.5] * 10)
    _write(dpt / "texture" / "annotation_blip" / "vqa_result.json", ["0.1234"])
    # the older determine_position_for_eval.py writes labels/annotation_obj_detection/
    _write(dpt / "spatial" / "labels" / "annotation_obj_detection" / "vqa_result.json", [1.0])
    return base, dpt


def test_table_prints_the_paper_rows_then_each_run(runs, capsys):
    assert main(["compbench-table", *map(str, runs)]) == 0
    assert capsys.readouterr().out == (
        "| method | Color | Shape | Texture | Spatial | Non-spatial | Complex |\n"
        "|---|---|---|---|---|---|---|\n"
        "| SD-2.1 (paper) | 48.2 | - | - | - | - | - |\n"
        "| DPT (paper) | 60.6 | - | - | - | - | - |\n"
        "| DPT + SC (paper) | 62.6 | - | - | - | - | - |\n"
        "| base | 60.0 | - | - | 37.5 | 31.0 | 37.5 |\n"
        "| dpt | - | - | 12.3 | 100.0 | - | - |\n")


def test_json_gives_scores_and_image_counts(runs, capsys):
    assert main(["compbench-table", "--json", str(runs[0])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scores"]["base"] == pytest.approx(
        {"color": 60.0, "shape": None, "texture": None, "spatial": 37.5, "non_spatial": 31.0,
         "complex": 37.5})
    assert out["images"]["base"] == {"color": 2, "spatial": 2, "non_spatial": 2, "complex": 20}
    assert {k: out["scores"][k] for k in PUBLISHED} == PUBLISHED


def test_the_same_folder_name_twice_gets_two_rows(tmp_path, capsys):
    for parent in ("a", "b"):
        _write(tmp_path / parent / "run" / "color" / "annotation_blip" / "vqa_result.json",
               ["0.5"])
    assert main(["compbench-table", str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]) == 0
    rows = capsys.readouterr().out.splitlines()[-2:]
    assert [r.split(" | ")[0] for r in rows] == ["| run", "| b/run"]


@pytest.mark.parametrize("content, message", [
    ("[", "cannot read T2I-CompBench result"),
    ("{}", "holds no list of results"),
    ('[{"question_id": 0, "answer": "yes"}]', "entry 0 has no numeric \"answer\""),
    ('[{"question_id": 0, "answer": NaN}]', "entry 0 has no numeric \"answer\""),
    ('[{"question_id": 0}]', "entry 0 has no numeric \"answer\""),
])
def test_a_bad_result_file_is_one_line_naming_it(content, message, tmp_path, capsys):
    path = tmp_path / "run" / "complex" / "annotation_3_in_1" / "vqa_result.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert main(["compbench-table", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"result {path}" in err and message in err, err


def test_a_folder_without_results_is_one_line(tmp_path, capsys):
    (tmp_path / "run" / "color").mkdir(parents=True)
    assert main(["compbench-table", str(tmp_path / "run"), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == (f"dpt compbench-table: error: T2I-CompBench run {tmp_path / 'run'} holds no "
                   "evaluator result; expected files such as color/annotation_blip/"
                   "vqa_result.json, spatial/labels/annotation_obj_detection_2d/vqa_result.json, "
                   "non_spatial/annotation_clip/vqa_result.json, complex/annotation_3_in_1/"
                   "vqa_result.json\n")
    assert main(["compbench-table", str(tmp_path / "nope")]) == 2
    assert "nope is not a folder" in capsys.readouterr().err


def test_read_result_is_the_mean_answer_times_100(tmp_path):
    _write(tmp_path / "r.json", ["0.1000", 0.2, 0.6])
    assert read_result(tmp_path / "r.json") == (pytest.approx(30.0), 3)
