"""Shared fixtures: a tiny random Stable Diffusion folder, built once per session.

The folder is what `StableDiffusionPipeline.from_pretrained` loads: a 2-level U-Net
(32/64 channels, 8x8x4 latents), a 2-level VAE (16x16 images), a 2-layer 32-wide CLIP text
encoder over the Shapes tokenizer, and DDIM. `tiny_model` is marked as a Shapes-world model
(shapes_world.json); `tiny_model_plain` is the same folder without the marker.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch


def build_tiny_pipeline():
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from dpt_t2i.shapes_model.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="session")
def tiny_model_plain(tmp_path_factory) -> Path:
    """A tiny random Stable Diffusion diffusers folder (no Shapes marker)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    build_tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_plain: Path) -> Path:
    """The tiny folder marked as a Shapes-world model (shapes_world.json with its words)."""
    from dpt_t2i.data.shapes.grammar import vocabulary

    folder = tiny_model_plain.parent / "tiny-shapes"
    shutil.copytree(tiny_model_plain, folder)
    (folder / "shapes_world.json").write_text(
        json.dumps({"world": "shapes", "vocabulary": list(vocabulary())}))
    return folder
