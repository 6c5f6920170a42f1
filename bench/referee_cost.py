"""What referee generation costs per image beside DPT sampling, measured side by side in one run.

Times, on the same prompts and seeds with the shipped DPT weights (LoRA fused):

- dpt:              `dpt generate`'s sampling (25 DDIM steps, guidance 7.5);
- dpt+sc:           the same with self-correction (`dpt generate`'s default settings);
- referee-sample:   `dpt referee` on the Shapes model from the model's sample
                    (`referee.SHAPES_SETTINGS`: the sample, then 40 referee + SDS iterations);
- referee-noise:    `dpt referee --init noise` (`referee.SHAPES_NOISE_SETTINGS`: 160
                    iterations of annealed SDS from noise, steered by the referee);
- referee-reference (with --reference): the reference code's settings (160 iterations from
                    noise, the referee at every one).

The referee is the Shapes referee (`--referee shapes-itm`, default) or DPT's matching score
(`--referee dpt`). The methods take turns round by round, so a slow spell of the machine
hits all of them; the figure per method is its median round. It prints each method's
seconds per image and its ratio to dpt.

    python bench/referee_cost.py [--batch 4] [--rounds 3] [--referee shapes-itm|dpt]
                                 [--reference] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
from interleaved import interleaved_medians  # bench/interleaved.py

from dpt_t2i.data.shapes.splits import benchmark_prompts
from dpt_t2i.generation.guidance import DEFAULT_ETA
from dpt_t2i.generation.methods import Method
from dpt_t2i.generation.referee import (SHAPES_NOISE_SETTINGS, SHAPES_SETTINGS, RefereeSettings,
                                        dpt_scorer, generate)
from dpt_t2i.generation.sampling import (decode, encode_prompts, initial_latents, make_scheduler,
                                         sample)
from dpt_t2i.generation.shapes_referee import shapes_referee_scorer
from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.io.dpt_folder import default_dpt_path, load_for_sampling
from dpt_t2i.io.shapes_referee import default_shapes_referee_path, load_shapes_referee


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--referee", choices=("shapes-itm", "dpt"), default="shapes-itm")
    parser.add_argument("--reference", action="store_true",
                        help="also time the reference code's settings (160 iterations from "
                             "noise)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bundle = load_bundle(default_model_path())
    heads, config = load_for_sampling(default_dpt_path(), bundle.unet)
    prompts = [p.text for p in benchmark_prompts("ood", 2)][:args.batch]
    prompts = (prompts * args.batch)[:args.batch]
    seeds = list(range(1000, 1000 + args.batch))
    cond, uncond = encode_prompts(bundle, prompts), encode_prompts(bundle, [""] * args.batch)
    scorer = dpt_scorer(bundle, heads, config) if args.referee == "dpt" else \
        shapes_referee_scorer(load_shapes_referee(default_shapes_referee_path()))

    def sampled(model_fn=None) -> float:
        scheduler = make_scheduler("ddim", bundle.scheduler_config)
        scheduler.set_timesteps(25)
        latents = initial_latents(seeds, bundle.latent_shape(), scheduler)
        start = time.perf_counter()
        decode(bundle, sample(bundle, cond, uncond, latents, 25, 7.5, scheduler,
                              model_fn=model_fn))
        return time.perf_counter() - start

    def corrected():
        return Method(heads, config, DEFAULT_ETA).model_fn(bundle, prompts)  # dpt generate's

    def refereed(settings: RefereeSettings) -> float:
        start = time.perf_counter()
        decode(bundle, generate(bundle, scorer, prompts, seeds, settings))
        return time.perf_counter() - start

    methods = {"dpt": sampled, "dpt+sc": lambda: sampled(corrected()),
               "referee-sample": lambda: refereed(SHAPES_SETTINGS),
               "referee-noise": lambda: refereed(SHAPES_NOISE_SETTINGS)}
    if args.reference:
        methods["referee-reference"] = lambda: refereed(RefereeSettings())
    per_batch = interleaved_medians(methods, args.rounds)
    median = {name: t / args.batch for name, t in per_batch.items()}
    print(f"{args.referee} referee, {args.batch} images a batch, {torch.get_num_threads()} "
          f"threads, median of {args.rounds} interleaved rounds")
    print("| method | s per image | / dpt |")
    print("|---|---|---|")
    for name, t in median.items():
        print(f"| {name} | {t:.3f} | {t / median['dpt']:.1f} |")


if __name__ == "__main__":
    main()
