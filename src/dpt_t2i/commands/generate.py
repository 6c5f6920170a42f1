"""`dpt generate`: sample images from a text-to-image model into a folder with an index.

Image k of a run (counted over all prompts, --num-images per prompt) starts from seed S+k
and is written as `k.png` with five digits (00000.png, ...); `index.jsonl` holds one
record per image: file, prompt, seed and the settings. Every input is checked before the
model loads, and the folder is written through a staging folder, so a bad input writes
nothing and an interruption never leaves an index that names a missing image.

Methods: on the shipped Shapes model the default is DPT (its shipped DPT weights, LoRA fused
into the U-Net); `--base` samples the model alone; `--dpt PATH` takes another DPT folder
(on a model other than the shipped one, the default is the base model); `--self-correct ETA`
adds self-correction, z_t <- z_t + ETA * grad s(z_t, y) before each noise prediction.
`--attend-excite` samples the base model with Attend-and-Excite (diffusers' pipeline; subject
tokens found automatically, or `--subject-words`), a baseline.

Benchmarks: `--benchmark NAME --benchmark-file PATH` takes the prompts of CC-500, ABC-6K,
COCO-NSS1K, T2I-CompBench or GenEval in their published formats (data/benchmarks.py); each
image's record then carries the prompt's metadata under "benchmark". With `--benchmark
geneval`, `--geneval-out DIR` also lays the images out as GenEval's evaluator reads them.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from tqdm.auto import tqdm

from ..data.benchmarks import check_geneval_out, write_geneval_layout
from ..errors import UsageError
from ..generation.guidance import DEFAULT_T_RANGE, MODES, MatchScore, SelfCorrection
from ..generation.sampling import (SCHEDULERS, decode, encode_prompts, image_generators,
                                   initial_latents, make_scheduler, sample, unet_model_fn)
from ..io.bundle import ModelBundle, default_model_path, load_bundle, read_vocabulary
from ..io.dpt_folder import default_dpt_path, load_for_sampling, read_dpt_config
from ..io.image_folder import (INDEX, check_output_folder, numbered_records, publish,
                               staging_folder, write_index, write_png)
from ..model.heads import text_embeddings
from .model_args import model_folder, quiet_loading
from .prompt_input import (add_benchmark_arguments, add_prompt_arguments, check_vocabulary,
                           read_prompt_set)

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from ..generation.sampling import ModelFn
    from ..model.config import DPTConfig
    from ..model.heads import DPTHeads


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate images from prompts", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(gen)
    add_benchmark_arguments(gen)
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
                     help="sample the model without DPT weights")
    gen.add_argument("--dpt", type=Path, default=None, metavar="PATH",
                     help="a DPT folder (default: the shipped Shapes DPT weights on the shipped "
                          "model; none on other models)")
    gen.add_argument("--self-correct", type=float, default=None, metavar="ETA",
                     help="self-correction step size eta, > 0 (the raw gradient's scale depends "
                          "on the model: 10 on the Shapes model); off by default")
    gen.add_argument("--self-correct-range", type=float, nargs=2, default=DEFAULT_T_RANGE,
                     metavar=("LOW", "HIGH"),
                     help="correct only at timesteps LOW <= t <= HIGH (default 300 700, "
                          "chosen on the Shapes model: docs/dpt-shapes.md)")
    gen.add_argument("--self-correct-mode", choices=MODES, default="carry",
                     help="carry: later steps continue from the corrected latent (default); "
                          "predict-only: only the noise prediction sees it, as the authors' "
                          "sampler does")
    gen.add_argument("--attend-excite", action="store_true",
                     help="baseline: the base model sampled with Attend-and-Excite")
    gen.add_argument("--subject-words", default=None, metavar="W,W,...",
                     help="--attend-excite: the words whose attention it excites, the same for "
                          "every prompt (default: the shape nouns on a Shapes model, else each "
                          "phrase's last word)")
    gen.add_argument("--geneval-out", type=Path, default=None, metavar="DIR",
                     help="with --benchmark geneval: also write DIR/<prompt>/metadata.jsonl "
                          "and DIR/<prompt>/samples/<n>.png, GenEval's evaluator's layout")
    gen.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run in DIR (its index and images), and the "
                          "prompt folders in --geneval-out DIR")
    gen.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    _check_settings(args)
    prompts, benchmark = read_prompt_set(args)
    model = model_folder(args.model)
    vocabulary = read_vocabulary(model)
    if vocabulary is not None:
        check_vocabulary(prompts, vocabulary, model)
    dpt = None if args.attend_excite else dpt_folder(args, model)
    records = plan_images(prompts, args, model, dpt, benchmark)
    out = check_output_folder(args.out, [r["file"] for r in records], overwrite=args.overwrite)
    geneval_out = _geneval_folder(args.geneval_out, out, args.overwrite)

    quiet_loading()
    bundle = load_bundle(model)
    check_lengths(bundle.tokenizer, prompts)
    method = Method()
    if args.attend_excite:
        method.subjects = _subject_indices(bundle, prompts, records, args.subject_words,
                                           vocabulary)
    if dpt is not None:
        try:
            method.heads, method.config = load_for_sampling(dpt, bundle.unet)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if args.self_correct is not None and method.heads is None:
            raise UsageError(f"--self-correct needs an adapter to score with; {dpt} holds "
                             f"LoRA only")
        method.eta = args.self_correct or 0.0
        method.t_range, method.mode = tuple(args.self_correct_range), args.self_correct_mode
    with staging_folder(out) as stage:
        render(bundle, records, stage, args.steps, args.guidance, args.scheduler, args.batch_size,
               method)
        write_index(stage, records)
        publish(stage, out, overwrite=args.overwrite)
    print(f"wrote {len(records)} images and {INDEX} to {out}")
    if geneval_out is not None:
        n = write_geneval_layout(out, geneval_out, overwrite=args.overwrite)
        print(f"wrote GenEval's layout of {n} prompt folders to {geneval_out}")
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
    eta = args.self_correct
    if eta is not None and not (math.isfinite(eta) and eta > 0):
        raise UsageError(f"--self-correct must be a finite number > 0, got {eta}")
    low, high = args.self_correct_range
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise UsageError(f"--self-correct-range needs finite LOW <= HIGH, got {low} {high}")
    if args.base and (args.dpt is not None or eta is not None):
        flag = "--dpt" if args.dpt is not None else "--self-correct"
        raise UsageError(f"--base samples the model without DPT; it cannot go with {flag}")
    if args.attend_excite and (args.base or args.dpt is not None or eta is not None):
        raise UsageError("--attend-excite samples the base model its own way; it cannot go "
                         "with --base, --dpt or --self-correct")
    if args.subject_words is not None and not args.attend_excite:
        raise UsageError("--subject-words is read by --attend-excite only")
    if args.geneval_out is not None and args.benchmark != "geneval":
        raise UsageError("--geneval-out needs --benchmark geneval (GenEval's metadata goes "
                         "into each prompt folder)")


def _geneval_folder(folder: Path | None, out: Path, overwrite: bool) -> Path | None:
    """The checked --geneval-out folder (None if not given): apart from the run's folder."""
    if folder is None:
        return None
    folder = check_geneval_out(folder, overwrite)
    if folder == out or folder in out.parents or out in folder.parents:
        raise UsageError(f"--geneval-out {folder} must lie apart from --out {out}, neither "
                         "inside the other")
    return folder


