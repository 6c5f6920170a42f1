"""`dpt world ...`: train the Shapes world's text-to-image model, stage by stage, and its
referee (an image-text matcher the referee generation follows)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io.dpt_folder import half_copy
from ..shapes_model.clip import train_clip
from ..shapes_model.referee import referee_config, train_referee
from ..shapes_model.unet import train_unet
from ..shapes_model.vae import train_vae
from .model_args import add_threads_argument, set_threads


def register(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", help="train and assemble the embedded Shapes model")
    stages = world.add_subparsers(dest="stage", required=True, metavar="STAGE")

    vae = stages.add_parser("train-vae", help="train the KL VAE (64x64 -> 8x8x4)")
    _common(vae, steps=5000, batch=32, lr=1e-3)
    vae.add_argument("--crop-steps", type=int, default=None,
                     help="steps on 32-pixel crops before full images (default 3/4 of --steps)")
    vae.add_argument("--fg-weight", type=float, default=10.0,
                     help="loss weight of object pixels against background pixels")
    vae.add_argument("--halo", type=int, default=0,
                     help="also weigh background pixels within this many pixels of an object")
    vae.add_argument("--init", type=Path, default=None,
                     help="start from this saved VAE folder (e.g. an earlier run's final/)")
    vae.add_argument("--decoder-only", action="store_true",
                     help="freeze the encoder: fine-tune the decoder, latents stay unchanged")
    vae.set_defaults(run=_train_vae)

    clip = stages.add_parser("train-clip", help="train the CLIP text/image encoders contrastively")
    _common(clip, steps=1000, batch=128, lr=1e-3)
    clip.set_defaults(run=_train_clip)

    unet = stages.add_parser("train-unet",
                             help="train the U-Net on the frozen VAE and text encoder")
    _common(unet, steps=8000, batch=64, lr=3e-4)
    unet.add_argument("--vae", type=Path, required=True,
                      help="trained VAE folder (train-vae's final/)")
    unet.add_argument("--clip", type=Path, required=True,
                      help="trained CLIP folder (train-clip's final/)")
    unet.add_argument("--pool-size", type=int, default=60000, help="training scenes encoded once")
    unet.set_defaults(run=_train_unet)

    asm = stages.add_parser("assemble",
                            help="write the trained parts as one fp16 diffusers folder")
    asm.add_argument("--vae", type=Path, required=True, help="train-vae's final/ folder")
    asm.add_argument("--clip", type=Path, required=True, help="train-clip's final/ folder")
    asm.add_argument("--unet", type=Path, required=True, help="train-unet's final/ folder")
    asm.add_argument("--out", type=Path, required=True, help="the pipeline folder to write")
    asm.add_argument("--clip-out", type=Path, default=None,
                     help="also write the full CLIP (text and image encoders) here")
    asm.set_defaults(run=_assemble)

    _referee_parser(stages)

    ship = stages.add_parser("ship-dpt", help="write a DPT folder as the shipped fp16 DPT weights")
    ship.add_argument("--dpt", type=Path, required=True, help="a tune run's final/ folder")
    ship.add_argument("--out", type=Path, required=True,
                      help="where to write it (src/dpt_t2i/weights/shapes-dpt for the package)")
    ship.set_defaults(run=_ship_dpt)


def _referee_parser(stages: argparse._SubParsersAction) -> None:
    ref = stages.add_parser(
        "train-referee", help="train the Shapes referee: text attending over image patches, "
        "a match / no match head (hard negatives of the world, exact labels)")
    _common(ref, steps=2400, batch=16, lr=1e-3)
    ref.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="also write the fp16 referee folder here (the package's: "
                          "src/dpt_t2i/weights/shapes-referee); RUN_DIR/final always")
    ref.add_argument("--augment", type=float, default=1.0, metavar="S",
                     help="strength of the blur / colour / noise augmentation (default 1; "
                          "0: clean renders)")
    model = referee_config()  # the defaults live in RefereeConfig
    for flag, default, what in (("--width", model.width, "token width"),
                                ("--stem-channels", model.stem_channels, "conv stem channels"),
                                ("--image-layers", model.image_layers,
                                 "self-attention layers over the patches"),
                                ("--text-layers", model.text_layers,
                                 "text layers reading the patches")):
        ref.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    ref.set_defaults(run=_train_referee)


def _common(p: argparse.ArgumentParser, steps: int, batch: int, lr: float) -> None:
    p.add_argument("--run-dir", type=Path, required=True, help="folder for checkpoints and logs")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--resume", choices=["latest", "no"], default="latest",
                   help="continue from the run folder's latest checkpoint (default) or start over")
    add_threads_argument(p)


def _setup(args: argparse.Namespace) -> None:
    set_threads(args.threads)


def _train_vae(args: argparse.Namespace) -> int:
    _setup(args)
    summary = train_vae(args.run_dir, steps=args.steps, batch=args.batch, lr=args.lr,
                        crop_steps=args.crop_steps, fg_weight=args.fg_weight, halo=args.halo,
                        init=args.init, decoder_only=args.decoder_only, seed=args.seed,
                        resume=args.resume == "latest", checkpoint_every=args.checkpoint_every)
    print(json.dumps(summary))
    return 0


def _train_clip(args: argparse.Namespace) -> int:
    _setup(args)
    summary = train_clip(args.run_dir, steps=args.steps, batch=args.batch, lr=args.lr,
                         seed=args.seed, resume=args.resume == "latest",
                         checkpoint_every=args.checkpoint_every)
    print(json.dumps(summary))
    return 0


def _train_unet(args: argparse.Namespace) -> int:
    _setup(args)
    summary = train_unet(args.run_dir, args.vae, args.clip, steps=args.steps, batch=args.batch,
                         lr=args.lr, pool_size=args.pool_size, seed=args.seed,
                         resume=args.resume == "latest", checkpoint_every=args.checkpoint_every)
    print(json.dumps(summary))
    return 0


def _train_referee(args: argparse.Namespace) -> int:
    _setup(args)
    config = referee_config(width=args.width, stem_channels=args.stem_channels,
                            image_layers=args.image_layers, text_layers=args.text_layers)
    summary = train_referee(args.run_dir, steps=args.steps, batch=args.batch, lr=args.lr,
                            seed=args.seed, resume=args.resume == "latest",
                            checkpoint_every=args.checkpoint_every, config=config,
                            augment_strength=args.augment, out=args.out)
    print(json.dumps(summary))
    return 0


def _assemble(args: argparse.Namespace) -> int:
    # imported here: diffusers' pipeline module makes transformers warn about torchvision on
    # import, which every other command would print
    from ..shapes_model.assemble import assemble

    for flag, path in (("--vae", args.vae), ("--clip", args.clip), ("--unet", args.unet)):
        if not (path / "config.json").is_file():
            raise ValueError(f"{flag} {path} has no config.json; expected a trained final/ folder")
    out = assemble(args.vae, args.clip, args.unet, args.out, args.clip_out)
    runs = {name: json.loads((p.parent / "summary.json").read_text())
            for name, p in (("vae", args.vae), ("clip", args.clip), ("unet", args.unet))
            if (p.parent / "summary.json").is_file()}
    (out / "training.json").write_text(json.dumps(runs, indent=1))
    print(f"wrote {out}")
    return 0


def _ship_dpt(args: argparse.Namespace) -> int:
    try:
        out = half_copy(args.dpt, args.out)
    except ValueError as err:
        raise ValueError(f"--dpt: {err}") from None
    print(f"wrote {out}")
    return 0
