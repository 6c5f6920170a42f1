"""Validation images during training: the same prompts and seeds sampled at chosen steps
with the model as it trains, as diffusers' training scripts do (`--validation_prompt`,
`--num_validation_images`, a validation every N steps).

Stage 2 (`tune`) and `hn-itm` sample with the current LoRA (PEFT's layers active, not fused:
method `dpt`); with `self_correct` a stage with an adapter also samples with self-correction
by the adapter as it trains (eq. 9 of arXiv 2403.04321: method `dpt+sc`). Stage 1's U-Net
does not change, so a probe's validation images are self-corrected ones only. Image k of
every validation has seed `seed + k`, so a prompt's images are comparable from step to step.

Each validation writes `<run>/validation/step-XXXXXXXX/`: PNGs (`dpt-00000.png`,
`dpt+sc-00000.png`, ...) and `index.jsonl` (file, prompt, prompt_index, seed, step, method,
eta, the sampler's steps / guidance / scheduler), published whole (`image_folder.publish`);
with a tensorboard tracker the images also go to tensorboard, one tag a method. Only the main
process samples; the others wait for it.

Validation leaves training as it found it: every module's train / eval mode, the
parameters' gradients and the random generators (torch CPU and CUDA, numpy, random) are
restored, so a run with validation trains bit-identical weights to one without
(tests/test_validation.py).

The sampler comes from the caller: training may not import `generation/`, so the command
passes generation's `sample_images` wrapped as a `SampleFn` (commands/validation_args.py).
"""

from __future__ import annotations

import math
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..io.image_folder import numbered_records, publish, staging_folder, write_index, write_png
from ..model.config import DPTConfig
from ..model.heads import DPTHeads

# (bundle, prompts (B), seeds (B), heads or None, config or None, eta) -> (B, H, W, 3) uint8:
# the images of B prompts sampled by the bundle's U-Net as it is (LoRA active), and with
# self-correction by `heads` at step size `eta` when eta > 0
SampleFn = Callable[[object, list[str], list[int], "DPTHeads | None", "DPTConfig | None", float],
                    np.ndarray]


