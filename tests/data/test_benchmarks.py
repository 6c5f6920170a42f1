"""Benchmark prompt sets in their published formats, and GenEval's folder layout."""

import json
import re

import pytest

from dpt_t2i.cli import main
from dpt_t2i.data.benchmarks import (BENCHMARKS, BenchmarkPrompt, read_abc6k, read_benchmark,
                                     read_cc500, read_coco_nss1k, read_geneval, read_t2i_compbench,
                                     write_geneval_layout)

# CC-500.txt as published: one prompt a line, one line ending in a tab
CC500 = ("a green bench and a red car\na red bench and a green car\n\n"
         "a stack of three red cubes with a blue sphere on the right and two green cones on "
         "the left\t\n")
ABC6K = ("A room with blue walls and a white sink and door.\r\n"
         "A room with white walls and a blue sink and door .\r\n")
# COCO-NSS1K entries as in LayoutLLM-T2I's data/*.json (bbox lists shortened)
NSS_NUMERAL = [{"img_id": 8665, "name": "COCO_val2014_000000008665.jpg", "width": 640.0,
                "height": 480.0, "bbox": [[0.636, 0.661, 0.438, 0.413]], "label": ["bird"],
                "captions": "One bird that looks like two different ones."},
               {"img_id": 46327, "name": "COCO_val2014_000000046327.jpg", "width": 640.0,
                "height": 583.0, "bbox": [[0.463, 0.550, 0.927, 0.897]], "label": ["giraffe"],
                "captions": "two giraffes a tree dirt and a hill"}]
NSS_SPATIAL = [{"img_id": 356298, "name": "COCO_val2014_000000356298.jpg", "width": 640.0,
                "height": 360.0, "bbox": [[0.520, 0.320, 0.955, 0.374]], "label": ["train"],
                "captions": "a train cart is near a white tank"}]
# lines of GenEval's evaluation_metadata.jsonl, as prompts/create_prompts.py writes them
GENEVAL = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}],
     "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "cat", "count": 2}],
     "exclude": [{"class": "cat", "count": 3}], "prompt": "a photo of two cats"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
     "prompt": "a photo of a red car"},
]
POSITION = {"tag": "position", "include": [{"class": "car", "count": 1},
                                           {"class": "dog", "count": 1,
                                            "position": ["right of", 0]}],
            "prompt": "a photo of a dog right of a car"}


def geneval_lines(items=GENEVAL):
    return [json.dumps(item) for item in items]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_cc500_one_prompt_a_line_stripped_with_line_numbers(tmp_path):
    prompts = read_cc500(write(tmp_path / "CC-500.txt", CC500))
    assert prompts == [
        BenchmarkPrompt("a green bench and a red car", {"benchmark": "cc-500", "line": 1}),
        BenchmarkPrompt("a red bench and a green car", {"benchmark": "cc-500", "line": 2}),
        BenchmarkPrompt("a stack of three red cubes with a blue sphere on the right and two "
                        "green cones on the left", {"benchmark": "cc-500", "line": 4})]


def test_abc6k_reads_crlf_lines(tmp_path):
    path = tmp_path / "ABC-6K.txt"
    path.write_bytes(ABC6K.encode())
    prompts = read_benchmark("abc-6k", path)
    assert [p.text for p in prompts] == ["A room with blue walls and a white sink and door.",
                                         "A room with white walls and a blue sink and door ."]
    assert [p.metadata for p in prompts] == [{"benchmark": "abc-6k", "line": 1},
                                             {"benchmark": "abc-6k", "line": 2}]
    assert read_abc6k(path) == prompts


def test_coco_nss1k_file_and_folder(tmp_path):
    write(tmp_path / "only_numeral.json", json.dumps(NSS_NUMERAL))
    write(tmp_path / "sampled_only_spatial.json", json.dumps(NSS_SPATIAL))
    write(tmp_path / "notes.json", json.dumps(["not a prompt file"]))  # not a category file
    prompts = read_coco_nss1k(tmp_path)
    assert [p.text for p in prompts] == ["One bird that looks like two different ones.",
                                         "two giraffes a tree dirt and a hill",
                                         "a train cart is near a white tank"]
    assert [(p.metadata["category"], p.metadata["index"]) for p in prompts] == \
        [("numerical", 0), ("numerical", 1), ("spatial", 0)]
    assert prompts[2].metadata == {"benchmark": "coco-nss1k", "category": "spatial",
                                   "index": 0, "coco": NSS_SPATIAL[0]}
    whole = write(tmp_path / "five_category.json", json.dumps(NSS_SPATIAL + NSS_NUMERAL))
    prompts = read_benchmark("coco-nss1k", whole)
    assert [p.metadata["category"] for p in prompts] == [None, None, None]
    assert prompts[1].metadata["coco"]["img_id"] == 8665


