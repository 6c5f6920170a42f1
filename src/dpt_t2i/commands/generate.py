"""`dpt generate`: sample images from a text-to-image model into a folder with an index.

Image k of a run (counted over all prompts, --num-images per prompt) starts from seed S+k
and is written as `k.png` with five digits (00000.png, ...); `index.jsonl` holds one
record per image: file, prompt, seed and the settings. Every input is checked before the
model loads, and the folder is written through a staging folder, so a bad input writes
nothing and an interruption never leaves an index that names a missing image. One run
writes DIR at a time (a lock beside it); a killed run leaves its finished images staged
beside DIR, and `--resume` with the same flags makes only the rest.

Methods: on the shipped Shapes model the default is DPT + self-correction (its shipped DPT
folder holds stage 1's adapter, whose matching score steers the latent); `--base` samples the
model alone; `--dpt PATH` takes another DPT folder (on a model other than the shipped one,
the default is the base model). A folder with LoRA samples as DPT (the LoRA fused into the
U-Net) and `--self-correct [ETA]` adds self-correction, z_t <- z_t + step along grad
s(z_t, y) before each noise prediction on 400 <= t <= 600; a folder without LoRA
self-corrects by default, and `--no-self-correct` turns it off.
`--attend-excite` samples the base model with Attend-and-Excite (diffusers' pipeline; subject
tokens found automatically, or `--subject-words`), a baseline.

Benchmarks: `--benchmark NAME --benchmark-file PATH` takes the prompts of CC-500, ABC-6K,
COCO-NSS1K, T2I-CompBench or GenEval in their published formats (data/benchmarks.py); each
image's record then carries the prompt's metadata under "benchmark". With `--benchmark
geneval`, `--geneval-out DIR` also lays the images out as GenEval's evaluator reads them.
With `--benchmark t2i-compbench` and one `<category>_val.txt`, `--compbench-out DIR` writes
DIR/samples/<prompt>_<NNNNNN>.png (NNNNNN counting the run's images), what T2I-CompBench's
evaluators read (give them DIR as --outpath / --out_dir). They take the prompt from the file
name up to its first `_`, so a prompt holding `_`, `/` or `.png` is refused; and its 3-in-1
evaluator takes images 10k .. 10k+9 as line k's of complex_val.txt, so complex_val.txt runs
with --num-images 10 only (10 a prompt is the benchmark's protocol in every category).
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from ..data.benchmarks import (COMPBENCH_IMAGES_PER_PROMPT, BenchmarkPrompt, check_compbench_out,
                               check_compbench_prompts, check_geneval_out, write_compbench_layout,
                               write_geneval_layout)
from ..generation.guidance import DEFAULT_ETA, MODES, UNITS
from ..generation.methods import (FolderRun, MethodSpec, SamplerSettings, check_self_correction,
                                  choose_method, generate_folder)
from ..generation.sampling import SCHEDULERS
from ..io.folder_writer import output_lock
from ..io.image_folder import INDEX
from .model_args import (add_device_argument, add_threads_argument, model_folder, quiet_loading,
                         set_threads)
from .prompt_input import add_benchmark_arguments, add_prompt_arguments, read_prompt_set

DEFAULT_STEP = object()  # --self-correct without a value: the default step (guidance.DEFAULT_ETA)


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate images from prompts", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(gen)
    add_benchmark_arguments(gen)
    gen.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="output folder for the PNGs and index.jsonl")
    gen.add_argument("--num-images", type=int, default=FolderRun.num_images, metavar="N",
                     help=f"images per prompt (default {FolderRun.num_images})")
    gen.add_argument("--seed", type=int, default=FolderRun.seed, metavar="S",
                     help="image k of the run, over all prompts, uses seed S+k "
                          f"(default {FolderRun.seed})")
    gen.add_argument("--steps", type=int, default=SamplerSettings.steps, metavar="K",
                     help=f"denoising steps (default {SamplerSettings.steps})")
    gen.add_argument("--guidance", type=float, default=SamplerSettings.guidance, metavar="G",
                     help="classifier-free guidance scale; <= 1 turns it off "
                          f"(default {SamplerSettings.guidance})")
    gen.add_argument("--scheduler", default=SamplerSettings.scheduler, metavar="NAME",
                     help=f"one of {', '.join(SCHEDULERS)} "
                          f"(default {SamplerSettings.scheduler})")
    gen.add_argument("--batch-size", type=int, default=SamplerSettings.batch_size, metavar="B",
                     help=f"images denoised together (default {SamplerSettings.batch_size})")
    add_device_argument(gen, noise="the starting noise")
    gen.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=SamplerSettings.dtype,
                     help="the model's precision (default fp32; fp16 is the usual choice on a "
                          "GPU; recorded in the index when not fp32)")
    gen.add_argument("--model", type=Path, default=None, metavar="PATH",
                     help="a Stable Diffusion diffusers folder (default: the shipped Shapes model)")
    _method_arguments(gen)
    gen.add_argument("--attend-excite", action="store_true",
                     help="baseline: the base model sampled with Attend-and-Excite")
    gen.add_argument("--subject-words", default=None, metavar="W,W,...",
                     help="--attend-excite: the words whose attention it excites, the same for "
                          "every prompt (default: the shape nouns on a Shapes model, else each "
                          "phrase's last word)")
    gen.add_argument("--geneval-out", type=Path, default=None, metavar="DIR",
                     help="with --benchmark geneval: also write DIR/<prompt>/metadata.jsonl "
                          "and DIR/<prompt>/samples/<n>.png, GenEval's evaluator's layout")
    gen.add_argument("--compbench-out", type=Path, default=None, metavar="DIR",
                     help="with --benchmark t2i-compbench and one <category>_val.txt: also "
                          "write DIR/samples/<prompt>_<NNNNNN>.png, the layout T2I-CompBench's "
                          "evaluators read (prompts holding '_', '/' or '.png' are refused; "
                          f"complex_val.txt needs --num-images {COMPBENCH_IMAGES_PER_PROMPT}, "
                          "as its 3-in-1 evaluator reads 10 images a prompt)")
    gen.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run in DIR (its index and images) and discard an "
                          "unfinished one, and the prompt folders in --geneval-out DIR or the "
                          "samples/ folder in --compbench-out DIR")
    gen.add_argument("--resume", action="store_true",
                     help="finish the unfinished run of a killed `dpt generate` into DIR: keep "
                          "its images, make the rest (same flags as it had; a new run if there "
                          "is none)")
    add_threads_argument(gen)
    gen.set_defaults(run=run)


def _method_arguments(p: argparse.ArgumentParser) -> None:
    """DPT and self-correction: which weights, and how the score steers."""
    p.add_argument("--base", action="store_true",
                   help="sample the model without DPT weights")
    p.add_argument("--dpt", type=Path, default=None, metavar="PATH",
                   help="a DPT folder (default: the shipped Shapes DPT weights on the shipped "
                        "model; none on other models)")
    p.add_argument("--self-correct", type=float, nargs="?", const=DEFAULT_STEP,
                   default=None, metavar="ETA",
                   help=f"self-correct with step size ETA > 0 (default {DEFAULT_ETA:g} of "
                        "the noise level, see --self-correct-unit); on by default for a DPT "
                        "folder without LoRA (the shipped one), off for one with LoRA")
    p.add_argument("--no-self-correct", action="store_true",
                   help="sample a DPT folder without self-correction (its LoRA only)")
    low, high = MethodSpec.sc_range
    p.add_argument("--self-correct-range", type=float, nargs=2, default=MethodSpec.sc_range,
                   metavar=("LOW", "HIGH"),
                   help=f"correct only at timesteps LOW <= t <= HIGH (default {low:g} "
                        f"{high:g}, chosen on the Shapes model: docs/dpt-shapes.md)")
    p.add_argument("--self-correct-mode", choices=MODES, default=MethodSpec.sc_mode,
                   help="shared: the score reads the guidance's own pass (no extra forward "
                        "pass) and the correction moves the latent (default); carry: the "
                        "score reads z_t in a pass of its own and later steps continue from "
                        "the corrected latent; predict-only: only the conditional noise "
                        "prediction sees it, as the authors' sampler does; x0: the score "
                        "reads the predicted clean latent and the correction moves it")
    p.add_argument("--self-correct-unit", choices=UNITS, default=MethodSpec.sc_unit,
                   help="noise: the step is ETA x the noise level of z_t along the "
                        "gradient's direction, the same scale on every model (default); "
                        "raw: ETA x the score's gradient (eq. 9; its scale depends on the "
                        "model: about 10 on the Shapes model)")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    sampler = SamplerSettings(args.steps, args.guidance, args.scheduler, args.batch_size,
                              args.device, args.dtype)
    eta = None if args.self_correct is DEFAULT_STEP else args.self_correct  # None: the default
    check_self_correction(eta, tuple(args.self_correct_range), args.self_correct_mode,
                          args.self_correct_unit)
    _check_flags(args)
    prompts, benchmark = read_prompt_set(args)
    if args.compbench_out is not None:
        check_compbench_prompts([BenchmarkPrompt(text, meta) for text, meta
                                 in zip(prompts, benchmark)], args.num_images)
    model = model_folder(args.model)
    words = None if args.subject_words is None else \
        tuple(w.strip() for w in args.subject_words.split(",") if w.strip())
    asked = False if args.no_self_correct else (True if args.self_correct is not None else None)
    spec = choose_method(model, base=args.base, dpt=args.dpt, eta=eta,
                         sc_range=tuple(args.self_correct_range),
                         sc_mode=args.self_correct_mode, sc_unit=args.self_correct_unit,
                         attend_excite=args.attend_excite, subject_words=words,
                         self_correct=asked)
    job = FolderRun(model, prompts, args.out, spec, sampler, args.num_images, args.seed,
                    benchmark, args.overwrite, args.resume)
    layout = next(((flag, getattr(args, flag)) for flag in LAYOUTS
                   if getattr(args, flag) is not None), None)
    checked: dict[str, Path | None] = {"layout": None}
    with ExitStack() as held:  # the layout folder's lock, from its check to its layout

        def before_load(out: Path) -> None:
            checked["out"] = out
            if layout is not None:
                checked["layout"] = _layout_folder(*layout, out, args.overwrite)
                held.enter_context(output_lock(checked["layout"]))
            quiet_loading()

        records = generate_folder(job, before_load=before_load)
        print(f"wrote {len(records)} images and {INDEX} to {checked['out']}")
        if layout is not None:
            _, write, what = LAYOUTS[layout[0]]
            n = write(checked["out"], checked["layout"], overwrite=args.overwrite)
            print(f"wrote {what.format(n=n)} to {checked['layout']}")
    return 0


# --X-out dest: (its folder check, its writer, what it writes)
LAYOUTS = {"geneval_out": (check_geneval_out, write_geneval_layout,
                           "GenEval's layout of {n} prompt folders"),
           "compbench_out": (check_compbench_out, write_compbench_layout,
                             "T2I-CompBench's layout of {n} images")}


def _check_flags(args: argparse.Namespace) -> None:
    """Flags that cannot go together (the values are checked by the library's dataclasses)."""
    eta = args.self_correct
    if args.no_self_correct and eta is not None:
        raise ValueError("--no-self-correct cannot go with --self-correct")
    if args.base and (args.dpt is not None or eta is not None or args.no_self_correct):
        flag = "--dpt" if args.dpt is not None else (
            "--self-correct" if eta is not None else "--no-self-correct")
        raise ValueError(f"--base samples the model without DPT; it cannot go with {flag}")
    if args.attend_excite and (args.base or args.dpt is not None or eta is not None):
        raise ValueError("--attend-excite samples the base model its own way; it cannot go "
                         "with --base, --dpt or --self-correct")
    if args.subject_words is not None and not args.attend_excite:
        raise ValueError("--subject-words is read by --attend-excite only")
    if args.geneval_out is not None and args.benchmark != "geneval":
        raise ValueError("--geneval-out needs --benchmark geneval (GenEval's metadata goes "
                         "into each prompt folder)")
    if args.compbench_out is not None and args.benchmark != "t2i-compbench":
        raise ValueError("--compbench-out needs --benchmark t2i-compbench (the layout names "
                         "each image by its T2I-CompBench prompt)")


def _layout_folder(flag: str, folder: Path, out: Path, overwrite: bool) -> Path:
    """The checked layout folder of --geneval-out or --compbench-out: apart from --out."""
    folder = LAYOUTS[flag][0](folder, overwrite)
    name = "--" + flag.replace("_", "-")
    if folder == out or folder in out.parents or out in folder.parents:
        raise ValueError(f"{name} {folder} must lie apart from --out {out}, neither "
                         "inside the other")
    return folder
