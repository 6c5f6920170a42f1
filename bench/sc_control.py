"""Is self-correction's gain the score's doing? A negative control.

Generates the Shapes benchmark prompts of a split with DPT + SC exactly as `dpt generate`
does (same seeds, same settings), except that the score steers each image towards *another*
prompt: prompt i of the split is corrected with the score of prompt i + 1 (the next one in
the list; the noise prediction still reads prompt i). If the control gains as much as the
real correction over the uncorrected images, the gain comes from moving the latent at all
(sharper, flatter shapes), not from what the score says about the prompt.

    python bench/sc_control.py --out runs/sc-control --dpt DIR --self-correct 10 [--seed 0]
    dpt evaluate runs/dpt runs/sc runs/sc-control --paired

The folder's index records the method as dpt+sc (it is made by the same code path);
CONTROL.md beside it says what it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpt_t2i.data.shapes.splits import benchmark_prompts
from dpt_t2i.generation import methods
from dpt_t2i.generation.guidance import (DEFAULT_ETA, DEFAULT_MODE, DEFAULT_T_RANGE, DEFAULT_UNIT,
                                         MODES, UNITS)
from dpt_t2i.generation.methods import FolderRun, Method, choose_method, generate_folder
from dpt_t2i.io.bundle import check_model_folder, default_model_path


class SteeredElsewhere(Method):
    """A Method whose self-correction reads the score of another prompt."""

    others: dict[str, str] = {}

    def model_fn(self, bundle, prompts):
        return super().model_fn(bundle, [self.others[p] for p in prompts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dpt", type=Path, default=None, help="DPT folder (default: shipped)")
    parser.add_argument("--self-correct", type=float, default=DEFAULT_ETA)
    parser.add_argument("--range", type=float, nargs=2, default=list(DEFAULT_T_RANGE))
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    parser.add_argument("--unit", choices=UNITS, default=DEFAULT_UNIT)
    parser.add_argument("--split", default="ood")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = check_model_folder(default_model_path())
    prompts = [p.text for p in benchmark_prompts(args.split)]
    SteeredElsewhere.others = {p: prompts[(i + 1) % len(prompts)] for i, p in enumerate(prompts)}
    real_load = methods.load_method

    def load_control(bundle, spec, run_prompts):
        method = real_load(bundle, spec, run_prompts)
        return SteeredElsewhere(**vars(method))

    methods.load_method = load_control
    spec = choose_method(model, dpt=args.dpt, eta=args.self_correct, sc_range=tuple(args.range),
                         sc_mode=args.mode, sc_unit=args.unit)
    generate_folder(FolderRun(model, prompts, args.out, spec, num_images=args.num_images,
                              seed=args.seed))
    (args.out / "CONTROL.md").write_text(
        "Negative control of self-correction (bench/sc_control.py): every image was corrected "
        "with the score of the next prompt of the split, not its own.\n")
    print(f"wrote the control images to {args.out}")


if __name__ == "__main__":
    main()
