"""Text-to-image sampling written out in the open: encode, draw noise, denoise, decode.

Each step does what `StableDiffusionPipeline.__call__` does (scale the input, predict the
noise for [uncond, cond] in one batch, classifier-free guidance, scheduler step), so the
same prompt, noise, scheduler, steps and guidance give the pipeline's image. The noise
prediction goes through `model_fn(x, t, context) -> eps`, by default the U-Net itself, so
a guidance method wraps the model k-diffusion-style instead of threading flags through here.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Sequence

import diffusers
import numpy as np
import torch

from ..model.latents import decode_latents
from ..model.text import encode_texts

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

    from ..io.bundle import ModelBundle

# command-line name -> diffusers scheduler class
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "ddpm": "DDPMScheduler",
}

MAX_SEED = 2**63 - 1  # a signed 64-bit integer: what torch.Generator, numpy and JSON readers share
# a latent is data (a few units after the VAE's scaling) plus noise of std <= init_noise_sigma;
# one past this many times that scale decodes to noise. Shapes model, 10 DDIM steps, largest
# |latent| of any step: 3.4 at the defaults, 16 at --guidance 100, 736 at 1000, 1.3e8 at 1e9
# (step 1); 82 at --self-correct 1e4, NaN at 1e30 (step 4)
LATENT_LIMIT = 1000.0

# (x (N, C, h, w) scaled model input, t scalar timestep, context (N, L, D)) -> eps (N, C, h, w),
# or (eps, delta) with delta (B, C, h, w) the move the model_fn made to its input's B latents
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                   "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def make_scheduler(name: str, config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler of kind `name` (a key of SCHEDULERS) built from a model's config."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def encode_prompts(bundle: ModelBundle, prompts: Sequence[str]) -> torch.Tensor:
    """Text-encoder states of the prompts, as `StableDiffusionPipeline.encode_prompt` gets them.

    Args:
        bundle: the model.
        prompts: B texts ("" for the unconditional embedding).

    Returns:
        (B, L, D) last hidden states in the text encoder's dtype; L is the tokenizer's
        model_max_length.
    """
    return encode_texts(bundle.text_encoder, bundle.tokenizer, prompts, dtype=None,
                        unique=False).hidden


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its own seed."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def initial_latents(seeds: Sequence[int], shape: tuple[int, int, int], scheduler: SchedulerMixin,
                    generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Starting noise: image k's from its own generator, so it depends only on seeds[k].

    Args:
        seeds: B seeds.
        shape: (C, h, w) of one latent (`ModelBundle.latent_shape()`).
        scheduler: with timesteps already set: sigma-based schedulers' init_noise_sigma
            depends on them, as in the pipeline.
        generators: the B generators to draw from (default: `image_generators(seeds)`).
            Pass the same list on to `sample` so a stochastic scheduler's step noise
            continues each image's own stream.

    Returns:
        (B, C, h, w) float32 CPU noise times scheduler.init_noise_sigma.
    """
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(steps) before initial_latents")
    generators = image_generators(seeds) if generators is None else generators
    if len(generators) != len(seeds):
        raise ValueError(f"got {len(generators)} generators for {len(seeds)} seeds")
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators])  # (B, C, h, w)
    return noise * scheduler.init_noise_sigma


def check_seeds(first: int, count: int, flag: str = "--seed") -> None:
    """ValueError naming `flag` unless the seeds first .. first + count - 1 lie in [0, MAX_SEED].

    Checked before a model loads: torch.Generator refuses a seed past 2**64 only when the
    first image's noise is drawn.
    """
    count = max(count, 1)
    last = first + count - 1
    if first < 0:
        raise ValueError(f"{flag} must be 0 or more, got {first}")
    if last > MAX_SEED:
        images = f"{count} image{'s' * (count != 1)}"
        raise ValueError(f"{flag} {first} gives the run's {images} seeds up to {last}; a seed "
                         f"must be at most {MAX_SEED} (2**63 - 1), so {flag} at most "
                         f"{MAX_SEED - count + 1} here")


def max_steps(scheduler_config: dict[str, Any]) -> int:
    """The most denoising steps a model's scheduler takes: its training schedule's length
    (num_train_timesteps; diffusers' default 1000)."""
    return int(scheduler_config.get("num_train_timesteps", 1000))


def check_steps(steps: int, scheduler_config: dict[str, Any], flag: str = "--steps") -> None:
    """ValueError naming `flag` when `steps` exceeds what the model's scheduler takes."""
    limit = max_steps(scheduler_config)
    if steps > limit:
        raise ValueError(f"{flag} must be at most {limit} on this model (its scheduler's "
                         f"num_train_timesteps), got {steps}")


def unet_model_fn(bundle: ModelBundle) -> ModelFn:
    """The plain noise prediction: the U-Net conditioned on `context`."""
    def model_fn(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return bundle.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]

    return model_fn