def dpt_folder(args: argparse.Namespace, model: Path) -> Path | None:
    """The DPT folder the run uses (checked), or None for the base model."""
    if args.base:
        return None
    folder = args.dpt
    if folder is None:
        shipped = default_dpt_path()
        if model == default_model_path().resolve() and shipped.is_dir():
            folder = shipped
        elif args.self_correct is not None:
            raise UsageError("--self-correct needs DPT weights: pass --dpt PATH (there are no "
                             "shipped DPT weights for this model)")
        else:
            return None
    try:
        read_dpt_config(folder)  # a UsageError now, before the model loads
    except ValueError as err:
        raise UsageError(str(err)) from None
    return folder.resolve()


@dataclass
class Method:
    """What samples the images: the base model, or DPT heads (LoRA fused) and self-correction."""

    heads: DPTHeads | None = None
    config: DPTConfig | None = None
    eta: float = 0.0                               # self-correction off at 0
    t_range: tuple[float, float] = DEFAULT_T_RANGE  # timesteps on which to correct
    mode: str = "carry"
    subjects: dict[str, list[int]] | None = None   # Attend-and-Excite: prompt -> token indices

    def model_fn(self, bundle: ModelBundle, prompts: list[str]) -> ModelFn | None:
        """The batch's noise prediction: None (the plain U-Net) unless self-correcting."""
        if self.heads is None or self.eta == 0:
            return None
        # the U-Net sees what the score was trained on: the empty prompt, or the prompt itself
        empty = self.config.condition == "empty"
        states = encode_prompts(bundle, [""] if empty else prompts)  # (1 or b, L, D)
        score = MatchScore(bundle.unet, self.heads, self.config, states)
        texts, _ = text_embeddings(self.heads, bundle.text_encoder, bundle.tokenizer, prompts)
        return SelfCorrection(unet_model_fn(bundle), score, texts, self.eta, self.t_range,
                              self.mode)


