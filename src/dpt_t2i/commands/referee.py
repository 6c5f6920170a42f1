"""`dpt referee`: images made without sampling, by optimising a latent until a discriminative
model (the referee) judges it a match, with score distillation from the diffusion model.

Same prompts, output folder and index as `dpt generate`: image k of the run starts from the
latent noise of seed S+k and is written as k.png. The referee is DPT's matching score
(`--referee dpt`, default; the shipped DPT weights on the shipped model, or `--dpt PATH`),
CLIP's image-text similarity (`--referee clip`: the Shapes CLIP, or a local CLIP folder with
`--referee-model PATH`), the Shapes referee's match logit (`--referee shapes-itm`: text
attending over image patches, ITM 1.0 on Shapes scenes; the shipped one or a `dpt world
train-referee` folder; Shapes models only) or BLIP-2's (`--referee blip2-itm`: the
log-probability of its image-text matching head, the paper's referee; `--referee
blip2-itc`: its contrastive similarity; `--referee-model PATH` a local
Blip2ForImageTextRetrieval folder). See
docs/referees.md. `--no-augment`, `--no-sds` and `--no-ema` switch the regularisers off one
at a time (the ablations).

Settings not given take the Shapes ones measured best on the shipped Shapes model: correct
the model's own sample (`--init sample`, `referee.SHAPES_SETTINGS`), or with `--init noise`
an annealed score distillation from noise that the referee steers
(`referee.SHAPES_NOISE_SETTINGS`). On any other model they take the authors'
(`referee.PAPER_SETTINGS`) with a `--referee-model` folder, else the reference code's (from
noise). `--reference-settings` and `--paper-settings` choose one on any model.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

from ..generation.referee import (FILLS, INITS, PAPER_SETTINGS, SDS_TIME_WEIGHTS,
                                  SHAPES_NOISE_SETTINGS, SHAPES_SETTINGS, T_SCHEDULES,
                                  RefereeSettings)
from ..generation.referee_folder import REFEREES, RefereeRun, referee_folder, run_preset
from ..io.image_folder import INDEX
from .model_args import (add_device_argument, add_threads_argument, model_folder, quiet_loading,
                         set_threads)
from .prompt_input import add_prompt_arguments, read_prompts

FLAGS = {"init_steps": int, "init_guidance": float, "iterations": int, "lr": float,
         "lr_end": float, "views": int, "top_k": int, "ema_decay": float, "ema_start": int,
         "ema_restart": int, "sds_weight": float, "sds_weight_end": float,
         "referee_weight": float, "referee_start": int, "guidance": float, "t_min": int,
         "t_max": int}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("referee", help="images by optimising a latent against a referee",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--num-images", type=int, default=RefereeRun.num_images, metavar="N")
    p.add_argument("--seed", type=int, default=RefereeRun.seed, metavar="S")
    p.add_argument("--batch-size", type=int, default=RefereeRun.batch_size, metavar="B")
    add_device_argument(p, runs="the model and the referee run",
                        noise="the starting, SDS and augmentation noise")
    p.add_argument("--model", type=Path, default=None, metavar="PATH")
    p.add_argument("--referee", choices=REFEREES, default=RefereeRun.referee)
    p.add_argument("--dpt", type=Path, default=None, metavar="PATH",
                   help="--referee dpt: a DPT folder (default: the shipped DPT weights)")
    p.add_argument("--referee-model", type=Path, default=None, metavar="PATH",
                   help="--referee blip2-itm / blip2-itc: a local Blip2ForImageTextRetrieval "
                        "folder (e.g. Salesforce/blip2-itm-vit-g); --referee clip: a local "
                        "CLIPModel folder (default: the Shapes CLIP); --referee shapes-itm: a "
                        "`dpt world train-referee` folder (default: the shipped one)")
    presets = p.add_mutually_exclusive_group()
    presets.add_argument("--reference-settings", action="store_true",
                         help="start from the reference code's settings on any model")
    presets.add_argument("--paper-settings", action="store_true",
                         help="start from the authors' settings (PAPER_SETTINGS) on any model")
    p.add_argument("--init", choices=INITS, default=None,
                   help=f"the start latent (default {SHAPES_SETTINGS.init} on the Shapes model, "
                        f"{RefereeSettings.init} elsewhere; the Shapes model's other settings "
                        "follow it)")
    p.add_argument("--sds-time-weight", choices=SDS_TIME_WEIGHTS, default=None,
                   help="w(t) of the SDS gradient: 1 - alpha_bar(t), 1, or "
                        "sqrt((1 - alpha_bar(t)) / alpha_bar(t)), which steps toward the "
                        "denoised estimate " + _defaults("sds_time_weight"))
    p.add_argument("--t-schedule", choices=T_SCHEDULES, default=None,
                   help="the SDS timesteps: drawn in [--t-min, --t-max], or annealed from "
                        "--t-max to --t-min over the iterations " + _defaults("t_schedule"))
    p.add_argument("--fill", choices=FILLS, default=None,
                   help="what the augmented views show outside the image and in an erased "
                        "rectangle: grey, or the image's border colour " + _defaults("fill"))
    for name, kind in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=_defaults(name))
    for name in ("augment", "sds", "ema"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"switch {name} off")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in DIR and discard an unfinished one")
    p.add_argument("--resume", action="store_true",
                   help="finish the unfinished run of a killed `dpt referee` into DIR: keep its "
                        "images, make the rest (same flags as it had)")
    add_threads_argument(p)
    p.set_defaults(run=run)


def _defaults(name: str) -> str:
    """A setting's value in each preset, for its flag's help."""
    presets = (("Shapes", SHAPES_SETTINGS), ("Shapes from noise", SHAPES_NOISE_SETTINGS),
               ("paper", PAPER_SETTINGS), ("reference", RefereeSettings()))
    values = [getattr(preset, name) for _, preset in presets]
    shown = [f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in values]
    return "(default: " + ", ".join(f"{label} {v}" for (label, _), v in zip(presets, shown)) + ")"


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    for name in FLAGS:
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be finite")
    prompts = read_prompts(args)
    model = model_folder(args.model)
    settings = _settings(args, model)
    job = RefereeRun(model, prompts, args.out, settings, args.referee, args.dpt,
                     args.num_images, args.seed, args.batch_size, args.overwrite, args.resume,
                     args.referee_model, args.device)
    records = referee_folder(job, before_load=lambda out: quiet_loading())
    print(f"wrote {len(records)} images and {INDEX} to {Path(args.out).expanduser().resolve()}")
    return 0


def _settings(args: argparse.Namespace, model: Path) -> RefereeSettings:
    """The run's RefereeSettings: the flags given over the preset (`run_preset` unless one
    is named)."""
    preset = RefereeSettings() if args.reference_settings else \
        PAPER_SETTINGS if args.paper_settings else \
        run_preset(model, args.referee_model, args.init)
    given = {name: getattr(args, name) for name in [*FLAGS, "init", "sds_time_weight", "fill",
                                                     "t_schedule"]
             if getattr(args, name) is not None}
    return replace(preset, **given, augment=preset.augment and not args.no_augment,
                   sds=preset.sds and not args.no_sds, ema=preset.ema and not args.no_ema)
