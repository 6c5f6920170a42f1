"""Alignment and image quality against the self-correction strength eta (Fig. 4b's analogue).

For each eta (0 is DPT without correction) it generates the Shapes benchmark prompts of a
split through the generation registry, as `dpt generate` does (same seeds for every eta), judges them and measures the Fréchet
distance to renders, then writes `sweep.json` and `eta-sweep.png` (accuracy per family and
overall, against eta) into --out. A finished eta's folder is reused, so a stopped sweep
continues where it was.

    python bench/eta_sweep.py --out runs/eta-sweep [--dpt DIR] [--etas 0 0.05 0.1 0.2 0.4]
        [--range 300 700] [--split ood] [--num-images 4] [--seed 1000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpt_t2i.data.shapes.grammar import FAMILIES
from dpt_t2i.data.shapes.splits import benchmark_prompts
from dpt_t2i.eval.alignment import judge_folders, summarize
from dpt_t2i.eval.plots import line_chart
from dpt_t2i.eval.quality import quality_by_split
from dpt_t2i.generation.guidance import DEFAULT_MODE, DEFAULT_T_RANGE, DEFAULT_UNIT, MODES, UNITS
from dpt_t2i.generation.methods import FolderRun, choose_method, generate_folder
from dpt_t2i.io.bundle import check_model_folder, default_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dpt", type=Path, default=None, help="DPT folder (default: the shipped one)")
    parser.add_argument("--etas", type=float, nargs="+", default=[0, 0.05, 0.1, 0.2, 0.4],
                        help="in --unit (default: fractions of the noise level)")
    parser.add_argument("--range", type=float, nargs=2, default=list(DEFAULT_T_RANGE))
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    parser.add_argument("--unit", choices=UNITS, default=DEFAULT_UNIT)
    parser.add_argument("--split", default="ood")
    parser.add_argument("--num-images", type=int, default=4)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    model = check_model_folder(default_model_path())
    prompts = [p.text for p in benchmark_prompts(args.split)]
    results = {}
    for eta in args.etas:
        folder = args.out / f"eta-{eta:g}"
        if not (folder / "index.jsonl").is_file():
            spec = choose_method(model, dpt=args.dpt, eta=eta if eta > 0 else None,
                                 sc_range=tuple(args.range), sc_mode=args.mode,
                                 sc_unit=args.unit, self_correct=eta > 0)
            generate_folder(FolderRun(model, prompts, folder, spec, num_images=args.num_images,
                                      seed=args.seed))
        verdicts = judge_folders([folder])
        row = summarize(verdicts)[args.split]
        row["fd"] = quality_by_split(verdicts)[args.split]
        results[eta] = row
        print(f"eta {eta:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "n"),
              flush=True)
    (args.out / "sweep.json").write_text(json.dumps(
        {"settings": vars(args) | {"out": str(args.out)}, "results": results}, indent=1))
    series = {f: [results[e][f] for e in args.etas] for f in (*FAMILIES, "overall")}
    line_chart(args.out / "eta-sweep.png", f"self-correction strength, {args.split} prompts",
               args.etas, series, x_label="eta")
    print(f"wrote {args.out / 'sweep.json'} and {args.out / 'eta-sweep.png'}")


if __name__ == "__main__":
    main()
