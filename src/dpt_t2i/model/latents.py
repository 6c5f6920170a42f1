"""Images to latents and back (the VAE), and latents to z_t (the DDPM forward process).

One latent encoder, one decoder and one noiser for training, evaluate-disc, DiffusionITM,
the referee and the demo's score, so that a seed gives every one of them the same z_t.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn


def encode_latents(vae: nn.Module, pixels: Tensor, chunk: int | None = None) -> Tensor:
    """z_0: the VAE posterior mean, scaled by the VAE's `scaling_factor`, in float32.

    Keeps the autograd graph (the referee ascends its score through the encoder); callers
    that need no gradients wrap it in `torch.no_grad()`.

    Args:
        vae: a diffusers `AutoencoderKL`.
        pixels: (N, 3, H, W) images in [-1, 1] (`data.samples.images_to_tensor`), on any
            device; each chunk moves to the VAE's device and dtype.
        chunk: images per VAE call (None: all in one).

    Returns:
        (N, C, h, w) float32 latents on the VAE's device.
    """
    step = chunk or max(len(pixels), 1)
    means = [vae.encode(pixels[i:i + step].to(vae.device, vae.dtype)).latent_dist.mean.float()
             for i in range(0, len(pixels), step)]
    return torch.cat(means) * float(vae.config.scaling_factor)


def decode_latents(vae: nn.Module, latents: Tensor) -> Tensor:
    """The inverse of `encode_latents`: (N, 3, H, W) images about [-1, 1], in the VAE's dtype,
    unclamped (callers clamp or round as they need); keeps the autograd graph.

    Args:
        latents: (N, C, h, w) scaled latents z_0.
    """
    scaled = latents.to(vae.dtype) / float(vae.config.scaling_factor)
    return vae.decode(scaled, return_dict=False)[0]


class Noiser:
    """z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps: `DDPMScheduler.add_noise` of a model's
    noise schedule, with eps drawn on the CPU from a caller's generator (so a seed gives the
    same z_t on every device).

    Each caller keeps its own random stream: evaluate-disc seeds a fresh generator per batch
    of images, the referee's score one generator for its lifetime, DiffusionITM one draw per
    timestep shared by all images, training its per-step generator.

    Args:
        scheduler_config: the model's scheduler config (`ModelBundle.scheduler_config`).
    """

    def __init__(self, scheduler_config: dict):
        self.scheduler = DDPMScheduler.from_config(scheduler_config)

    @property
    def alphas_cumprod(self) -> Tensor:
        """(T,) abar_t of the training schedule."""
        return self.scheduler.alphas_cumprod

    @staticmethod
    def noise_like(latents: Tensor, generator: torch.Generator) -> Tensor:
        """Standard normal noise of the latents' shape, drawn on the CPU, on their device and
        dtype."""
        return torch.randn(latents.shape, generator=generator).to(latents)

    def add(self, latents: Tensor, timesteps: Tensor | int, noise: Tensor) -> Tensor:
        """z_t of latents (N, C, h, w) with the given noise (N, C, h, w).

        Args:
            timesteps: (N,) per latent, or one int for all.
        """
        return self.scheduler.add_noise(latents, noise, _per_latent(timesteps, latents))

    @property
    def prediction_type(self) -> str:
        """What the model predicts: "epsilon" (the noise), "v_prediction" or "sample"."""
        return self.scheduler.config.prediction_type

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor | int) -> Tensor:
        """What the U-Net is trained to output for z_t = add(latents, timesteps, noise): the
        noise, the velocity sqrt(abar_t) eps - sqrt(1 - abar_t) z_0 (SD-2.1 768's
        v-prediction), or z_0, as the scheduler config's `prediction_type` says."""
        kind = self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return latents
        if kind == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, _per_latent(timesteps, latents))
        raise ValueError(f"the scheduler config's prediction_type {kind!r} is not one of "
                         "epsilon, v_prediction, sample")

    def __call__(self, latents: Tensor, timestep: Tensor | int,
                 generator: torch.Generator) -> Tensor:
        """z_t of latents (N, C, h, w) with fresh noise from `generator`."""
        return self.add(latents, timestep, self.noise_like(latents, generator))


def _per_latent(timesteps: Tensor | int, latents: Tensor) -> Tensor:
    """(N,) timesteps: the tensor given, or one int for every latent."""
    if torch.is_tensor(timesteps):
        return timesteps
    return torch.full((len(latents),), timesteps, device=latents.device)