@dataclass(frozen=True)
class ValidationSettings:
    """What a run samples at its validation steps (`--validation-*` flags)."""

    prompts: tuple[str, ...]           # checked against the model by the caller
    every: int | None = None           # steps between validations; None: at each checkpoint
    images: int = 4                    # images a prompt (diffusers' --num_validation_images)
    seed: int = 0                      # image k of every validation has seed seed + k
    self_correct: float | None = None  # eta: also sample self-corrected by the adapter
    batch_size: int = 8                # images denoised together

    def __post_init__(self):
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise ValueError(f"validation needs at least one non-empty prompt, got "
                             f"{list(self.prompts)!r}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"validation every must be >= 1 step, got {self.every}")
        if self.images < 1 or self.batch_size < 1:
            raise ValueError(f"validation images and batch_size must be >= 1, got {self.images} "
                             f"and {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"validation seed must be >= 0, got {self.seed}")
        eta = self.self_correct
        if eta is not None and not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"validation self_correct must be a finite number > 0, got {eta}")


@dataclass
class Validation:
    """Validation settings and the sampler that makes the images."""

    settings: ValidationSettings
    sample: SampleFn                               # generation's sampler, given by the caller
    fields: dict = field(default_factory=dict)     # the sampler, for every index record
    sc_fields: dict = field(default_factory=dict)  # self-correction's settings, for its records


class Validator:
    """A run's validation: `due(done)` says when, `run(done)` samples and writes (a
    collective: every process calls it on the same steps; the main process samples)."""

    def __init__(self, validation: Validation, run_dir: Path, bundle, heads: DPTHeads | None,
                 config: DPTConfig, stage: str, checkpoint_every: int, steps: int,
                 accelerator):
        """
        Args:
            validation: what to sample and with what.
            run_dir: the run folder (images go under `validation/`).
            bundle: the model whose U-Net trains (LoRA attached in stages tune and hn-itm).
            heads: the heads as they train (None in stage hn-itm).
            config: the run's DPT config (block and condition of the self-correcting score).
            stage: "probe", "tune" or "hn-itm".
            checkpoint_every / steps: the run's; validations default to its checkpoints, and
                the last step always validates.
            accelerator: the run's `accelerate.Accelerator`.
        """
        settings = validation.settings
        if settings.self_correct is not None and heads is None:
            raise ValueError(f"validation with self-correction needs an adapter; stage {stage} "
                             "trains none")
        if stage == "probe" and settings.self_correct is None:
            raise ValueError("stage probe's U-Net does not change, so its validation images "
                             "are self-corrected ones: set self_correct")
        self.validation, self.settings = validation, settings
        self.out = Path(run_dir) / "validation"
        self.bundle, self.heads, self.config = bundle, heads, config
        self.every = settings.every or checkpoint_every
        self.steps, self.accelerator = steps, accelerator
        self.methods = ([] if stage == "probe" else [("dpt", 0.0)]) + (
            [("dpt+sc", settings.self_correct)] if settings.self_correct is not None else [])
        if accelerator.is_main_process:  # a run from a latent cache left them where they were
            bundle.vae.to(accelerator.device)
            bundle.text_encoder.to(accelerator.device)

    def due(self, done: int) -> bool:
        """Whether the step that makes `done` steps validates."""
        return done % self.every == 0 or done == self.steps

    def folder(self, done: int) -> Path:
        return self.out / f"step-{done:08d}"

    def run(self, done: int) -> None:
        """Sample and write the validation of step `done` (main process), then wait for it
        on every process. Sampling that diverges (a ValueError) is reported on stderr and
        the run goes on: one bad validation does not end a long run."""
        if self.accelerator.is_main_process:
            try:
                with preserved_state(self._modules()):
                    records, images = self._sample(done)
            except ValueError as err:
                print(f"validation at step {done} failed: {err}", file=sys.stderr, flush=True)
            else:
                self._write(done, records, images)
                self._log(done, records, images)
        self.accelerator.wait_for_everyone()

    def _modules(self) -> list[nn.Module]:
        parts = [self.bundle.unet, self.bundle.vae, self.bundle.text_encoder]
        return parts + ([self.heads] if self.heads is not None else [])

    def _sample(self, done: int) -> tuple[list[dict], list[np.ndarray]]:
        """Every method's records and (H, W, 3) uint8 images, method by method."""
        s, validation = self.settings, self.validation
        records, images = [], []
        for method, eta in self.methods:
            fields = {"step": done, "method": method, **validation.fields}
            if eta:
                fields.update(eta=eta, **validation.sc_fields)
            planned = numbered_records(list(s.prompts), s.images, s.seed, fields)
            for record in planned:
                record["file"] = f"{method}-{record['file']}"
            for start in range(0, len(planned), s.batch_size):
                batch = planned[start:start + s.batch_size]
                with self.accelerator.autocast():
                    out = validation.sample(self.bundle, [r["prompt"] for r in batch],
                                            [r["seed"] for r in batch],
                                            self.heads if eta else None, self.config, eta)
                images += list(out)
            records += planned
        return records, images

    def _write(self, done: int, records: list[dict], images: list[np.ndarray]) -> None:
        """The step's folder, written beside it and published whole (a validation repeated
        after a resume replaces the earlier one)."""
        out = self.folder(done)
        with staging_folder(out) as stage:
            for record, image in zip(records, images):
                write_png(stage / record["file"], image)
            write_index(stage, records)
            publish(stage, out, overwrite=True)

    def _log(self, done: int, records: list[dict], images: list[np.ndarray]) -> None:
        """Each method's images (prompt-major, as the index lists them) to tensorboard."""
        for tracker in getattr(self.accelerator, "trackers", []):
            if tracker.name != "tensorboard":
                continue
            for method, _ in self.methods:
                stack = np.stack([im for r, im in zip(records, images) if r["method"] == method])
                tracker.writer.add_images(f"validation/{method}", stack, done,
                                          dataformats="NHWC")


@contextmanager
def preserved_state(modules: list[nn.Module]) -> Iterator[None]:
    """Run a block with `modules` in eval mode and give training back what it had: each
    submodule's train / eval mode, each parameter's gradient, and the state of torch's CPU
    and CUDA generators, numpy's and Python's."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    grads = [(p, None if p.grad is None else p.grad.clone())  # a backward adds in place
             for module in modules for p in module.parameters()]
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            for module in modules:
                module.eval()
            yield
        finally:
            for m, mode in modes:
                m.training = mode
            for p, grad in grads:
                p.grad = grad
            random.setstate(py_state)
            np.random.set_state(np_state)
