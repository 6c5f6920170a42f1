"""What DPT and self-correction cost per image, measured side by side in one run.

Times the denoising loop (same prompts, seeds, scheduler and steps) for:

- base:         the model alone;
- dpt-fused:    DPT with its LoRA merged into the U-Net (what `dpt generate` runs);
- dpt-lora:     DPT with the LoRA left as PEFT layers beside the weights (for comparison);
- dpt+sc:       DPT + self-correction, the score's gradient through the early-exit tap;
- dpt+sc-full:  the same with the tap running the whole U-Net, as the authors' sampler does;
- dpt+sc-shared: self-correction mode "shared": the score read on the guidance's own pass
                (no extra forward pass; the backward through the U-Net below the block).

The methods take turns round by round (base, dpt-fused, ..., base, ...), so a slow spell of
the machine hits all of them; the figure per method is its median round. It prints
dpt-fused / base (goal <= 1.05) and dpt+sc / dpt-fused (goal <= 1.3).

    python bench/generation_cost.py [--dpt DIR] [--batch 8] [--steps 25] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from interleaved import interleaved_medians  # bench/interleaved.py

from dpt_t2i.data.shapes.splits import benchmark_prompts
from dpt_t2i.generation.guidance import DEFAULT_ETA, DEFAULT_T_RANGE, DEFAULT_UNIT, UNITS
from dpt_t2i.generation.methods import Method
from dpt_t2i.generation.sampling import encode_prompts, initial_latents, make_scheduler, sample
from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.io.dpt_folder import default_dpt_path, load_for_sampling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--dpt", default=str(default_dpt_path()))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--eta", type=float, default=DEFAULT_ETA)
    parser.add_argument("--unit", choices=UNITS, default=DEFAULT_UNIT,
                        help="eta's unit (default: dpt generate's; raw eta 10 was the old one)")
    parser.add_argument("--range", type=float, nargs=2, default=DEFAULT_T_RANGE,
                        help="timesteps self-correction applies on (default: dpt generate's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load_bundle(args.model)
    fused = load_bundle(args.model)
    heads, config = load_for_sampling(args.dpt, fused.unet)
    lora = load_bundle(args.model)
    load_for_sampling(args.dpt, lora.unet, fuse=False)

    prompts = [p.text for p in benchmark_prompts("ood", 2)][:args.batch]
    prompts = (prompts * args.batch)[:args.batch]
    cond, uncond = encode_prompts(base, prompts), encode_prompts(base, [""] * args.batch)

    def run(bundle, model_fn=None):
        scheduler = make_scheduler("ddim", bundle.scheduler_config)
        scheduler.set_timesteps(args.steps)
        latents = initial_latents(list(range(args.batch)), bundle.latent_shape(), scheduler)
        start = time.perf_counter()
        sample(bundle, cond, uncond, latents, args.steps, args.guidance, scheduler,
               model_fn=model_fn)
        return time.perf_counter() - start

    def corrected(early_exit, mode="carry"):
        method = Method(heads, config, args.eta, tuple(args.range), mode=mode, unit=args.unit,
                        early_exit=early_exit)
        return method.model_fn(fused, prompts)

    methods = {"base": lambda: run(base), "dpt-fused": lambda: run(fused),
               "dpt-lora": lambda: run(lora),
               "dpt+sc": lambda: run(fused, corrected(True)),
               "dpt+sc-full": lambda: run(fused, corrected(False)),
               "dpt+sc-shared": lambda: run(fused, corrected(True, "shared"))}
    median = interleaved_medians(methods, args.rounds)
    per_image = args.batch
    print(f"{args.batch} images, {args.steps} DDIM steps, guidance {args.guidance}, self-correction "
          f"eta {args.eta} ({args.unit}) on {args.range[0]:g} <= t <= {args.range[1]:g}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print("| method | s per batch | ms per image-step | / base | / dpt-fused |")
    print("|---|---|---|---|---|")
    for name, t in median.items():
        print(f"| {name} | {t:.3f} | {1000 * t / per_image / args.steps:.2f} | "
              f"{t / median['base']:.3f} | {t / median['dpt-fused']:.3f} |")
    print(f"dpt-fused / base = {median['dpt-fused'] / median['base']:.3f} (goal <= 1.05)")
    for name in ("dpt+sc", "dpt+sc-shared"):
        print(f"{name} / dpt-fused = {median[name] / median['dpt-fused']:.3f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
