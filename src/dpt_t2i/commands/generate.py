"""`dpt generate`: sample images from a text-to-image model into a folder with an index.

Image k of a run (counted over all prompts, --num-images per prompt) starts from seed S+k
and is written as `k.png` with five digits (00000.png, ...); `index.jsonl` holds one
record per image: file, prompt, seed and the settings. Every input is checked before the
model loads, and the folder is written through a staging folder, so a bad input writes
nothing and an interruption never leaves an index that names a missing image.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ..bundle import (ModelBundle, load_bundle,
                      read_vocabulary)
from ..errors import UsageError
from ..image_folder import (INDEX, check_output_folder, publish, staging_folder, write_index,
                            write_png)
from ..sampling import (SCHEDULERS, decode, encode_prompts, image_generators, initial_latents,
                        make_scheduler, sample)
from .model_args import model_folder, quiet_loading
from .prompt_input import add_prompt_arguments, check_vocabulary, read_prompts

if TYPE_CHECKING:
    from transformers import CLIPTokenizer


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate images from prompts", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(gen)
    gen.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="output folder for the PNGs and index.jsonl")
    gen.add_argument("--num-images", type=int, default=4, metavar="N",
                     help="images per prompt (default 4)")
    gen.add_argument("--seed", type=int, default=0, metavar="S",
                     help="image k of the run, over all prompts, uses seed S+k (default 0)")
    gen.add_argument("--steps", type=int, default=25, metavar="K",
                     help="denoising steps (default 25)")
    gen.add_argument("--guidance", type=float, default=7.5, metavar="G",
                     help="classifier-free guidance scale; <= 1 turns it off (default 7.5)")
    gen.add_argument("--scheduler", default="ddim", metavar="NAME",
                     help=f"one of {', '.join(SCHEDULERS)} (default ddim)")
    gen.add_argument("--batch-size", type=int, default=8, metavar="B",
                     help="images denoised together (default 8)")
    gen.add_argument("--model", type=Path, default=None, metavar="PATH",
                     help="a Stable Diffusion diffusers folder (default: the shipped Shapes model)")
    gen.add_argument("--base", action="store_true",
                     help="sample the model without DPT weights (the only mode until DPT "
                          "weights ship, so also the default)")
    gen.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run in DIR (its index and images)")
    gen.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    _check_settings(args)
    prompts = read_prompts(args)
    model = model_folder(args.model)
    vocabulary = read_vocabulary(model)
    if vocabulary is not None:
        check_vocabulary(prompts, vocabulary, model)
    records = plan_images(prompts, args, model)
    out = check_output_folder(args.out, [r["file"] for r in records], overwrite=args.overwrite)

    quiet_loading()
    bundle = load_bundle(model)
    _check_lengths(bundle.tokenizer, prompts)
    with staging_folder(out) as stage:
        render(bundle, records, stage, args.steps, args.guidance, args.scheduler, args.batch_size)
        write_index(stage, records)
        publish(stage, out, overwrite=args.overwrite)
    print(f"wrote {len(records)} images and {INDEX} to {out}")
    return 0


def _check_settings(args: argparse.Namespace) -> None:
    for flag, value in (("--num-images", args.num_images), ("--steps", args.steps),
                        ("--batch-size", args.batch_size)):
        if value <= 0:
            raise UsageError(f"{flag} must be a positive whole number, got {value}")
    if args.seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {args.seed}")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise UsageError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.scheduler not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {args.scheduler!r}; expected one of "
                         f"{', '.join(SCHEDULERS)}")


def plan_images(prompts: list[str], args: argparse.Namespace, model: Path) -> list[dict]:
    """One index record per image, in run order: image k gets seed S+k and file k.png."""
    settings = {"steps": args.steps, "guidance": args.guidance, "scheduler": args.scheduler,
                "model": str(model), "method": "base"}
    records = []
    for p, prompt in enumerate(prompts):
        for _ in range(args.num_images):
            k = len(records)
            records.append({"file": f"{k:05d}.png", "prompt": prompt, "prompt_index": p,
                            "seed": args.seed + k, **settings})
    return records


def _check_lengths(tokenizer: CLIPTokenizer, prompts: list[str]) -> None:
    """Refuse prompts the text encoder would truncate (start and end tokens count too)."""
    limit = tokenizer.model_max_length
    for prompt in prompts:
        n = len(tokenizer.tokenize(prompt)) + 2
        if n > limit:
            raise UsageError(f"prompt {prompt!r} is {n} tokens long with start and end tokens; "
                             f"the model reads at most {limit}")


def render(bundle: ModelBundle, records: list[dict], folder: Path, steps: int, guidance: float,
           scheduler_name: str, batch_size: int) -> None:
    """Sample each record's image from its prompt and seed; write it as folder / record["file"].

    Args:
        bundle: the model.
        records: from `plan_images`.
        folder: where the PNGs go.
        steps / guidance / scheduler_name: as `sampling.sample` takes them.
        batch_size: images denoised together.
    """
    scheduler = make_scheduler(scheduler_name, bundle.scheduler_config)
    with tqdm(total=len(records), unit="image", desc="generate", dynamic_ncols=True) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            seeds = [r["seed"] for r in batch]
            generators = image_generators(seeds)
            scheduler.set_timesteps(steps)
            latents = initial_latents(seeds, bundle.latent_shape(), scheduler, generators)
            cond = encode_prompts(bundle, [r["prompt"] for r in batch])  # (b, L, D)
            uncond = encode_prompts(bundle, [""] * len(batch)) if guidance > 1 else None
            latents = sample(bundle, cond, uncond, latents, steps, guidance, scheduler,
                             generators=generators)
            for record, image in zip(batch, decode(bundle, latents)):
                write_png(folder / record["file"], image)
            bar.update(len(batch))