@torch.no_grad()
def sample(bundle: ModelBundle, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None,
           latents: torch.Tensor, steps: int, guidance: float, scheduler: SchedulerMixin,
           model_fn: ModelFn | None = None, progress: Callable[[int], None] | None = None,
           generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Denoise `latents` from pure noise to a clean latent with classifier-free guidance.

    Runs under no_grad; a `model_fn` that needs gradients (self-correction, eq. 9 of
    arXiv 2403.04321) opens `torch.enable_grad()` itself.

    Args:
        bundle: the model (its U-Net is the default `model_fn`).
        prompt_embeds: (B, L, D) from `encode_prompts`.
        negative_embeds: (B, L, D) unconditional embeddings (`encode_prompts(bundle, [""] * B)`);
            unused, and may be None, when guidance <= 1.
        latents: (B, C, h, w) from `initial_latents`.
        steps: number of inference steps (the scheduler's timesteps are set here).
        guidance: classifier-free guidance scale; > 1 batches [uncond, cond] as the pipeline does.
        scheduler: from `make_scheduler`; its per-run state is reset here.
        model_fn: replaces the U-Net call; gets the scaled (2B or B) batch, t and the context;
            returns eps, or (eps, delta) to move the latents by delta (in scaled-input units).
        progress: called with the number of steps done after each step.
        generators: B per-image generators for a stochastic scheduler's step noise.

    Returns:
        (B, C, h, w) denoised latents.

    Raises:
        ValueError: naming the step, when the latents stop being finite or grow past
            LATENT_LIMIT (a guidance scale or self-correction step far too large).
    """
    wrapped = model_fn is not None  # self-correction (or another guidance) moves the latents
    model_fn = model_fn or unet_model_fn(bundle)
    cfg = guidance > 1
    if cfg and negative_embeds is None:
        raise ValueError("guidance > 1 needs negative_embeds")
    # (2B, L, D) with guidance, else (B, L, D)
    context = torch.cat([negative_embeds, prompt_embeds]) if cfg else prompt_embeds
    latents = latents.to(device=prompt_embeds.device, dtype=prompt_embeds.dtype)
    scheduler.set_timesteps(steps, device=latents.device)
    step_kwargs = _step_kwargs(scheduler, generators)
    for i, t in enumerate(scheduler.timesteps):
        x = torch.cat([latents] * 2) if cfg else latents
        x = scheduler.scale_model_input(x, t)
        eps = model_fn(x, t, context)
        if isinstance(eps, tuple):
            eps, delta = eps
            latents = latents + delta / _input_scale(scheduler, t, latents)
        if cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
        _check_latents(latents, i, steps, t, guidance, scheduler, wrapped)
        if progress is not None:
            progress(i + 1)
    return latents


def _check_latents(latents: torch.Tensor, i: int, steps: int, t: torch.Tensor, guidance: float,
                   scheduler: SchedulerMixin, wrapped: bool) -> None:
    """ValueError naming step i and the settings to lower when the latents diverged: not
    finite, or past LATENT_LIMIT times the scheduler's starting noise scale."""
    limit = LATENT_LIMIT * max(1.0, float(scheduler.init_noise_sigma))
    finite = bool(torch.isfinite(latents).all())
    if finite and float(latents.abs().max()) <= limit:
        return
    what = "are no longer finite numbers" if not finite else \
        f"reached {float(latents.abs().max()):.3g}, past {limit:g}"
    lower = ["the self-correction step size (--self-correct)"] if wrapped else []
    if guidance > 1:
        lower.append(f"the guidance scale (--guidance, {guidance:g} here)")
    advice = f"lower {' or '.join(lower)}" if lower else "the model's weights may be broken"
    raise ValueError(f"sampling diverged at step {i + 1} of {steps} (timestep {int(t)}): the "
                     f"latents {what}; {advice}")


def _input_scale(scheduler: SchedulerMixin, t: torch.Tensor, latents: torch.Tensor
                 ) -> torch.Tensor:
    """c with scale_model_input(z) = c * z at step t (1 for DDIM, DPM-Solver, PNDM)."""
    return scheduler.scale_model_input(torch.ones_like(latents[:1]), t)


def _step_kwargs(scheduler: SchedulerMixin, generators: list[torch.Generator] | None) -> dict:
    """eta=0 for DDIM and the generators for schedulers that draw noise, as the pipeline passes."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


@torch.no_grad()
def decode(bundle: ModelBundle, latents: torch.Tensor) -> np.ndarray:
    """Latents to 8-bit RGB images, rounded as diffusers' VaeImageProcessor rounds them.

    Args:
        latents: (B, C, h, w) from `sample`.

    Returns:
        (B, H, W, 3) uint8 array.
    """
    images = decode_latents(bundle.vae, latents)  # (B, 3, H, W) in the VAE's dtype
    images = (images * 0.5 + 0.5).clamp(0, 1)  # [-1, 1] -> [0, 1]
    images = images.cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, 3)
    return (images * 255).round().astype(np.uint8)
