"""`dpt compbench-table`: T2I-CompBench scores as the paper's Table 1, beside its numbers.

    dpt compbench-table compbench/base compbench/dpt compbench/dpt-sc

Each RUN is a folder of `<category>/` layout folders (`dpt generate --compbench-out
RUN/<category>`) that T2I-CompBench's evaluators have scored; the table reads their result
files (BLIP-VQA for color, shape and texture, UniDet for spatial, CLIPScore for
non_spatial, 3-in-1 for complex: data/compbench_results.py) and prints each mean x 100,
one row a run under the paper's rows for SD-2.1, DPT and DPT + SC (arXiv 2403.04321,
Table 1). "-" marks a category without a result file, or a published figure not recorded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.compbench_results import PUBLISHED, TABLE1, read_run

HEADER = {"color": "Color", "shape": "Shape", "texture": "Texture", "spatial": "Spatial",
          "non_spatial": "Non-spatial", "complex": "Complex"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compbench-table", help="T2I-CompBench results as the paper's Table 1",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="a folder of <category>/ folders the evaluators scored; its name labels "
                        "its row")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: {row: {category: score x 100 or null}}")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rows: dict[str, dict[str, float | None]] = {k: dict(v) for k, v in PUBLISHED.items()}
    images: dict[str, dict[str, int]] = {}
    for folder in args.runs:
        scores = read_run(folder)
        label = _label(folder, rows)
        rows[label] = {c: None if s is None else s[0] for c, s in scores.items()}
        images[label] = {c: s[1] for c, s in scores.items() if s is not None}
    if args.json:
        print(json.dumps({"scores": rows, "images": images}))
    else:
        print(table(rows))
    return 0


def table(rows: dict[str, dict[str, float | None]]) -> str:
    """A markdown table: one row a method, one column a Table 1 category, scores x 100."""
    lines = ["| method | " + " | ".join(HEADER[c] for c in TABLE1) + " |",
             "|---|" + "---|" * len(TABLE1)]
    for name, scores in rows.items():
        cells = ["-" if scores.get(c) is None else f"{scores[c]:.1f}" for c in TABLE1]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(folder: Path, taken: dict) -> str:
    """The run's row name: its folder's name, made unique with its parent where needed."""
    folder = folder.expanduser().resolve()
    label = folder.name or str(folder)
    if label in taken:
        label = f"{folder.parent.name}/{folder.name}"
    n = 2
    while label in taken:
        label, n = f"{folder.name} ({n})", n + 1
    return label
