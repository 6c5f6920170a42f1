"""An image grid of methods side by side: one row per prompt, one column per method folder.

Each folder is a `dpt generate` run over the same prompts and seeds; row r shows the image
that every folder made for the r-th chosen record (same prompt, same seed).

    python bench/method_grid.py --folders base=gen-base dpt=gen-dpt sc=gen-sc --out grid.png
        [--every 24] [--scale 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from dpt_t2i.io.image_folder import read_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", nargs="+", required=True, metavar="NAME=DIR")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=int, default=24, help="take every k-th record")
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()
    columns = dict(item.split("=", 1) for item in args.folders)
    indexes = {name: read_index(Path(folder), ("file", "prompt", "seed"))
               for name, folder in columns.items()}
    first = next(iter(indexes.values()))
    for name, records in indexes.items():
        if [(r["prompt"], r["seed"]) for r in records] != [(r["prompt"], r["seed"])
                                                            for r in first]:
            raise SystemExit(f"{name}: not the same prompts and seeds as the first folder")
    rows = list(range(0, len(first), args.every))
    size, label = 64 * args.scale, 260
    grid = Image.new("RGB", (label + size * len(columns), 20 + size * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        draw.text((label + c * size + 4, 4), name, fill="black")
    for r, k in enumerate(rows):
        draw.text((4, 20 + r * size + size // 2 - 6), first[k]["prompt"], fill="black")
        for c, (name, folder) in enumerate(columns.items()):
            image = Image.open(Path(folder) / indexes[name][k]["file"]).convert("RGB")
            grid.paste(image.resize((size, size), Image.NEAREST), (label + c * size, 20 + r * size))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}: {len(rows)} prompts x {len(columns)} methods")


if __name__ == "__main__":
    main()
