"""The referee comparison table: per-family Shapes alignment and FD of image folders.

Each NAME=DIR is a `dpt generate` or `dpt referee` folder; each is judged on its own by
`dpt evaluate DIR --json --quality` and becomes one row (split by split). The last column is
the referee's own verdict: the mean DPT matching score (`referee.dpt_scorer`, the shipped DPT
weights, t = 100, noise seeded alike for every folder) of the images against their prompts,
so a method that fools the referee shows a high score beside a low judged alignment.

    python bench/referee_table.py base=runs/ref/base dpt=runs/ref/dpt referee=runs/ref/referee
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import torch

from dpt_t2i.cli import main as dpt

FAMILIES = ("object", "pair", "spatial", "counting", "mixed")


def main(argv: list[str]) -> None:
    if not argv or any("=" not in a for a in argv):
        sys.exit(__doc__)
    rows: dict[str, list[str]] = {}
    score = _dpt_score()
    for arg in argv:
        name, folder = arg.split("=", 1)
        s = score(Path(folder))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if dpt(["evaluate", folder, "--json", "--quality"]) != 0:
                sys.exit(f"dpt evaluate {folder} failed")
        for split, r in json.loads(out.getvalue()).items():
            cells = [f"{r[f]:.2f}" for f in FAMILIES] + [f"{r['overall']:.3f}",
                                                         f"{r['fd']:.2f}", str(r["n"]),
                                                         f"{s:.3f}"]
            rows.setdefault(split, []).append(f"| {name} | " + " | ".join(cells) + " |")
    for split, lines in rows.items():
        print(f"\n{split.upper()} prompts:\n")
        print("| method | " + " | ".join(FAMILIES) + " | overall | FD | images | DPT score |")
        print("|---" * (len(FAMILIES) + 5) + "|")
        print("\n".join(lines))


def _dpt_score():
    """folder -> the mean DPT matching score of its images against their prompts."""
    import numpy as np
    from PIL import Image

    from dpt_t2i.data.samples import images_to_tensor
    from dpt_t2i.generation.referee import dpt_scorer
    from dpt_t2i.io.bundle import default_model_path, load_bundle
    from dpt_t2i.io.dpt_folder import default_dpt_path, load_for_sampling
    from dpt_t2i.io.image_folder import read_index

    bundle = load_bundle(default_model_path())
    heads, config = load_for_sampling(default_dpt_path(), bundle.unet)

    def score(folder: Path) -> float:
        scorer = dpt_scorer(bundle, heads, config, seed=0)
        records = read_index(folder)
        total = 0.0
        for start in range(0, len(records), 32):
            batch = records[start:start + 32]
            images = images_to_tensor([np.asarray(Image.open(folder / r["file"]).convert("RGB"))
                                       for r in batch])
            with torch.no_grad():
                total += float(scorer(images, [r["prompt"] for r in batch]).sum())
        return total / len(records)

    return score


if __name__ == "__main__":
    main(sys.argv[1:])
