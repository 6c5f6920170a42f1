"""Train the Shapes U-Net with the Stable Diffusion recipe at small scale.

Frozen VAE and text encoder; a fixed pool of training scenes is encoded once (posterior
mean and std cached) and each step samples a latent from the cached posterior; epsilon
prediction under SD's scaled-linear DDPM schedule; 10% of captions dropped to the empty
prompt for classifier-free guidance; an EMA of the weights is what ships.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from ..data.shapes.dataset import images_to_tensor, make_sample
from ..model.text import encode_texts as encode_batch
from .loop import run_loop

TEXT_WIDTH = 128  # the Shapes CLIP text encoder's hidden size (shapes_model.clip.build_clip)


def build_unet(cross_attention_dim: int = TEXT_WIDTH) -> UNet2DConditionModel:
    """5.9 M parameters on 8x8x4 latents: cross-attention at 8x8 and 4x4, plain 2x2 bottom.

    Args:
        cross_attention_dim: width of the text encoder's hidden states it attends to.
    """
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32,
    )


def build_noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion's training schedule."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon",
                         clip_sample=False)


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, seed: int, size: int, path: Path) -> dict:
    """Encode `size` training samples once; cached at `path` (reused when it matches)."""
    if path.is_file():
        pool = load_file(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta["seed"] == seed and meta["size"] == size:
            return {**pool, "texts": meta["texts"]}
    means, stds, texts = [], [], []
    for start in tqdm(range(0, size, 256), desc="encode pool", mininterval=2.0):
        samples = [make_sample(seed, i) for i in range(start, min(size, start + 256))]
        posterior = vae.encode(images_to_tensor([s.image for s in samples])).latent_dist
        means.append(posterior.mean.half())
        stds.append(posterior.std.half())
        texts += [s.prompt.text for s in samples]
    # the encoder may return channels-last tensors; safetensors stores contiguous ones only
    pool = {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}
    save_file(pool, path)
    path.with_suffix(".json").write_text(json.dumps({"seed": seed, "size": size, "texts": texts}))
    return {**pool, "texts": texts}


@torch.no_grad()
def encode_texts(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 texts: list[str]) -> dict[str, torch.Tensor]:
    """Last hidden states of each distinct text and of "", through the project's one text
    encoder call (`model.text.encode_texts`), 512 texts a call."""
    unique = sorted(set(texts) | {""})
    out = {}
    for i in range(0, len(unique), 512):
        chunk = unique[i:i + 512]
        out.update(zip(chunk, encode_batch(text_encoder, tokenizer, chunk, unique=False).hidden))
    return out


def train_unet(run_dir: Path, vae_dir: Path, clip_dir: Path, steps: int = 8000,
               batch: int = 64, lr: float = 3e-4, pool_size: int = 60000,
               cfg_dropout: float = 0.1, ema_decay: float = 0.999, seed: int = 0,
               resume: bool = True, checkpoint_every: int = 250) -> dict:
    """Train the U-Net on the frozen VAE's latents and the frozen text encoder's states."""
    torch.manual_seed(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    text_encoder = CLIPTextModel.from_pretrained(clip_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    pool = encode_pool(vae, seed, pool_size, run_dir / "pool.safetensors")
    embeds = encode_texts(text_encoder, tokenizer, pool["texts"])
    scale = vae.config.scaling_factor
    unet = build_unet(text_encoder.config.hidden_size)
    noise_scheduler = build_noise_scheduler()
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)

    def step_fn(step: int) -> dict[str, float]:
        rng = np.random.default_rng([seed, step])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.from_numpy(rng.integers(0, pool_size, size=batch))
        eps = torch.randn(pool["mean"][idx].shape, generator=gen)
        latents = (pool["mean"][idx].float() + pool["std"][idx].float() * eps) * scale
        texts = [pool["texts"][i] if rng.random() >= cfg_dropout else "" for i in idx.tolist()]
        cond = torch.stack([embeds[t] for t in texts])  # (B, L, D)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
        pred = unet(noise_scheduler.add_noise(latents, noise, t), t, cond).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        return {"mse": float(loss)}

    @torch.no_grad()
    def update_ema(step: int) -> None:
        decay = min(ema_decay, (1 + step) / (10 + step))
        for e, p in zip(ema.parameters(), unet.parameters()):
            e.lerp_(p, 1 - decay)

    summary = run_loop(run_dir, steps, step_fn, {"unet": unet, "ema": ema}, opt, lr, resume,
                       checkpoint_every, "unet", after_step=update_ema)
    # SD's recipe scales latents to unit variance; record what the U-Net actually saw.
    summary["scaled_latent_std"] = float((pool["mean"].float() * scale).std())
    ema.save_pretrained(run_dir / "final")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
