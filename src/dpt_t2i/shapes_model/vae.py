"""Train the Shapes world's KL VAE (64x64x3 pixels <-> 8x8x4 latents)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..data.shapes.dataset import images_to_tensor
from ..data.shapes.world import BACKGROUND, random_scene, render
from .loop import run_loop


def build_vae() -> AutoencoderKL:
    """The Shapes VAE: f=8, 4 latent channels, thin full-resolution level (it dominates cost)."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def scene_batch(seed: int, step: int, batch: int, crop: int | None) -> torch.Tensor:
    """Rendered random scenes for one step, optionally cut to random `crop` squares."""
    rng = np.random.default_rng([seed, step])
    images = np.stack([render(random_scene(rng)) for _ in range(batch)])
    if crop is not None:
        xs, ys = rng.integers(0, 64 - crop + 1, size=(2, batch))
        images = np.stack([im[y:y + crop, x:x + crop] for im, x, y in zip(images, xs, ys)])
    return images_to_tensor(images)


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, fg_weight: float, kl_weight: float,
             generator: torch.Generator, halo: int = 0,
             decoder_only: bool = False) -> dict[str, torch.Tensor]:
    """Foreground-weighted L1 reconstruction and KL terms (unweighted by kl_weight).

    Pixels of objects, and with `halo` > 0 background pixels within `halo` pixels of one
    (where a blurry decoder bleeds), weigh `fg_weight` times a plain background pixel.
    With `decoder_only` the encoder runs without gradients and the KL term is zero.
    """
    with torch.set_grad_enabled(not decoder_only):
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator)
    recon = vae.decode(z).sample
    background = torch.tensor(BACKGROUND).view(1, 3, 1, 1).div(127.5).sub(1.0)
    fg = ((x - background).abs().amax(1, keepdim=True) > 0.02).float()
    if halo > 0:
        fg = F.max_pool2d(fg, 2 * halo + 1, stride=1, padding=halo)
    weight = 1.0 + (fg_weight - 1.0) * fg
    l1 = ((recon - x).abs() * weight).mean() / weight.mean()
    kl = posterior.kl().mean() if not decoder_only else torch.zeros(())
    return {"l1": l1, "kl": kl, "total": l1 + kl_weight * kl}


def train_vae(run_dir: Path, steps: int = 6000, batch: int = 32, lr: float = 1e-3,
              crop_steps: int | None = None, crop: int = 32, fg_weight: float = 10.0,
              kl_weight: float = 1e-6, halo: int = 0, init: Path | None = None,
              decoder_only: bool = False, seed: int = 0, resume: bool = True,
              checkpoint_every: int = 250) -> dict:
    """Train the VAE; the first `crop_steps` steps (default 3/4) see `crop`-pixel crops.

    With `init` (a saved VAE folder) and `decoder_only`, this is SD's decoder fine-tune:
    the encoder, and so every latent a U-Net was trained on, stays exactly as it was.
    """
    torch.manual_seed(seed)
    crop_steps = int(steps * 0.75) if crop_steps is None else crop_steps
    vae = build_vae() if init is None else AutoencoderKL.from_pretrained(init)
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)

    def step_fn(step: int) -> dict[str, float]:
        x = scene_batch(seed, step, batch, crop if step < crop_steps else None)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        losses = vae_loss(vae, x, fg_weight, kl_weight, gen, halo, decoder_only)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        return {k: float(v) for k, v in losses.items()}

    summary = run_loop(run_dir, steps, step_fn, {"vae": vae}, opt, lr, resume,
                       checkpoint_every, "vae")
    if init is None:
        vae.register_to_config(scaling_factor=latent_scale(vae, seed))
    vae.save_pretrained(Path(run_dir) / "final")
    summary["scaling_factor"] = vae.config.scaling_factor
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, seed: int, n: int = 1024) -> float:
    """1 / std of posterior means over random scenes, the SD recipe's scaling factor."""
    x = scene_batch(seed + 1, 10**9, n, None)
    z = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in x.split(128)])
    return float(1.0 / z.std())
