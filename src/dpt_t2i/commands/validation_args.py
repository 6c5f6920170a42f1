"""The `--validation-*` flags of `dpt probe`, `dpt tune` and `dpt tune-hn-itm`: images
sampled while the model trains (training/validation.py), by generation's sampler with
`dpt generate`'s defaults (25 DDIM steps, guidance 7.5)."""

from __future__ import annotations

import argparse
import math
from argparse import Namespace
from pathlib import Path

from ..data.prompt_text import normalise_prompt
from ..generation.guidance import (DEFAULT_ETA, DEFAULT_MODE, DEFAULT_T_RANGE, DEFAULT_UNIT,
                                   MAX_NOISE_ETA)
from ..generation.methods import (Method, SamplerSettings, check_lengths, check_vocabulary,
                                  sample_images)
from ..generation.sampling import check_seeds, check_steps
from ..io.bundle import read_scheduler_config, read_vocabulary
from ..training.validation import SampleFn, Validation, ValidationSettings
from .prompt_input import read_prompts

FLAGS = ("--validation-every", "--validation-images", "--validation-seed",
         "--validation-self-correct")


def add_validation_arguments(p: argparse.ArgumentParser, stage: str) -> None:
    g = p.add_argument_group("validation images (docs/training.md)")
    g.add_argument("--validation-prompt", action="append", metavar="TEXT",
                   help="a prompt sampled at each validation (repeat for several); images go "
                   "to <run-dir>/validation/step-XXXXXXXX/ and, with --tensorboard, to "
                   "tensorboard")
    g.add_argument("--validation-prompts-file", type=Path, metavar="FILE",
                   help="a UTF-8 text file of validation prompts, one a line")
    g.add_argument("--validation-every", type=int, default=None, metavar="N",
                   help="steps between validations (default: at each checkpoint; the last "
                   "step always validates)")
    g.add_argument("--validation-images", type=int, default=None, metavar="K",
                   help=f"images a prompt (default {ValidationSettings.images})")
    g.add_argument("--validation-seed", type=int, default=None, metavar="S",
                   help="image k of every validation has seed S + k, so the images of a "
                   f"prompt are comparable across steps (default {ValidationSettings.seed})")
    if stage == "hn-itm":  # no adapter to self-correct with
        return
    what = ("the eta of the self-correction probe's images are sampled with (the U-Net does "
            "not change in stage 1)") if stage == "probe" else (
            "also sample with self-correction by the adapter as it trains, at this eta")
    g.add_argument("--validation-self-correct", type=float, nargs="?", const=DEFAULT_ETA,
                   default=None, metavar="ETA", help=f"{what} (default {DEFAULT_ETA:g}, a "
                   "fraction of the noise level, as dpt generate's --self-correct)")


def validation_from_args(args: Namespace, model: Path) -> Validation | None:
    """The run's validation (None without validation prompts), checked before the model
    loads: flags named in one-line ValueErrors, and on a Shapes model every prompt in its
    vocabulary and grammar."""
    prompts = _prompts(args)
    eta = getattr(args, "validation_self_correct", None)
    if not prompts:
        given = [f for f in FLAGS if getattr(args, f[2:].replace("-", "_"), None) is not None]
        if given:
            raise ValueError(f"{given[0]} needs --validation-prompt TEXT or "
                             "--validation-prompts-file FILE")
        return None
    every, images = args.validation_every, args.validation_images
    if every is not None and every < 1:
        raise ValueError(f"--validation-every must be >= 1 step, got {every}")
    if images is not None and images < 1:
        raise ValueError(f"--validation-images must be >= 1, got {images}")
    images = ValidationSettings.images if images is None else images
    seed = ValidationSettings.seed if args.validation_seed is None else args.validation_seed
    check_seeds(seed, len(prompts) * images, "--validation-seed")
    if eta is not None and not (math.isfinite(eta) and 0 < eta <= MAX_NOISE_ETA):
        raise ValueError(f"--validation-self-correct must be in (0, {MAX_NOISE_ETA:g}], a "
                         f"fraction of the noise level (default {DEFAULT_ETA:g}), got {eta}")
    if eta is None and args.stage == "probe":  # the only images of stage 1 that change
        eta = DEFAULT_ETA
    vocabulary = read_vocabulary(model)
    if vocabulary is not None:
        try:
            check_vocabulary(prompts, vocabulary, model)
        except ValueError as err:
            raise ValueError(f"validation prompts: {err}") from None
    sampler = SamplerSettings()
    check_steps(sampler.steps, read_scheduler_config(model), "validation sampling steps")
    settings = ValidationSettings(tuple(prompts), every, images, seed, eta, sampler.batch_size)
    return Validation(settings, sampler_fn(sampler),
                      fields={"steps": sampler.steps, "guidance": sampler.guidance,
                              "scheduler": sampler.scheduler},
                      sc_fields={"sc_range": list(DEFAULT_T_RANGE), "sc_mode": DEFAULT_MODE,
                                 "sc_unit": DEFAULT_UNIT})


def check_validation_lengths(validation: Validation | None, bundle) -> None:
    """ValueError for a validation prompt the model's text encoder would truncate."""
    if validation is not None:
        try:
            check_lengths(bundle.tokenizer, list(validation.settings.prompts))
        except ValueError as err:
            raise ValueError(f"validation prompts: {err}") from None


def sampler_fn(sampler: SamplerSettings) -> SampleFn:
    """Generation's `sample_images` as training's validation calls it: the bundle's U-Net as
    it is (LoRA active), self-corrected by the heads as they train when eta > 0."""
    def sample(bundle, prompts, seeds, heads, config, eta):
        method = Method(heads=heads, config=config, eta=eta) if eta else Method()
        return sample_images(bundle, prompts, seeds, sampler.steps, sampler.guidance,
                             sampler.scheduler, method)

    return sample


def _prompts(args: Namespace) -> list[str]:
    """The validation prompts, as `normalise_prompt` leaves them ([] when none is given)."""
    given, file = args.validation_prompt, args.validation_prompts_file
    if given and file:
        raise ValueError("give validation prompts with --validation-prompt or with "
                         "--validation-prompts-file, not both")
    if file is not None:
        return read_prompts(Namespace(prompt=None, prompts_file=file))
    return [normalise_prompt(p, f"--validation-prompt number {i + 1}")
            for i, p in enumerate(given or [])]
