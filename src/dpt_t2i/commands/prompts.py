"""`dpt prompts`: write the Shapes benchmark prompts of a split, one a line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.shapes.splits import benchmark_prompts


def register(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("prompts", help="the Shapes benchmark prompt list of a split",
                        description=__doc__)
    pr.add_argument("--split", choices=["id", "ood"], required=True,
                    help="id: no held-out combination; ood: each names one held out of training")
    pr.add_argument("--per-family", type=int, default=20, metavar="N",
                    help="distinct prompts per family (fewer where the split has fewer)")
    pr.add_argument("--seed", type=int, default=0, help="which fixed list (default 0)")
    pr.add_argument("--out", type=Path, default=None, metavar="FILE", help="default: stdout")
    pr.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.per_family <= 0:
        raise ValueError(f"--per-family must be a positive whole number, got {args.per_family}")
    prompts = benchmark_prompts(args.split, args.per_family, args.seed)
    text = "".join(p.text + "\n" for p in prompts)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0
