"""`dpt generate --compbench-out`: T2I-CompBench's evaluators read every image of the layout
with its prompt and question id, and what they would misread is refused before any image.

The readers below are the evaluators' own file-listing and name-parsing lines, re-implemented
to the same rule (github.com/Karine-Huang/T2I-CompBench; each function names its file)."""

import json
import os

import pytest

from dpt_t2i.cli import main
from dpt_t2i.data.benchmarks import write_compbench_layout
from dpt_t2i.io.folder_writer import output_lock

FAST = ["--steps", "2", "--guidance", "3.0"]
# words the tiny model's tokenizer holds (it reads 16 tokens); a trailing period and a repeated
# line, as the published files have
COLOR = ["a green square and a red circle", "a blue triangle and a yellow square.",
         "a green square and a red circle"]
COMPLEX = ["The red circle on the left of a blue square.", "two large cyan circles above one "
           "triangle"]


# ------------------------------------------------------------------- the evaluators' readers


def blip_vqa(outpath):
    """BLIPvqa_eval/BLIP_vqa.py, Create_annotation_for_BLIP: [(question_id, prompt)]."""
    file_names = os.listdir(os.path.join(outpath, "samples"))
    file_names.sort(key=lambda x: int(x.split("_")[-1].split('.')[0]))
    return [(cnt, name.split('_')[0]) for cnt, name in enumerate(file_names)]


def clip_score(outpath):
    """CLIPScore_eval/CLIP_similarity.py: the same sort; question_id is the position."""
    file_names = os.listdir(os.path.join(outpath, 'samples'))
    file_names.sort(key=lambda x: int(x.split("_")[-1].split('.')[0]))
    return [(i, name.split("_")[0]) for i, name in enumerate(file_names)]


def unidet_spatial(outpath):
    """UniDet_eval/2D_spatial_eval.py and 3D_spatial_eval.py: the loader of
    experts/obj_detection/generate_dataset.py (and _3d.py) sorts by the second field; the
    question id is the integer after the last '_'."""
    data_imgs = os.listdir(os.path.join(outpath, "samples"))
    data_imgs.sort(key=lambda x: int(x.split("_")[1].split('.')[0]))
    return [(int(name.split('_')[-1].split('.')[0]), name.split('_')[0]) for name in data_imgs]


def numeracy(outpath):
    """UniDet_eval/numeracy_eval.py: the same loader; its own question-id parse."""
    data_imgs = os.listdir(os.path.join(outpath, "samples"))
    data_imgs.sort(key=lambda x: int(x.split("_")[1].split('.')[0]))
    return [(int(name.split(".png")[0].split("_")[1]), name.split('_')[0]) for name in data_imgs]


def three_in_one_lines(complex_val):
    """3_in_1_eval/3_in_1.py: the prompt lines whose scores it reads as results 10 k .. 10 k + 9
    (num=10) of the readers' lists."""
    with open(complex_val) as f:
        data = f.readlines()
    return [i.strip('\n').split('.')[0].lower() for i in data]


READERS = [blip_vqa, clip_score, unidet_spatial, numeracy]


# --------------------------------------------------------------------------------- the runs


def _generate(model, root, name, lines, *args):
    root.mkdir(exist_ok=True)
    (root / name).write_text("\n".join(lines) + "\n")
    return main(["generate", "--model", str(model), *FAST, "--benchmark", "t2i-compbench",
                 "--benchmark-file", str(root / name), "--out", str(root / "run"), *args])


