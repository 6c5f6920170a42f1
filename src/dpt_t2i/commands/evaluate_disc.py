"""`dpt evaluate-disc`: how well a DPT model discriminates, as in the paper's Table 3.

Image-text matching: one positive and three hard negatives (chance 0.25), image-to-text,
text-to-image and overall (their mean). Referring expressions: accuracy at IoU >= 0.5 per
split. On the Shapes world (default) both run on fresh ID and OOD scenes; with COCO captions
and/or RefCOCO files they run on those (`--refcoco-splits`, default val,testA,testB).
Every image is noised once to `--timestep` with seeded noise before the U-Net reads it.

`--method` picks the scorer: `dpt` (default; the adapter of `--dpt`'s folder, by default the
shipped Shapes DPT weights on the shipped model), `clip` (the Shapes CLIP zero-shot, or
`--clip-model PATH`: cosine of image and text embeddings) or `diffusion-itm` (the U-Net's
denoising error over `--itm-timesteps`, zero-shot; with `--dpt` a LoRA folder such as `dpt
tune-hn-itm`'s final/, which gives HN-DiffusionITM) or `shapes-referee` (the Shapes referee's
match logit, `--referee PATH` or the shipped one: text attending over image patches, the
world's analogue of BLIP-2's ITM head; Shapes world only, no model is loaded). The
baselines score ITM only. The result names how many U-Net evaluations one pair costs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..eval.disc_run import (METHODS, TIMESTEPS_EXPECTED, DiscSettings, format_tables,
                             run_discriminative)
from ..eval.zero_shot import run_shapes_referee
from ..generation.methods import shipped_dpt
from ..io.bundle import default_model_path
from ..io.shapes_referee import default_shapes_referee_path
from .model_args import (add_device_argument, add_model_argument, add_threads_argument,
                         model_folder, quiet_loading, set_threads)

DEFAULT = DiscSettings  # the flags' defaults and the help texts read its fields
REFEREE = "shapes-referee"  # scored here, without a model bundle (see _referee)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-disc", help="image-text matching and referring-expression "
                       "accuracy of a DPT model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=(*METHODS, REFEREE), default=DEFAULT.method,
                   help=f"scorer (default {DEFAULT.method}; see above)")
    p.add_argument("--dpt", type=Path, default=None, metavar="PATH",
                   help="a DPT folder (a probe or tune run's final/) for --method dpt (default: "
                        "the shipped Shapes DPT weights on the shipped model; needed on other "
                        "models), optional LoRA for diffusion-itm")
    p.add_argument("--clip-model", type=Path, default=None, metavar="PATH",
                   help="--method clip: a transformers CLIP folder (default: the Shapes CLIP)")
    p.add_argument("--referee", type=Path, default=None, metavar="PATH",
                   help=f"--method {REFEREE}: a referee folder (`dpt world train-referee`'s "
                        "final/; default: the shipped Shapes referee)")
    steps = DEFAULT.itm_timesteps
    p.add_argument("--itm-timesteps", default=",".join(map(str, steps)),
                   metavar="T,T,...", help="--method diffusion-itm: the timesteps whose "
                   "denoising errors are averaged "
                   f"(default {steps[0]},{steps[1]},...,{steps[-1]})")
    add_model_argument(p)
    p.add_argument("--timestep", type=int, default=DEFAULT.timestep,
                   help=f"noise level t the U-Net sees (default {DEFAULT.timestep})")
    p.add_argument("--n-itm", type=int, default=DEFAULT.n_itm,
                   help=f"ITM items per split (default {DEFAULT.n_itm})")
    p.add_argument("--n-rec", type=int, default=DEFAULT.n_rec,
                   help=f"REC items per split (default {DEFAULT.n_rec})")
    p.add_argument("--seed", type=int, default=DEFAULT.seed,
                   help=f"evaluation stream and noise seed (default {DEFAULT.seed}; training "
                        "uses 0)")
    add_device_argument(p, runs=f"the model runs (not --method {REFEREE}, which runs on the "
                                "CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys itm, rec)")
    _data_arguments(p)
    add_threads_argument(p)
    p.set_defaults(run=run)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("real data (default: the Shapes world)")
    data.add_argument("--coco-captions", type=Path, metavar="JSON")
    data.add_argument("--coco-images", type=Path, metavar="DIR")
    data.add_argument("--refcoco-refs", type=Path, metavar="PICKLE")
    data.add_argument("--refcoco-instances", type=Path, metavar="JSON")
    data.add_argument("--refcoco-images", type=Path, metavar="DIR",
                      help="image folder of the refs (default --coco-images)")
    data.add_argument("--refcoco-splits", default=",".join(DEFAULT.refcoco_splits))
    data.add_argument("--resolution", type=int, default=None,
                      help="image side fed to the VAE (default: the U-Net's sample size x 8)")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.method == REFEREE:
        result = run_shapes_referee(_referee(args), args.n_itm, args.seed)
        print(json.dumps(result) if args.json else format_tables(result))
        return 0
    if args.referee is not None:
        raise ValueError(f"--referee is read by --method {REFEREE} only")
    settings = _settings(args)
    quiet_loading()
    result = run_discriminative(settings)
    print(json.dumps(result) if args.json else format_tables(result))
    return 0


def _referee(args: argparse.Namespace) -> Path:
    """The referee folder of --method shapes-referee, once the flags it ignores are refused."""
    ignored = [flag for flag, value in (
        ("--dpt", args.dpt), ("--clip-model", args.clip_model), ("--model", args.model),
        ("--coco-captions", args.coco_captions), ("--coco-images", args.coco_images),
        ("--refcoco-refs", args.refcoco_refs)) if value is not None]
    if ignored:
        raise ValueError(f"--method {REFEREE} scores the Shapes world's renders alone; drop "
                         f"{', '.join(ignored)}")
    if args.device != "cpu":
        raise ValueError(f"--method {REFEREE} (a small model) runs on the CPU; drop --device")
    if args.n_itm <= 0:
        raise ValueError(f"--method {REFEREE} scores image-text matching only; --n-itm must "
                         "be > 0")
    return args.referee or default_shapes_referee_path()


def _settings(args: argparse.Namespace) -> DiscSettings:
    """The run's settings; DiscSettings checks the flags before the model folder is read."""
    model = args.model or default_model_path()
    dpt = args.dpt
    if dpt is None and args.method == "dpt":  # as `dpt generate`: the shipped model's own DPT
        dpt = shipped_dpt(model)
    flags = DiscSettings(
        method=args.method, dpt=dpt, clip_model=args.clip_model,
        itm_timesteps=_timesteps(args.itm_timesteps), model=model,
        timestep=args.timestep, n_itm=args.n_itm, n_rec=args.n_rec, seed=args.seed,
        coco_captions=args.coco_captions, coco_images=args.coco_images,
        refcoco_refs=args.refcoco_refs, refcoco_instances=args.refcoco_instances,
        refcoco_images=args.refcoco_images,
        refcoco_splits=tuple(s for s in args.refcoco_splits.split(",") if s),
        resolution=args.resolution, device=args.device)
    return replace(flags, model=model_folder(args.model))


def _timesteps(text: str) -> tuple[int, ...]:
    """The whole numbers of "T,T,..." (DiscSettings checks their range)."""
    try:
        steps = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        steps = ()
    if not steps:
        raise ValueError(f"{TIMESTEPS_EXPECTED}, got {text!r}")
    return steps