def test_t2i_compbench_file_and_folder_in_category_order(tmp_path):
    write(tmp_path / "spatial_val.txt", "a bird on the left of a car\na cup on top of a table")
    write(tmp_path / "color_val.txt", "a green bench and a blue bowl\n\na blue bench and a "
                                      "green bowl\n")
    write(tmp_path / "color_train.txt", "a red cup\n")  # training prompts: left out
    prompts = read_t2i_compbench(tmp_path)
    assert [(p.text, p.metadata) for p in prompts] == [
        ("a green bench and a blue bowl",
         {"benchmark": "t2i-compbench", "category": "color", "line": 1}),
        ("a blue bench and a green bowl",
         {"benchmark": "t2i-compbench", "category": "color", "line": 3}),
        ("a bird on the left of a car",
         {"benchmark": "t2i-compbench", "category": "spatial", "line": 1}),
        ("a cup on top of a table",
         {"benchmark": "t2i-compbench", "category": "spatial", "line": 2})]
    write(tmp_path / "3d_spatial_val.txt", "a cat behind a box\n")
    one = read_benchmark("t2i-compbench", tmp_path / "3d_spatial_val.txt")
    assert one == [BenchmarkPrompt("a cat behind a box", {"benchmark": "t2i-compbench",
                                                          "category": "3d_spatial", "line": 1})]


def test_geneval_keeps_each_line_object(tmp_path):
    lines = geneval_lines([*GENEVAL, POSITION])
    path = write(tmp_path / "evaluation_metadata.jsonl", "\n".join(lines) + "\n")
    prompts = read_geneval(path)
    assert [p.text for p in prompts] == [item["prompt"] for item in [*GENEVAL, POSITION]]
    assert [p.metadata for p in prompts] == [{"benchmark": "geneval", "geneval": item}
                                             for item in [*GENEVAL, POSITION]]
    assert prompts[1].metadata["geneval"]["exclude"] == [{"class": "cat", "count": 3}]


def test_read_benchmark_knows_every_name_and_refuses_others(tmp_path):
    assert BENCHMARKS == ("cc-500", "abc-6k", "coco-nss1k", "t2i-compbench", "geneval")
    with pytest.raises(ValueError, match="unknown benchmark 'drawbench'; expected one of "
                                         "cc-500, abc-6k, coco-nss1k, t2i-compbench, geneval"):
        read_benchmark("drawbench", tmp_path)


# ------------------------------------------------------------------------------ bad files

