"""`dpt score`: DPT's matching score s(z, y) of image files against texts.

Every image is scored against every text (`--prompt`, repeatable, or `--prompts-file`): the
image is encoded by the VAE, noised once to `--timestep` with noise from `--seed` (the same
file and settings always give the same number), and read by the DPT U-Net up to the
adapter's block, as `dpt evaluate-disc` reads images. A score is a cosine in [-1, 1]; higher
is a better match. Rank your own generations, or candidate captions of one image. Prints a
table (the best text of each image starred), or one JSON object with `--json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..eval.image_scores import ScoreSettings, format_scores, score_images
from .model_args import (add_device_argument, add_model_argument, add_threads_argument,
                         model_folder, quiet_loading, set_threads)
from .prompt_input import add_prompt_arguments, read_prompts


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="DPT's matching score of images against texts",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                   help="PNG or JPEG files (squashed to the model's resolution)")
    add_prompt_arguments(p)
    p.add_argument("--dpt", type=Path, default=None, metavar="PATH",
                   help="a DPT folder with an adapter (default: the shipped DPT weights on the "
                        "shipped model)")
    add_model_argument(p)
    p.add_argument("--timestep", type=int, default=ScoreSettings.timestep, metavar="T",
                   help=f"noise level the U-Net sees (default {ScoreSettings.timestep}, as "
                        "evaluate-disc)")
    p.add_argument("--seed", type=int, default=ScoreSettings.seed, metavar="S",
                   help=f"seed of the noise added to every image (default {ScoreSettings.seed})")
    add_device_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_threads_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    texts = read_prompts(args)
    settings = ScoreSettings(model=model_folder(args.model), dpt=args.dpt,
                             timestep=args.timestep, seed=args.seed, device=args.device)
    settings.dpt_folder()  # a one-line error before the model loads
    quiet_loading()
    result = score_images(settings, args.images, texts)
    print(json.dumps(result) if args.json else format_scores(result))
    return 0
