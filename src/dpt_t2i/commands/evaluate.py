"""`dpt evaluate DIR`: judge generated Shapes images against their prompts, per family and split.

With --clip-model, --inception-weights or --fid-reference it also measures CLIPScore, IS and
FID through torchmetrics from local weights; folders whose prompts are not Shapes prompts are
then measured without the Shapes judge (one row per folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..eval.alignment import format_table, judge_folders, summarize, unjudged_folders
from ..eval.metrics import image_metrics, load_metric_models
from ..eval.quality import quality_by_split


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="alignment accuracy of generated Shapes images",
                        description=__doc__)
    ev.add_argument("folders", type=Path, nargs="+", metavar="DIR",
                    help="folders with index.jsonl as `dpt generate` writes them")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ev.add_argument("--quality", action="store_true",
                    help="also measure image quality: the Fréchet distance, in the Shapes CLIP "
                         "image space, to clean renders of the same prompts (lower is better)")
    ev.add_argument("--verdicts", type=Path, default=None, metavar="FILE",
                    help="also write every image's verdict to FILE (JSON lines)")
    metrics = ev.add_argument_group(
        "standard metrics", "torchmetrics (pip install 'dpt-t2i[metrics]'), local weights only; "
        "images need not have Shapes prompts (other folders get a row of their own)")
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
    for folder in args.folders:
        if not (folder / "index.jsonl").is_file():
            raise ValueError(f"{folder} has no index.jsonl; expected a folder written by "
                             "`dpt generate`")
    models, unjudged = None, {}
    if args.clip_model or args.inception_weights or args.fid_reference:
        models = load_metric_models(args.clip_model, args.inception_weights, args.fid_reference)
        unjudged = unjudged_folders(args.folders)
        for folder, (why, _) in unjudged.items():
            print(f"dpt evaluate: note: {folder}: {why}; the Shapes judge is skipped for this "
                  "folder", file=sys.stderr)
    judged = [folder for folder in args.folders if folder not in unjudged]
    verdicts = judge_folders(judged) if judged else []
    table = summarize(verdicts)
    if args.quality and verdicts:
        for split, fd in quality_by_split(verdicts).items():
            table[split]["fd"] = fd
    if models is not None:
        groups = {split: [v for v in verdicts if v["split"] == split] for split in table}
        groups.update({str(folder): records for folder, (_, records) in unjudged.items()})
        for name, row in image_metrics(groups, models).items():
            table.setdefault(name, {"n": len(groups[name])}).update(row)
    if args.verdicts is not None:
        args.verdicts.write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    print(json.dumps(table) if args.json else format_table(table))
    return 0