def _records(folder):
    return [json.loads(x) for x in (folder / "index.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def color_run(tiny_model_plain, tmp_path_factory):
    root = tmp_path_factory.mktemp("compbench")
    assert _generate(tiny_model_plain, root, "color_val.txt", COLOR, "--num-images", "2",
                     "--batch-size", "4", "--compbench-out", str(root / "layout")) == 0
    return root


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_every_evaluator_finds_every_image_with_its_prompt_and_question_id(color_run, reader):
    records = _records(color_run / "run")
    assert [r["prompt"] for r in records] == [p for p in COLOR for _ in range(2)]
    assert reader(color_run / "layout") == [(k, r["prompt"]) for k, r in enumerate(records)]


def test_the_layout_holds_the_run_images_and_nothing_else(color_run):
    samples = color_run / "layout" / "samples"
    assert sorted(os.listdir(color_run / "layout")) == ["samples"]
    assert sorted(os.listdir(samples)) == sorted(
        f"{p}_{k:06}.png" for k, p in enumerate(p for p in COLOR for _ in range(2)))
    for k, record in enumerate(_records(color_run / "run")):
        assert (samples / f"{record['prompt']}_{k:06}.png").read_bytes() == \
            (color_run / "run" / record["file"]).read_bytes()
    assert sorted(p.name for p in color_run.iterdir()) == ["color_val.txt", "layout", "run"]


def test_three_in_one_reads_ten_images_a_prompt_in_file_order(tiny_model_plain, tmp_path):
    assert _generate(tiny_model_plain, tmp_path, "complex_val.txt", COMPLEX, "--num-images",
                     "10", "--batch-size", "10", "--compbench-out", str(tmp_path / "layout")) == 0
    data = three_in_one_lines(tmp_path / "complex_val.txt")
    assert len(data) == 2
    for reader in READERS:
        read = reader(tmp_path / "layout")
        assert [q for q, _ in read] == list(range(20))
        # result i of every list is an image of prompt line i // 10, as 3-in-1 combines them
        assert [p.split('.')[0].lower() for _, p in read] == [data[i // 10] for i in range(20)]


def test_overwrite_replaces_samples_and_keeps_the_evaluators_results(tiny_model_plain, tmp_path,
                                                                    capsys):
    layout = tmp_path / "layout"
    args = ["--num-images", "1", "--compbench-out", str(layout)]
    assert _generate(tiny_model_plain, tmp_path, "shape_val.txt", COLOR[:2], *args) == 0
    (layout / "annotation_blip").mkdir()
    (layout / "annotation_blip" / "vqa_result.json").write_text("[]")
    capsys.readouterr()
    assert _generate(tiny_model_plain, tmp_path, "shape_val.txt", COLOR[1:], *args,
                     "--overwrite") == 0
    assert sorted(os.listdir(layout / "samples")) == [f"{COLOR[1]}_000000.png",
                                                      f"{COLOR[2]}_000001.png"]
    assert (layout / "annotation_blip" / "vqa_result.json").read_text() == "[]"
    assert f"wrote T2I-CompBench's layout of 2 images to {layout}" in capsys.readouterr().out


def test_layout_refuses_a_folder_of_other_prompts(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "00000.png").write_bytes(b"png")
    (tmp_path / "run" / "index.jsonl").write_text(json.dumps(
        {"file": "00000.png", "prompt": "a cat", "prompt_index": 0,
         "benchmark": {"benchmark": "cc-500", "line": 1}}) + "\n")
    with pytest.raises(ValueError, match="record 1 has no T2I-CompBench metadata"):
        write_compbench_layout(tmp_path / "run", tmp_path / "layout")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_second_writer_of_a_compbench_layout_is_refused(tiny_model_plain, tmp_path, capsys):
    with output_lock(tmp_path / "layout"):
        code = _generate(tiny_model_plain, tmp_path, "color_val.txt", COLOR[:1],
                         "--compbench-out", str(tmp_path / "layout"))
    _one_line_error(capsys, code, "layout is being written by another run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["color_val.txt"]


# ------------------------------------------------------------------------------- refusals

REFUSED = {  # name: (prompt file, its lines, more flags, the error's text)
    "underscore": ("color_val.txt", ["a red car", "a red_car and a blue bench"], [],
                   "T2I-CompBench color line 2: prompt 'a red_car and a blue bench' holds '_'; "
                   "the evaluators read the prompt as the file name up to its first '_'"),
    "slash": ("spatial_val.txt", ["a cat on the left of a dog/cat"], [],
              "T2I-CompBench spatial line 1: prompt 'a cat on the left of a dog/cat' holds '/' "
              "or NUL, which no file name can"),
    "png": ("texture_val.txt", ["a photo.png of a cat"], [], "holds '.png'; numeracy_eval.py "
                                                             "cuts the file name at its first"),
    "too long": ("color_val.txt", ["a red car " * 30], [],
                 "(299 characters) makes a file name of 310 bytes; at most 255 fit"),
    "complex not 10": ("complex_val.txt", COMPLEX, ["--num-images", "4"],
                       "complex_val.txt needs 10 images a prompt, got 4: T2I-CompBench's 3-in-1 "
                       "evaluator takes images 10 k .. 10 k + 9 as line k's; pass --num-images "
                       "10"),
    "complex default count": ("complex_val.txt", COMPLEX, [], "needs 10 images a prompt, got 4"),
    "several categories": ("", None, [], "the T2I-CompBench layout holds one category, as its "
                                         "evaluators score one samples/ folder at a time; these "
                                         "prompts are of color, shape: pass one"),
    "not empty": ("color_val.txt", COLOR, ["--compbench-out", "{tmp}/full"],
                  "T2I-CompBench folder {tmp}/full is not empty; pass --overwrite to replace "
                  "its samples/ folder, or choose a new folder"),
    "inside out": ("color_val.txt", COLOR, ["--compbench-out", "{tmp}/run/layout"],
                   "--compbench-out {tmp}/run/layout must lie apart from --out {tmp}/run"),
    "other benchmark": ("CC-500.txt", COLOR, [], "--compbench-out needs --benchmark "
                                                 "t2i-compbench"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_the_evaluators_would_misread_is_one_line_and_writes_nothing(case, tiny_model_plain,
                                                                         tmp_path, capsys):
    name, lines, more, message = REFUSED[case]
    if lines is None:  # a folder of two categories' files
        (tmp_path / "set").mkdir()
        (tmp_path / "set" / "color_val.txt").write_text("a red car\n")
        (tmp_path / "set" / "shape_val.txt").write_text("a round clock\n")
        name = "set"
    else:
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    more = [m.replace("{tmp}", str(tmp_path)) for m in more]
    if "--compbench-out" not in more:
        more += ["--compbench-out", str(tmp_path / "layout")]
    benchmark = "cc-500" if name == "CC-500.txt" else "t2i-compbench"
    code = main(["generate", "--model", str(tiny_model_plain), *FAST, "--benchmark", benchmark,
                 "--benchmark-file", str(tmp_path / name), "--out", str(tmp_path / "run"),
                 *more])
    _one_line_error(capsys, code, message.replace("{tmp}", str(tmp_path)))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def _one_line_error(capsys, code, text):
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("dpt generate: error: ") and text in err, err
