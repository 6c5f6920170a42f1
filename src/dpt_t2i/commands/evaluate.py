"""`dpt evaluate DIR...`: judge generated Shapes images against their prompts, one row per
folder and split, with the accuracy per family.

Each folder is judged on its own (`--pool` adds rows over all folders' images together, e.g.
several seeds of one method). `--paired` compares each folder with the first on the images
they share (same prompt and seed): the difference of accuracies per family and overall, with
a 95% bootstrap interval over prompts (`eval/paired.py`). Images the Shapes judge cannot read, a prompt outside the
Shapes grammar or a PNG that cannot be decoded, are counted and skipped with a note naming
the first of each kind; the evaluation stops only when no image at all is left.

With --clip-model, --inception-weights or --fid-reference it also measures CLIPScore, IS and
FID through torchmetrics from local weights; images whose prompts are not Shapes prompts are
then measured too, in their folder's row "other" (no judge).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..eval.alignment import (FolderJudgement, format_folder_tables, judge_images, load_rgb,
                              read_folders, summarize)
from ..eval.metrics import MetricModels, image_metrics, load_metric_models
from ..eval.paired import format_paired, paired_difference
from ..eval.quality import quality_by_split
from ..io.clip import load_clip
from ..io.image_folder import INDEX
from .model_args import add_threads_argument, set_threads

POOLED = "all folders"  # the --pool rows' folder label


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="alignment accuracy of generated Shapes images",
                        description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("folders", type=Path, nargs="+", metavar="DIR",
                    help="folders with index.jsonl as `dpt generate` writes them")
    ev.add_argument("--json", action="store_true",
                    help="print one JSON object instead of a table: folders ({folder: {split: "
                         "row}}), skipped ({folder: [image, ...]}), with --pool pooled, with "
                         "--paired paired")
    ev.add_argument("--pool", action="store_true",
                    help="also one row per split over the images of all folders together")
    ev.add_argument("--paired", action="store_true",
                    help="also each folder's paired difference against the first folder "
                         "(images with the same prompt and seed), with bootstrap intervals")
    ev.add_argument("--quality", action="store_true",
                    help="also measure image quality: the Fréchet distance, in the Shapes CLIP "
                         "image space, to clean renders of the same prompts (lower is better)")
    ev.add_argument("--verdicts", type=Path, default=None, metavar="FILE",
                    help="also write every judged image's verdict to FILE (JSON lines)")
    add_threads_argument(ev)
    metrics = ev.add_argument_group(
        "standard metrics", "torchmetrics (pip install 'dpt-t2i[metrics]'), local weights only; "
        "images need not have Shapes prompts (other prompts get a row of their own)")
    metrics.add_argument("--clip-model", type=Path, default=None, metavar="PATH",
                         help="CLIPScore (100 x cosine, mean per row) with the local "
                              "transformers CLIP folder PATH (model and processor files)")
    metrics.add_argument("--inception-weights", type=Path, default=None, metavar="PATH",
                         help="Inception Score with torch-fidelity's Inception-v3 weights file "
                              "PATH (weights-inception-2015-12-05-6726825d.pth)")
    metrics.add_argument("--fid-reference", type=Path, default=None, metavar="DIR",
                         help="FID against the PNG/JPG images in DIR (needs "
                              "--inception-weights)")
    ev.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    folders = list(dict.fromkeys(args.folders))  # a folder named twice is judged once
    if args.paired and len(folders) < 2:
        raise ValueError("--paired needs two or more folders: each is compared with the first")
    for folder in folders:
        if not (folder / INDEX).is_file():
            raise ValueError(f"{folder} has no {INDEX}; expected a folder written by "
                             "`dpt generate`")
    judgements = read_folders(folders)  # every index is checked before any image is judged
    _check_verdicts_file(args.verdicts, judgements)
    models = None
    if args.clip_model or args.inception_weights or args.fid_reference:
        models = load_metric_models(args.clip_model, args.inception_weights, args.fid_reference)
    judge_images(judgements)
    others = {j.folder: _measurable_others(j) for j in judgements} if models else {}
    _check_something_left(judgements, others)
    _print_notes(judgements, others)
    result = _result(judgements, others, args, models)
    if args.verdicts is not None:
        _write_verdicts(args.verdicts, [v for j in judgements for v in j.verdicts])
    print(json.dumps(result) if args.json else _markdown(result))
    return 0


def _measurable_others(judgement: FolderJudgement) -> list[dict]:
    """The images the judge skipped for their prompts that the standard metrics can measure:
    taken out of `judgement.skipped`; those that cannot be read stay there (kind "image")."""
    others, skipped = [], []
    for record in judgement.skipped:
        image, why = (None, "") if record["skip"] != "prompt" else \
            load_rgb(judgement.folder / record["file"])
        if image is not None:
            others.append(record)
        else:
            skipped.append(record if not why else {**record, "skip": "image", "why": why})
    judgement.skipped = skipped
    return others


def _print_notes(judgements: list[FolderJudgement], others: dict) -> None:
    """One note a folder for the images skipped, one for those measured without the judge."""
    for j in judgements:
        note = j.skip_note()
        if note:
            print(f"dpt evaluate: note: {j.folder}: {note}", file=sys.stderr)
        if others.get(j.folder):
            print(f"dpt evaluate: note: {j.folder}: {len(others[j.folder])} images have prompts "
                  f"that are not Shapes prompts (first: {others[j.folder][0]['why']}); the "
                  "Shapes judge skips them, the standard metrics measure them in the row "
                  "'other'", file=sys.stderr)


def _check_something_left(judgements: list[FolderJudgement], others: dict) -> None:
    """ValueError naming every folder's skips when no folder has an image left to report."""
    if any(j.verdicts for j in judgements) or any(others.values()):
        return
    notes = [f"{j.folder}: {j.skip_note() or 'its index lists no images'}" for j in judgements]
    raise ValueError("no image could be judged: " + "; ".join(notes))