BAD_FILES = {  # case: (benchmark, file name, content (bytes, or None for no file), error pattern)
    "missing file": ("cc-500", "CC-500.txt", None, r"CC-500 file \S+CC-500.txt does not exist; "
                     "expected a UTF-8 text file with one prompt a line"),
    "missing geneval": ("geneval", "evaluation_metadata.jsonl", None, "does not exist; expected "
                        'one JSON object a line with "tag", "include" and "prompt"'),
    "bad utf-8": ("abc-6k", "ABC-6K.txt", b"a red car\n\xff\xfe a blue car\n",
                  r"ABC-6K file \S+ABC-6K.txt line 2 is not UTF-8 \(byte 10\)"),
    "empty file": ("cc-500", "CC-500.txt", b"\n  \n\t\n", r"CC-500.txt has no prompts"),
    "empty geneval": ("geneval", "evaluation_metadata.jsonl", b"\n", "has no prompts"),
    "malformed json line": ("geneval", "evaluation_metadata.jsonl",
                            (geneval_lines()[0] + '\n{"tag": "colors", "prompt": \n').encode(),
                            r"evaluation_metadata.jsonl line 2 is not JSON \(Expecting value\)"),
    "geneval line without prompt": ("geneval", "evaluation_metadata.jsonl",
                                     b'\n{"tag": "colors", "include": []}\n',
                                     r'evaluation_metadata.jsonl line 2 has no "prompt" text'),
    "geneval line without tag": ("geneval", "evaluation_metadata.jsonl",
                                 b'{"prompt": "a photo of a cat"}\n', r'line 1 has no "tag" text'),
    "geneval line not an object": ("geneval", "evaluation_metadata.jsonl",
                                   b'["a photo of a cat"]\n', r"line 1 is not a JSON object"),
    "nss not json": ("coco-nss1k", "only_numeral.json", b'[{"captions": "a cat"},\n{',
                     r"COCO-NSS1K file \S+only_numeral.json line 2 is not JSON"),
    "nss not a list": ("coco-nss1k", "only_numeral.json", b'{"captions": "a cat"}',
                       r"holds no list of entries; expected a JSON list of COCO entries"),
    "nss entry without captions": ("coco-nss1k", "only_numeral.json",
                                   b'[{"captions": "a cat"}, {"caption": "a dog"}]',
                                   r'only_numeral.json entry 1 has no "captions" text'),
    "compbench file name": ("t2i-compbench", "colors.txt", b"a red car\n",
                            r"colors.txt is not named for a category; expected "
                            r"<category>_val.txt with category one of color, shape"),
    "compbench empty file": ("t2i-compbench", "shape_val.txt", b"",
                             r"shape_val.txt has no prompts"),
    "text file is a folder": ("cc-500", "folder", "dir", r"CC-500 file \S+folder is not a file"),
    "compbench folder without files": ("t2i-compbench", "folder", "dir",
                                       r"T2I-CompBench folder \S+folder has no prompt file"),
    "nss folder without files": ("coco-nss1k", "folder", "dir",
                                 r"COCO-NSS1K folder \S+folder has none of only_numeral.json"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_a_usage_error_naming_file_and_line(case, tmp_path):
    benchmark, name, content, pattern = BAD_FILES[case]
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_benchmark(benchmark, path)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ dpt generate

FAST = ["--steps", "2", "--guidance", "3.0"]


@pytest.fixture(scope="module")
def geneval_run(tiny_model_plain, tmp_path_factory):
    """Three GenEval prompts, two images each, through `dpt generate --geneval-out`."""
    root = tmp_path_factory.mktemp("geneval")
    lines = geneval_lines()
    write(root / "evaluation_metadata.jsonl", "\n".join(lines) + "\n")
    code = main(["generate", "--model", str(tiny_model_plain), *FAST, "--benchmark", "geneval",
                 "--benchmark-file", str(root / "evaluation_metadata.jsonl"), "--num-images",
                 "2", "--batch-size", "6", "--out", str(root / "run"), "--geneval-out",
                 str(root / "layout")])
    assert code == 0
    return root


def _records(folder):
    return [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]


def test_benchmark_metadata_lands_in_index(geneval_run):
    records = _records(geneval_run / "run")
    assert [r["file"] for r in records] == [f"{k:05d}.png" for k in range(6)]
    assert [r["prompt"] for r in records] == [g["prompt"] for g in GENEVAL for _ in range(2)]
    assert [r["prompt_index"] for r in records] == [0, 0, 1, 1, 2, 2]
    assert [r["benchmark"] for r in records] == [{"benchmark": "geneval", "geneval": g}
                                                 for g in GENEVAL for _ in range(2)]


def test_geneval_layout_is_what_its_evaluator_reads(geneval_run):
    layout = geneval_run / "layout"
    files = sorted(str(p.relative_to(layout)) for p in layout.rglob("*") if p.is_file())
    assert files == [f"{p:05d}/{name}" for p in range(3)
                     for name in ("metadata.jsonl", "samples/0000.png", "samples/0001.png")]
    lines = geneval_lines()
    for p in range(3):
        # evaluate_images.py reads it with json.load; the text is the prompt's line
        assert (layout / f"{p:05d}" / "metadata.jsonl").read_text() == lines[p] + "\n"
        for k in range(2):
            assert (layout / f"{p:05d}" / "samples" / f"{k:04d}.png").read_bytes() == \
                (geneval_run / "run" / f"{2 * p + k:05d}.png").read_bytes()
    assert sorted(p.name for p in geneval_run.iterdir()) == \
        ["evaluation_metadata.jsonl", "layout", "run"]  # no staging folder left


def test_layout_needs_overwrite_to_replace_and_keeps_other_files(geneval_run, tmp_path):
    out = tmp_path / "layout"
    (out / "00007" / "samples").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty; pass --overwrite"):
        write_geneval_layout(geneval_run / "run", out)
    assert write_geneval_layout(geneval_run / "run", out, overwrite=True) == 3
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002", "notes.txt"]
    assert json.loads((out / "00002" / "metadata.jsonl").read_text()) == GENEVAL[2]


def test_layout_refuses_a_folder_without_geneval_metadata(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "00000.png").write_bytes(b"png")
    (tmp_path / "run" / "index.jsonl").write_text(json.dumps(
        {"file": "00000.png", "prompt": "a red car", "prompt_index": 0,
         "benchmark": {"benchmark": "cc-500", "line": 1}}) + "\n")
    with pytest.raises(ValueError, match="record 1 has no GenEval metadata"):
        write_geneval_layout(tmp_path / "run", tmp_path / "layout")
    assert not (tmp_path / "layout").exists()


def test_compbench_prompts_run_on_the_shapes_model(tiny_model, tmp_path):
    write(tmp_path / "color_val.txt", "a red circle and a blue square\n")
    write(tmp_path / "spatial_val.txt", "\na green triangle to the left of a red circle\n")
    code = main(["generate", "--model", str(tiny_model), *FAST, "--benchmark", "t2i-compbench",
                 "--benchmark-file", str(tmp_path), "--num-images", "1", "--out",
                 str(tmp_path / "out")])
    assert code == 0
    records = _records(tmp_path / "out")
    assert [(r["prompt"], r["benchmark"]) for r in records] == [
        ("a red circle and a blue square",
         {"benchmark": "t2i-compbench", "category": "color", "line": 1}),
        ("a green triangle to the left of a red circle",
         {"benchmark": "t2i-compbench", "category": "spatial", "line": 2})]


BAD_RUNS = {  # case: (arguments, with {tmp} for the test's folder; what the error must say)
    "benchmark and prompt": (["--benchmark", "cc-500", "--benchmark-file", "{tmp}/CC-500.txt",
                              "--prompt", "a red circle"], "not several"),
    "benchmark and prompts file": (["--benchmark", "cc-500", "--benchmark-file",
                                    "{tmp}/CC-500.txt", "--prompts-file", "{tmp}/CC-500.txt"],
                                   "not several"),
    "benchmark without file": (["--benchmark", "geneval"],
                               "--benchmark geneval needs --benchmark-file PATH"),
    "file without benchmark": (["--benchmark-file", "{tmp}/CC-500.txt"],
                               "--benchmark-file needs --benchmark NAME, one of cc-500"),
    "unknown benchmark": (["--benchmark", "parti", "--benchmark-file", "{tmp}/CC-500.txt"],
                          "unknown benchmark 'parti'"),
    "missing benchmark file": (["--benchmark", "cc-500", "--benchmark-file", "{tmp}/nope.txt"],
                               "nope.txt does not exist"),
    "word the shapes model lacks": (["--benchmark", "cc-500", "--benchmark-file",
                                     "{tmp}/CC-500.txt"],
                                    "word 'bench' in prompt 'a green bench and a red car' is "
                                    "not in the vocabulary of the Shapes model"),
    "geneval-out without geneval": (["--prompt", "a red circle", "--geneval-out",
                                     "{tmp}/layout"], "--geneval-out needs --benchmark geneval"),
    "geneval-out of another set": (["--benchmark", "cc-500", "--benchmark-file",
                                    "{tmp}/CC-500.txt", "--geneval-out", "{tmp}/layout"],
                                   "--geneval-out needs --benchmark geneval"),
    "geneval-out not empty": (["--benchmark", "geneval", "--benchmark-file", "{tmp}/shapes.jsonl",
                               "--geneval-out", "{tmp}/full"], "full is not empty; pass "
                                                               "--overwrite"),
    "geneval-out is out": (["--benchmark", "geneval", "--benchmark-file", "{tmp}/shapes.jsonl",
                            "--geneval-out", "{tmp}/out"], "must lie apart from --out"),
    "geneval-out is a file": (["--benchmark", "geneval", "--benchmark-file",
                               "{tmp}/shapes.jsonl", "--geneval-out", "{tmp}/CC-500.txt"],
                              "CC-500.txt is a file"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_benchmark_run_is_one_line_and_writes_nothing(case, tiny_model, tmp_path, capsys):
    write(tmp_path / "CC-500.txt", CC500)
    write(tmp_path / "shapes.jsonl", json.dumps(
        {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
         "prompt": "a red circle"}) + "\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    args, pattern = BAD_RUNS[case]
    code = main(["generate", "--model", str(tiny_model), "--out", str(tmp_path / "out"), *FAST,
                 *(a.format(tmp=tmp_path) for a in args)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dpt generate: error: ")
    assert re.search(pattern, err), err
    assert sorted(tmp_path.rglob("*")) == before
