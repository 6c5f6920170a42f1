"""Shared fixtures: a tiny random Stable Diffusion folder, built once per session.

The folder is what `StableDiffusionPipeline.from_pretrained` loads: a 2-level U-Net
(32/64 channels, 8x8x4 latents), a 2-level VAE (16x16 images), a 2-layer 32-wide CLIP text
encoder over the Shapes tokenizer, and DDIM. `tiny_model` is marked as a Shapes-world model
(shapes_world.json); `tiny_model_plain` is the same folder without the marker.

torch runs on DPT_TEST_THREADS CPU threads (default 1) for the whole session, and every test
starts on that many: the tiny models gain little from more threads, and with torch's default
(one per core) the suite took 18.5 min on 2 cores while another job kept one busy, against
172 s on a quiet machine.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

TEST_THREADS = int(os.environ.get("DPT_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(TEST_THREADS))  # for the commands run as processes


@pytest.fixture(autouse=True)
def _test_threads():
    """Each test starts on TEST_THREADS torch threads, whatever `--threads` the last one set."""
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)
    yield


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


@pytest.fixture(scope="session")
def shapes_parts(tmp_path_factory) -> dict[str, Path]:
    """Untrained Shapes parts saved as the trainers save them: {"vae", "clip", "unet"} folders.

    Each is a run folder's `final/` (VAE from build_vae, full CLIPModel from build_clip plus
    its tokenizer, U-Net from build_unet), with a `summary.json` beside it as a run leaves.
    """
    from dpt_t2i.shapes_model.clip import build_clip
    from dpt_t2i.shapes_model.tokenizer import build_tokenizer
    from dpt_t2i.shapes_model.unet import build_unet
    from dpt_t2i.shapes_model.vae import build_vae

    root = tmp_path_factory.mktemp("shapes-parts")
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    parts = {"vae": build_vae(), "clip": build_clip(tokenizer), "unet": build_unet()}
    folders = {}
    for name, model in parts.items():
        folders[name] = root / name / "final"
        model.save_pretrained(folders[name])
        (root / name / "summary.json").write_text(json.dumps({"step": 0, "part": name}))
    tokenizer.save_pretrained(folders["clip"])
    return folders


# (split, family) -> how many of the group's 4 images the "mixed" folder replaces by a wrong one
WRONG_IMAGES = {"id": {"object": 2, "pair": 1, "spatial": 3, "counting": 2, "mixed": 2},
                "ood": {"object": 2, "pair": 3, "spatial": 1, "counting": 2, "mixed": 2}}


@pytest.fixture(scope="session")
def judged_folders(tmp_path_factory) -> dict[str, Path]:
    """Two folders as `dpt generate` writes them (PNGs + index.jsonl), of clean Shapes renders.

    Both index the first 4 ID and 4 OOD benchmark prompts of each family (40 images, ID
    first; seed = position). In "clean" each image renders a scene made for its prompt. In
    "mixed" the first k images of each (split, family) group, k from WRONG_IMAGES, render
    instead a different prompt of the same family whose scene does not satisfy the indexed one.
    """
    import numpy as np
    from PIL import Image

    from dpt_t2i.data.shapes.grammar import random_prompt, satisfied, scene_for
    from dpt_t2i.data.shapes.splits import benchmark_prompts
    from dpt_t2i.data.shapes.world import render

    root = tmp_path_factory.mktemp("judged")
    prompts = [p for split in ("id", "ood") for p in benchmark_prompts(split, 4)]
    splits = ["id"] * (len(prompts) // 2) + ["ood"] * (len(prompts) // 2)
    seen: dict[tuple[str, str], int] = {}
    for name in ("clean", "mixed"):
        (root / name).mkdir()
    records = []
    for i, (prompt, split) in enumerate(zip(prompts, splits)):
        rng = np.random.default_rng([5, i])
        file = f"{i:05d}.png"
        Image.fromarray(render(scene_for(prompt, rng))).save(root / "clean" / file)
        group = (split, prompt.family)
        seen[group] = seen.get(group, 0) + 1
        shown = prompt
        if seen[group] <= WRONG_IMAGES[split][prompt.family]:
            while True:  # a different prompt of the family, false of the indexed prompt
                shown = random_prompt(rng, prompt.family)
                objects = scene_for(shown, rng)
                if shown.text != prompt.text and not satisfied(prompt, objects):
                    break
        else:
            objects = scene_for(prompt, rng)
        Image.fromarray(render(objects)).save(root / "mixed" / file)
        records.append({"file": file, "prompt": prompt.text, "seed": i, "steps": 2,
                        "method": "base", "shown": shown.text})
    for name in ("clean", "mixed"):
        (root / name / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"clean": root / "clean", "mixed": root / "mixed"}


@pytest.fixture(scope="session")
def tiny_dpt(tiny_model, tmp_path_factory) -> Path:
    """A stage-2 DPT folder for `tiny_model`: small random heads on block up0 (64 channels) and
    LoRA on every attention projection with random (non-zero) B matrices, rank 2, alpha 4."""
    from diffusers import UNet2DConditionModel

    from dpt_t2i.io.dpt_folder import save_dpt
    from dpt_t2i.model.adapter import AdapterConfig
    from dpt_t2i.model.config import DPTConfig
    from dpt_t2i.model.heads import DPTHeads
    from dpt_t2i.model.lora import LoraSettings, add_lora

    torch.manual_seed(0)
    adapter = AdapterConfig(feature_dim=64, text_dim=32, d_model=32, n_heads=2, ffn_dim=64,
                            n_ground_queries=4, n_match_queries=3, max_hw=8)
    lora = LoraSettings(rank=2, alpha=4.0, targets="all")
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    add_lora(unet, lora)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp("dpt") / "tiny-dpt"
    save_dpt(folder, DPTHeads(adapter), DPTConfig(block="up0", adapter=adapter, lora=lora), unet)
    return folder
