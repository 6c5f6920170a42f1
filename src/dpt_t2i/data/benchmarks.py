"""Benchmark prompt sets in their published formats, and GenEval's image-folder layout.

Each reader returns the set's prompts in file order as `BenchmarkPrompt(text, metadata)`;
`metadata["benchmark"]` names the set and the rest locates the prompt in its file. A file
that cannot be used is a ValueError naming the file, the line and what was expected.

The formats, as their authors publish them:

- **CC-500** and **ABC-6K** (Feng et al., ICLR 2023, Structured Diffusion Guidance;
  `CC-500.txt`, `ABC-6K.txt` in github.com/weixi-feng/Structured-Diffusion-Guidance): UTF-8
  text, one prompt a line ("a green bench and a red car"). Metadata: {"benchmark", "line"}.
- **COCO-NSS1K** (Qu et al., ACM MM 2023, LayoutLLM-T2I; `data/` in
  github.com/LayoutLLM-T2I/LayoutLLM-T2I): a JSON list of COCO val2014 entries {"img_id",
  "name", "width", "height", "bbox", "label", "captions"}, the prompt being "captions" (one
  string). One file per category (NSS_FILES); `five_category.json` holds all 943. Give one
  file, or the folder (its category files are read in NSS_FILES order). Metadata:
  {"benchmark", "category" (None for a file of another name), "index" (in the file),
  "coco" (the whole entry)}.
- **T2I-CompBench** (Huang et al., NeurIPS 2023; `examples/dataset/` in
  github.com/Karine-Huang/T2I-CompBench): `<category>_val.txt`, one prompt a line. Give one
  such file, or the folder (every `<category>_val.txt` in it, in COMPBENCH_CATEGORIES order;
  the `_train` and other files are left out). Metadata: {"benchmark", "category", "line"}.
- **GenEval** (Ghosh et al., NeurIPS 2023; `prompts/evaluation_metadata.jsonl` in
  github.com/djghosh13/geneval): one JSON object a line with "tag", "include" (and
  "exclude" for counting) and "prompt". Metadata: {"benchmark", "geneval" (the object)}.

Blank lines are skipped; line numbers count them. GenEval's evaluator
(`evaluation/evaluate_images.py`) reads `<DIR>/<prompt:05d>/metadata.jsonl` (that prompt's
object) and `<DIR>/<prompt:05d>/samples/<n>.png`; `write_geneval_layout` writes it.

T2I-CompBench's evaluators read one category's images from `<DIR>/samples/` and take
everything from the file names, which its generator (`GORS_finetune/inference_eval.py`)
writes as `f"{prompt}_{count:06}.png"` with a counter over the whole run:
`BLIPvqa_eval/BLIP_vqa.py` and `CLIPScore_eval/CLIP_similarity.py` list the folder, sort by
`int(name.split("_")[-1].split(".")[0])`, read the prompt as `name.split("_")[0]` and number
the results in that order; `UniDet_eval/2D_spatial_eval.py` and `3D_spatial_eval.py` (through
`experts/obj_detection/generate_dataset*.py`) sort by `int(name.split("_")[1].split(".")[0])`
and record that integer as the question id; `UniDet_eval/numeracy_eval.py` takes
`int(name.split(".png")[0].split("_")[1])`. `3_in_1_eval/3_in_1.py` reads no file names: it
takes results 10 k .. 10 k + 9 of those lists as the images of line k of `complex_val.txt`, so
a complex run must make exactly COMPBENCH_IMAGES_PER_PROMPT (10) images a prompt, in file
order (the benchmark's own protocol: 10 images a prompt in every category).
`write_compbench_layout` writes that layout; `check_compbench_prompts` refuses, before any
image is made, what those readers cannot parse (a prompt holding `_`, `/` or `.png`, a name
too long for a file) and a complex run of another count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..io.image_folder import INDEX, check_output_folder, read_index, staging_folder
from .prompt_text import quote

BENCHMARKS = ("cc-500", "abc-6k", "coco-nss1k", "t2i-compbench", "geneval")
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex",
                        "numeracy", "3d_spatial")
NSS_FILES = {"only_numeral.json": "numerical", "sampled_only_spatial.json": "spatial",
             "sampled_only_semantic.json": "semantic", "mix_relation.json": "mixed",
             "sampled_non_relation.json": "null"}

LINES = "a UTF-8 text file with one prompt a line"
NSS = 'a JSON list of COCO entries, each with its prompt under "captions" (COCO-NSS1K)'
GENEVAL = ('one JSON object a line with "tag", "include" and "prompt" '
           "(GenEval's evaluation_metadata.jsonl)")


@dataclass(frozen=True)
class BenchmarkPrompt:
    text: str       # the prompt, stripped
    metadata: dict  # {"benchmark": name, ...}: where the prompt comes from (JSON-ready)


def read_benchmark(name: str, path: str | Path) -> list[BenchmarkPrompt]:
    """The prompts of benchmark `name` (one of BENCHMARKS) from `path`, in file order."""
    readers = {"cc-500": read_cc500, "abc-6k": read_abc6k, "coco-nss1k": read_coco_nss1k,
               "t2i-compbench": read_t2i_compbench, "geneval": read_geneval}
    if name not in readers:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return readers[name](Path(path))


def read_cc500(path: str | Path) -> list[BenchmarkPrompt]:
    """CC-500 (`CC-500.txt`): one prompt a line; metadata {"benchmark": "cc-500", "line"}."""
    return [BenchmarkPrompt(text, {"benchmark": "cc-500", "line": n})
            for n, text in _prompt_lines(Path(path), "CC-500")]


def read_abc6k(path: str | Path) -> list[BenchmarkPrompt]:
    """ABC-6K (`ABC-6K.txt`): one prompt a line; metadata {"benchmark": "abc-6k", "line"}."""
    return [BenchmarkPrompt(text, {"benchmark": "abc-6k", "line": n})
            for n, text in _prompt_lines(Path(path), "ABC-6K")]


def read_t2i_compbench(path: str | Path) -> list[BenchmarkPrompt]:
    """T2I-CompBench prompts from one `<category>_val.txt` or a folder of them.

    Args:
        path: a file named `<category>_val.txt` (category in COMPBENCH_CATEGORIES), or a
            folder holding one or more such files.

    Returns:
        The prompts, with metadata {"benchmark": "t2i-compbench", "category", "line"}.
    """
    path = Path(path)
    expected = (f"<category>_val.txt with category one of {', '.join(COMPBENCH_CATEGORIES)}, "
                "or a folder of them")
    if path.is_dir():
        files = [path / f"{c}_val.txt" for c in COMPBENCH_CATEGORIES
                 if (path / f"{c}_val.txt").exists()]
        if not files:
            raise ValueError(f"T2I-CompBench folder {path} has no prompt file; "
                             f"expected {expected}")
    else:
        files = [path]
    prompts = []
    for file in files:
        category = file.name[:-len("_val.txt")] if file.name.endswith("_val.txt") else None
        if category not in COMPBENCH_CATEGORIES:
            raise ValueError(f"T2I-CompBench file {file} is not named for a category; expected "
                             f"{expected}")
        prompts += [BenchmarkPrompt(text, {"benchmark": "t2i-compbench", "category": category,
                                           "line": n})
                    for n, text in _prompt_lines(file, "T2I-CompBench")]
    return prompts


def read_coco_nss1k(path: str | Path) -> list[BenchmarkPrompt]:
    """COCO-NSS1K prompts from one of its JSON files or its `data/` folder.

    Args:
        path: a JSON file (a list of COCO entries with "captions"), or a folder holding one
            or more of the category files NSS_FILES names.

    Returns:
        The prompts, with metadata {"benchmark": "coco-nss1k", "category", "index", "coco"}.
    """
    path = Path(path)
    if path.is_dir():
        files = [path / name for name in NSS_FILES if (path / name).exists()]
        if not files:
            raise ValueError(f"COCO-NSS1K folder {path} has none of {', '.join(NSS_FILES)}; "
                             "expected LayoutLLM-T2I's data/ folder, or pass one JSON file "
                             "(five_category.json holds the whole set)")
    else:
        files = [path]
    prompts = []
    for file in files:
        entries = _load_json(file, "COCO-NSS1K", NSS)
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"COCO-NSS1K file {file} holds no list of entries; expected {NSS}")
        for i, entry in enumerate(entries):
            text = entry.get("captions") if isinstance(entry, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"COCO-NSS1K file {file} entry {i} has no \"captions\" text; "
                                 f"expected {NSS}")
            prompts.append(BenchmarkPrompt(text.strip(), {
                "benchmark": "coco-nss1k", "category": NSS_FILES.get(file.name), "index": i,
                "coco": entry}))
    return prompts


def read_geneval(path: str | Path) -> list[BenchmarkPrompt]:
    """GenEval's `evaluation_metadata.jsonl`: one JSON object a line with "tag" and "prompt".

    Returns:
        The prompts, with metadata {"benchmark": "geneval", "geneval": the line's object}.
    """
    path = Path(path)
    prompts = []
    for n, line in enumerate(_read_text(path, "GenEval", GENEVAL).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"GenEval file {path} line {n} is not JSON ({err.msg}); expected "
                             f"{GENEVAL}") from None
        if not isinstance(item, dict):
            raise ValueError(f"GenEval file {path} line {n} is not a JSON object; expected "
                             f"{GENEVAL}")
        for key in ("prompt", "tag"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ValueError(f"GenEval file {path} line {n} has no \"{key}\" text; "
                                 f"expected {GENEVAL}")
        prompts.append(BenchmarkPrompt(item["prompt"].strip(),
                                       {"benchmark": "geneval", "geneval": item}))
    if not prompts:
        raise ValueError(f"GenEval file {path} has no prompts; expected {GENEVAL}")
    return prompts


def _read_text(path: Path, what: str, expected: str) -> str:
    """The file's text; ValueError if it is missing, unreadable or not UTF-8 (naming the line)."""
    if not path.exists():
        raise ValueError(f"{what} file {path} does not exist; expected {expected}")
    if not path.is_file():
        raise ValueError(f"{what} file {path} is not a file; expected {expected}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {what} file {path} ({err.strerror or err}); expected "
                         f"{expected}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{what} file {path} line {line} is not UTF-8 (byte {err.start}); "
                         f"expected {expected}") from None


def _prompt_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped prompt) for each non-blank line; ValueError if there are none."""
    text = _read_text(path, what, LINES)
    lines = [(n, line.strip()) for n, line in enumerate(text.split("\n"), start=1)
             if line.strip()]
    if not lines:
        raise ValueError(f"{what} file {path} has no prompts; expected {LINES}")
    return lines


def _load_json(path: Path, what: str, expected: str):
    try:
        return json.loads(_read_text(path, what, expected))
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} file {path} line {err.lineno} is not JSON ({err.msg}); "
                         f"expected {expected}") from None


# ------------------------------------------------------------------------------ GenEval layout

PROMPT_FOLDER = re.compile(r"\d{5}")


def check_geneval_out(out: str | Path, overwrite: bool = False) -> Path:
    """Check that `out` can receive a GenEval layout: new or empty, or `overwrite` given.

    Returns:
        `out`, resolved. Raises ValueError for a file, a non-empty folder without
        `overwrite`, or a place no file can be written.
    """
    return _check_layout_out(out, overwrite, "GenEval", "prompt folders")


def _check_layout_out(out: str | Path, overwrite: bool, what: str, replaced: str) -> Path:
    out = check_output_folder(out, [], overwrite=True)  # a folder, and writable
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{what} folder {out} is not empty; pass --overwrite to replace its "
                         f"{replaced}, or choose a new folder")
    return out


def write_geneval_layout(folder: str | Path, out: str | Path, overwrite: bool = False) -> int:
    """Lay a `dpt generate --benchmark geneval` folder out as GenEval's evaluator reads it.

    Writes `out/<p:05d>/metadata.jsonl` (prompt p's GenEval object, one line) and
    `out/<p:05d>/samples/<k:04d>.png` (its images in run order), p counting the prompts in
    file order. PNGs are hard links where the file system allows, copies elsewhere. The
    layout is staged beside `out` and moved in at the end; `overwrite` first removes the
    prompt folders (five-digit names) already in `out`, and leaves its other files.

    Args:
        folder: a folder `dpt generate` wrote, each index record with "benchmark" metadata
            from `read_geneval`.
        out: the layout's folder (new, empty, or replaced with `overwrite`).

    Returns:
        The number of prompt folders written.
    """
    folder = Path(folder)
    prompts: dict[int, tuple[dict, list[Path]]] = {}
    records = read_index(folder, required=("file", "prompt_index", "benchmark"))
    for n, record in enumerate(records, start=1):
        meta, p = record["benchmark"], record["prompt_index"]
        if not (isinstance(meta, dict) and isinstance(meta.get("geneval"), dict)
                and isinstance(p, int) and p >= 0):
            raise ValueError(f"{folder / INDEX} record {n} has no GenEval metadata; expected a "
                             "folder written by `dpt generate --benchmark geneval`")
        image = folder / str(record["file"])
        if not image.is_file():
            raise ValueError(f"{folder / INDEX} record {n} names {image.name}, which is missing; "
                             "expected the images the index names")
        prompts.setdefault(p, (meta["geneval"], []))[1].append(image)
    out = check_geneval_out(out, overwrite)
    with staging_folder(out) as stage:
        for p, (item, files) in sorted(prompts.items()):
            samples = stage / f"{p:05d}" / "samples"
            samples.mkdir(parents=True)
            (stage / f"{p:05d}" / "metadata.jsonl").write_text(json.dumps(item) + "\n",
                                                               encoding="utf-8")
            for k, file in enumerate(files):
                _link_or_copy(file, samples / f"{k:04d}.png")
        _move_in(stage, out)
    return len(prompts)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _move_in(stage: Path, out: Path) -> None:
    """Move the staged prompt folders into `out`, replacing prompt folders already there."""
    if not out.exists():
        os.replace(stage, out)
        return
    for old in out.iterdir():
        if old.is_dir() and PROMPT_FOLDER.fullmatch(old.name):
            shutil.rmtree(old)
    for new in sorted(stage.iterdir()):
        os.replace(new, out / new.name)


# ------------------------------------------------------------------------ T2I-CompBench layout

COMPBENCH_SAMPLES = "samples"
COMPBENCH_IMAGES_PER_PROMPT = 10  # 3_in_1_eval/3_in_1.py: `num=10` images for each prompt
NAME_BYTES = 255                  # the longest file name ext4, XFS, APFS and NTFS take


def compbench_file_name(prompt: str, count: int) -> str:
    """Image `count` of the run (over all prompts), named as T2I-CompBench's generator does."""
    return f"{prompt}_{count:06}.png"


def check_compbench_prompts(prompts: list[BenchmarkPrompt], num_images: int) -> None:
    """Refuse a T2I-CompBench run whose layout its evaluators would misread.

    Args:
        prompts: from `read_t2i_compbench`, one category's.
        num_images: images per prompt.

    Raises:
        ValueError: prompts of several categories (each evaluator scores one category's
            `samples/` folder), a prompt the file-name parsing breaks on, or a complex run
            of other than COMPBENCH_IMAGES_PER_PROMPT images a prompt.
    """
    categories = sorted({p.metadata.get("category") for p in prompts}, key=str)
    if not prompts or any(p.metadata.get("benchmark") != "t2i-compbench" for p in prompts):
        raise ValueError("the T2I-CompBench layout needs T2I-CompBench prompts; expected "
                         "--benchmark t2i-compbench")
    if len(categories) > 1:
        raise ValueError(f"the T2I-CompBench layout holds one category, as its evaluators score "
                         f"one samples/ folder at a time; these prompts are of "
                         f"{', '.join(map(str, categories))}: pass one <category>_val.txt")
    for p in prompts:
        problem = _name_problem(p.text)
        if problem is not None:
            raise ValueError(f"T2I-CompBench {p.metadata.get('category')} line "
                             f"{p.metadata.get('line')}: prompt {quote(p.text)} {problem}")
    if categories == ["complex"] and num_images != COMPBENCH_IMAGES_PER_PROMPT:
        raise ValueError(f"complex_val.txt needs {COMPBENCH_IMAGES_PER_PROMPT} images a prompt, "
                         f"got {num_images}: T2I-CompBench's 3-in-1 evaluator takes images "
                         f"{COMPBENCH_IMAGES_PER_PROMPT} k .. {COMPBENCH_IMAGES_PER_PROMPT} k + "
                         f"{COMPBENCH_IMAGES_PER_PROMPT - 1} as line k's; pass --num-images "
                         f"{COMPBENCH_IMAGES_PER_PROMPT}")


def _name_problem(prompt: str) -> str | None:
    """Why `<prompt>_000000.png` cannot carry `prompt` to the evaluators (None if it can)."""
    if "_" in prompt:
        return "holds '_'; the evaluators read the prompt as the file name up to its first '_'"
    if "/" in prompt or "\0" in prompt:
        return "holds '/' or NUL, which no file name can"
    if ".png" in prompt:
        return "holds '.png'; numeracy_eval.py cuts the file name at its first '.png'"
    size = len(compbench_file_name(prompt, 0).encode("utf-8"))
    if size > NAME_BYTES:
        return f"makes a file name of {size} bytes; at most {NAME_BYTES} fit"
    return None


def check_compbench_out(out: str | Path, overwrite: bool = False) -> Path:
    """Check that `out` can receive a T2I-CompBench layout: new or empty, or `overwrite` given.

    Returns:
        `out`, resolved. Raises ValueError as `check_geneval_out` does.
    """
    return _check_layout_out(out, overwrite, "T2I-CompBench", f"{COMPBENCH_SAMPLES}/ folder")


def write_compbench_layout(folder: str | Path, out: str | Path, overwrite: bool = False) -> int:
    """Lay a `dpt generate --benchmark t2i-compbench` folder out as T2I-CompBench's evaluators
    read it: `out/samples/<prompt>_<k:06d>.png`, k counting the run's images (the index order).

    PNGs are hard links where the file system allows, copies elsewhere. The layout is staged
    beside `out` and moved in at the end; `overwrite` first removes `out/samples/` and leaves
    the rest (the evaluators' own result folders, which their next run rewrites).

    Args:
        folder: a folder `dpt generate` wrote from one `<category>_val.txt`.
        out: the layout's folder (new, empty, or replaced with `overwrite`): the `--outpath`
            / `--out_dir` to give the evaluators.

    Returns:
        The number of images laid out. Raises ValueError for a folder of other prompts, and
        as `check_compbench_prompts` for a run the evaluators would misread.
    """
    folder = Path(folder)
    records = read_index(folder, required=("file", "prompt", "prompt_index", "benchmark"))
    prompts: dict[int, BenchmarkPrompt] = {}
    for n, record in enumerate(records, start=1):
        meta = record["benchmark"]
        if not isinstance(meta, dict) or meta.get("benchmark") != "t2i-compbench":
            raise ValueError(f"{folder / INDEX} record {n} has no T2I-CompBench metadata; "
                             "expected a folder written by `dpt generate --benchmark "
                             "t2i-compbench`")
        if not (folder / str(record["file"])).is_file():
            raise ValueError(f"{folder / INDEX} record {n} names {record['file']}, which is "
                             "missing; expected the images the index names")
        prompts.setdefault(record["prompt_index"], BenchmarkPrompt(str(record["prompt"]), meta))
    counts = set(Counter(r["prompt_index"] for r in records).values())
    if len(counts) != 1:
        raise ValueError(f"{folder / INDEX} holds {sorted(counts)} images for different "
                         "prompts; expected the same number for every prompt, as `dpt "
                         "generate` makes")
    check_compbench_prompts(list(prompts.values()), counts.pop())
    out = check_compbench_out(out, overwrite)
    with staging_folder(out) as stage:
        (stage / COMPBENCH_SAMPLES).mkdir()
        for k, record in enumerate(records):
            _link_or_copy(folder / str(record["file"]),
                          stage / COMPBENCH_SAMPLES / compbench_file_name(record["prompt"], k))
        if not out.exists():
            os.replace(stage, out)
        else:
            shutil.rmtree(out / COMPBENCH_SAMPLES, ignore_errors=True)
            os.replace(stage / COMPBENCH_SAMPLES, out / COMPBENCH_SAMPLES)
    return len(records)