def _result(judgements: list[FolderJudgement], others: dict, args: argparse.Namespace,
            models: MetricModels | None) -> dict:
    """{"folders": {folder: {split: row}}, "skipped": {folder: [...]}, "pooled": ...}."""
    clip = load_clip() if args.quality and any(j.verdicts for j in judgements) else None
    result = {"folders": {}, "skipped": {}}
    for j in judgements:
        result["folders"][str(j.folder)] = _rows(j.verdicts, others.get(j.folder, []), clip,
                                                 models)
        if j.skipped:
            result["skipped"][str(j.folder)] = [
                {k: s[k] for k in ("file", "prompt", "skip", "why")} for s in j.skipped]
    if args.paired:
        first = judgements[0].verdicts
        result["paired"] = {"against": str(judgements[0].folder), "folders": {
            str(j.folder): paired_difference(first, j.verdicts) for j in judgements[1:]}}
    if args.pool:
        result["pooled"] = _rows([v for j in judgements for v in j.verdicts],
                                 [r for rs in others.values() for r in rs], clip, models)
    return result


def _rows(verdicts: list[dict], others: list[dict], clip,
          models: MetricModels | None) -> dict[str, dict]:
    """{split: row} of judged images, plus "other" (images of other prompts) when measured.

    Args:
        verdicts: judged images (`alignment.judge_images`).
        others: records of readable images whose prompts are not Shapes prompts.
        clip: the Shapes CLIP for --quality's Fréchet distance, or None for no distance.
        models: the standard metrics' models, or None.
    """
    rows = summarize(verdicts)
    if clip is not None and verdicts:
        for split, fd in quality_by_split(verdicts, clip).items():
            rows[split]["fd"] = fd
    if models is not None:
        groups = {split: [v for v in verdicts if v["split"] == split] for split in rows}
        if others:
            groups["other"] = others
            rows["other"] = {"n": len(others)}
        for name, row in image_metrics(groups, models).items():
            rows[name].update(row)
    return rows


def _markdown(result: dict) -> str:
    tables = dict(result["folders"])
    if "pooled" in result:
        tables[POOLED] = result["pooled"]
    text = format_folder_tables(tables)
    if "paired" in result:
        text += "\n\n" + format_paired(result["paired"]["folders"], result["paired"]["against"])
    return text


def _check_verdicts_file(path: Path | None, judgements: list[FolderJudgement]) -> None:
    """Before any image is judged: --verdicts names a file that can be created and that is
    none of the files being evaluated."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"--verdicts {path} is a folder; expected a file name to write")
    if not path.resolve().parent.is_dir():
        raise ValueError(f"--verdicts {path}: folder {path.resolve().parent} does not exist")
    inputs = {(j.folder / INDEX).resolve() for j in judgements}
    inputs |= {(j.folder / r["file"]).resolve() for j in judgements
               for r in [r for r, _ in j.pending] + j.skipped}
    if path.resolve() in inputs:
        raise ValueError(f"--verdicts {path} is one of the files being evaluated; choose "
                         "another file")


def _write_verdicts(path: Path, verdicts: list[dict]) -> None:
    """Write the verdicts as JSON lines, replacing `path` whole (a temporary file renamed)."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text("".join(json.dumps(v) + "\n" for v in verdicts), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write --verdicts {path} ({err.strerror or err})") from None