def _subject_indices(bundle: ModelBundle, prompts: list[str], records: list[dict],
                     words: str | None, vocabulary: tuple[str, ...] | None
                     ) -> dict[str, list[int]]:
    """Each prompt's A&E token indices (also written into its records); UsageError naming a
    prompt without subject words."""
    from ..data.shapes.world import SHAPES
    from ..generation.attend_excite import subject_words, token_indices

    nouns = None
    if words is not None:
        nouns = [w.strip() for w in words.split(",") if w.strip()]
    elif vocabulary is not None:
        nouns = [*SHAPES, *(s + "s" for s in SHAPES)]
    out = {}
    for prompt in prompts:
        found = subject_words(prompt, nouns)
        if not found:
            raise UsageError(f"--attend-excite: prompt {prompt!r} has no subject word to excite "
                             "(give them with --subject-words)")
        try:
            out[prompt] = token_indices(bundle.tokenizer, prompt, found)
        except ValueError as err:
            raise UsageError(f"--attend-excite: {err}") from None
    for record in records:
        record["subject_tokens"] = out[record["prompt"]]
    return out


def method_settings(args: argparse.Namespace, dpt: Path | None) -> dict:
    """The index fields that say which method made an image."""
    if args.attend_excite:
        return {"method": "attend-excite"}
    if dpt is None:
        return {"method": "base"}
    if args.self_correct is None:
        return {"method": "dpt", "dpt": str(dpt)}
    return {"method": "dpt+sc", "dpt": str(dpt), "eta": args.self_correct,
            "sc_range": list(args.self_correct_range), "sc_mode": args.self_correct_mode}


def plan_images(prompts: list[str], args: argparse.Namespace, model: Path,
                dpt: Path | None = None, benchmark: list[dict] | None = None) -> list[dict]:
    """One index record per image, in run order: image k gets seed S+k and file k.png.

    `benchmark` (one dict per prompt, from `read_prompt_set`) goes into each of the prompt's
    records under "benchmark".
    """
    settings = {"steps": args.steps, "guidance": args.guidance, "scheduler": args.scheduler,
                "model": str(model), **method_settings(args, dpt)}
    records = numbered_records(prompts, args.num_images, args.seed, settings)
    if benchmark is not None:
        for record in records:
            record["benchmark"] = benchmark[record["prompt_index"]]
    return records


def check_lengths(tokenizer: CLIPTokenizer, prompts: list[str]) -> None:
    """Raise UsageError for a prompt the text encoder would truncate (start and end tokens
    count too)."""
    limit = tokenizer.model_max_length
    for prompt in prompts:
        n = len(tokenizer.tokenize(prompt)) + 2
        if n > limit:
            raise UsageError(f"prompt {prompt!r} is {n} tokens long with start and end tokens; "
                             f"the model reads at most {limit}")


def render(bundle: ModelBundle, records: list[dict], folder: Path, steps: int, guidance: float,
           scheduler_name: str, batch_size: int, method: Method | None = None) -> None:
    """Sample each record's image from its prompt and seed; write it as folder / record["file"].

    Args:
        bundle: the model.
        records: from `plan_images`.
        folder: where the PNGs go.
        steps / guidance / scheduler_name: as `sampling.sample` takes them.
        batch_size: images denoised together.
        method: DPT heads and self-correction (default: the bundle's U-Net as it is).
    """
    with tqdm(total=len(records), unit="image", desc="generate", dynamic_ncols=True) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            images = sample_images(bundle, [r["prompt"] for r in batch],
                                   [r["seed"] for r in batch], steps, guidance, scheduler_name,
                                   method)
            for record, image in zip(batch, images):
                write_png(folder / record["file"], image)
            bar.update(len(batch))


def sample_images(bundle: ModelBundle, prompts: list[str], seeds: list[int], steps: int,
                  guidance: float, scheduler_name: str, method: Method | None = None,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Images of B prompts, image k from the noise of seeds[k], denoised together.

    Args:
        bundle: the model.
        prompts / seeds: B of each.
        steps / guidance / scheduler_name: as `sampling.sample` takes them.
        method: DPT heads and self-correction, or Attend-and-Excite subjects (default: the
            bundle's U-Net as it is).
        progress: called with the number of denoising steps done after each step (not called
            by Attend-and-Excite, which runs diffusers' pipeline).

    Returns:
        (B, H, W, 3) uint8 images.
    """
    method = method or Method()
    scheduler = make_scheduler(scheduler_name, bundle.scheduler_config)
    generators = image_generators(seeds)
    scheduler.set_timesteps(steps)
    latents = initial_latents(seeds, bundle.latent_shape(), scheduler, generators)
    if method.subjects is not None:
        from ..generation.attend_excite import build_pipeline, sample_attend_excite

        return sample_attend_excite(build_pipeline(bundle, scheduler), bundle, prompts,
                                    [method.subjects[p] for p in prompts], latents, steps,
                                    guidance)
    cond = encode_prompts(bundle, prompts)  # (B, L, D)
    uncond = encode_prompts(bundle, [""] * len(prompts)) if guidance > 1 else None
    latents = sample(bundle, cond, uncond, latents, steps, guidance, scheduler,
                     model_fn=method.model_fn(bundle, prompts), progress=progress,
                     generators=generators)
    return decode(bundle, latents)
