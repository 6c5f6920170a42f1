"""`dpt referee`: images made without sampling, by optimising a latent until a discriminative
model (the referee) judges it a match, with score distillation from the diffusion model.

Same prompts, output folder and index as `dpt generate`: image k of the run starts from the
latent noise of seed S+k and is written as k.png. The referee is DPT's matching score
(`--referee dpt`, default; the shipped DPT weights on the shipped model, or `--dpt PATH`) or
the Shapes CLIP's image-text similarity (`--referee clip`). `--no-augment`, `--no-sds` and
`--no-ema` switch the regularisers off one at a time (the ablations).

Settings not given take the Shapes ones measured best (`referee.SHAPES_SETTINGS`: correct the
model's own sample, `--init sample`) on the shipped Shapes model and the reference code's
(from noise) on any other model or with `--reference-settings`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields, replace
from pathlib import Path

from ..errors import UsageError
from .model_args import add_threads_argument, model_folder, quiet_loading, set_threads
from .prompt_input import add_prompt_arguments, check_vocabulary, read_prompts

FLAGS = {"init_steps": int, "init_guidance": float, "iterations": int, "lr": float, "lr_end": float, "views": int, "top_k": int,
         "ema_decay": float, "ema_start": int, "ema_restart": int, "sds_weight": float,
         "sds_weight_end": float, "referee_weight": float, "guidance": float, "t_min": int,
         "t_max": int}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("referee", help="images by optimising a latent against a referee",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--num-images", type=int, default=4, metavar="N")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--batch-size", type=int, default=8, metavar="B")
    p.add_argument("--model", type=Path, default=None, metavar="PATH")
    p.add_argument("--referee", choices=["dpt", "clip"], default="dpt")
    p.add_argument("--dpt", type=Path, default=None, metavar="PATH",
                   help="--referee dpt: a DPT folder (default: the shipped DPT weights)")
    from ..generation.referee import INITS, SHAPES_SETTINGS, RefereeSettings

    reference = RefereeSettings()
    p.add_argument("--reference-settings", action="store_true",
                   help="start from the reference code's settings on the Shapes model too")
    p.add_argument("--init", choices=INITS, default=None,
                   help=f"the start latent (default {SHAPES_SETTINGS.init} on the Shapes model, "
                        f"{reference.init} elsewhere)")
    for name, kind in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"(default {getattr(SHAPES_SETTINGS, name):g} on the Shapes model, "
                            f"{getattr(reference, name):g} elsewhere)")
    for name in ("augment", "sds", "ema"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"switch {name} off")
    p.add_argument("--overwrite", action="store_true")
    add_threads_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    for flag, value in (("--num-images", args.num_images), ("--batch-size", args.batch_size)):
        if value <= 0:
            raise UsageError(f"{flag} must be a positive whole number, got {value}")
    for name in FLAGS:
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be finite")
    if args.referee == "clip" and args.dpt is not None:
        raise UsageError("--referee clip reads no DPT folder; drop --dpt")
    prompts = read_prompts(args)
    model = model_folder(args.model)
    settings = _settings(args, model)
    from ..io.bundle import load_bundle, read_vocabulary
    from ..io.image_folder import (INDEX, check_output_folder, numbered_records, publish,
                                   staging_folder, write_index)

    vocabulary = read_vocabulary(model)
    if vocabulary is not None:
        check_vocabulary(prompts, vocabulary, model)
    records = numbered_records(prompts, args.num_images, args.seed, {
        "model": str(model), "method": "referee", "referee": args.referee,
        **{f.name: getattr(settings, f.name) for f in fields(settings)}})
    out = check_output_folder(args.out, [r["file"] for r in records], overwrite=args.overwrite)
    quiet_loading()
    bundle = load_bundle(model)
    scorer = _scorer(args, bundle, model)
    with staging_folder(out) as stage:
        _render(bundle, scorer, records, stage, settings, args.batch_size)
        write_index(stage, records)
        publish(stage, out, overwrite=args.overwrite)
    print(f"wrote {len(records)} images and {INDEX} to {out}")
    return 0


def _settings(args: argparse.Namespace, model: Path):
    """The run's RefereeSettings: the flags given over the model's preset."""
    from ..generation.referee import SHAPES_SETTINGS, RefereeSettings
    from ..io.bundle import default_model_path

    shapes = model == default_model_path().resolve() and not args.reference_settings
    preset = SHAPES_SETTINGS if shapes else RefereeSettings()
    given = {name: getattr(args, name) for name in [*FLAGS, "init"]
             if getattr(args, name) is not None}
    try:
        return replace(preset, **given, augment=not args.no_augment, sds=not args.no_sds,
                       ema=not args.no_ema)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _scorer(args, bundle, model: Path):
    from ..generation.referee import clip_scorer, dpt_scorer

    if args.referee == "clip":
        from ..eval.quality import load_clip_and_tokenizer

        return clip_scorer(*load_clip_and_tokenizer())
    from ..io.bundle import default_model_path
    from ..io.dpt_folder import default_dpt_path, load_for_sampling

    folder = args.dpt
    if folder is None:
        if model != default_model_path().resolve():
            raise UsageError("--referee dpt needs --dpt PATH on a model other than the shipped one")
        folder = default_dpt_path()
    try:
        heads, config = load_for_sampling(folder, bundle.unet)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if heads is None:
        raise UsageError(f"--dpt {folder} holds LoRA only: there is no adapter to referee with")
    return dpt_scorer(bundle, heads, config)


def _render(bundle, scorer, records: list[dict], folder: Path, settings, batch_size: int) -> None:
    from tqdm.auto import tqdm

    from ..generation.referee import generate
    from ..generation.sampling import decode
    from ..io.image_folder import write_png

    with tqdm(total=len(records) * settings.iterations, unit="it", desc="referee",
              dynamic_ncols=True) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            done = [0]

            def progress(i: int, done=done) -> None:
                bar.update((i - done[0]) * len(batch))
                done[0] = i

            latents = generate(bundle, scorer, [r["prompt"] for r in batch],
                               [r["seed"] for r in batch], settings, progress)
            for record, image in zip(batch, decode(bundle, latents)):
                write_png(folder / record["file"], image)
