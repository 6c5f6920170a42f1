"""Attend-and-Excite (Chefer et al., SIGGRAPH 2023) as a baseline sampler, through diffusers'
`StableDiffusionAttendAndExcitePipeline` built from a loaded model bundle.

Before each of the first `max_iter_to_alter` steps it moves the latent so that every subject
token's strongest cross-attention patch grows. Subject tokens are found automatically:
- on a Shapes model, the shape nouns ("circle", "squares", ...);
- on other models, the last word of each phrase of the prompt split at "and", "with" and
  commas ("a green bench and a red car" -> bench, car), the structure of CC-500 and ABC-6K;
  `subject_words` overrides the rule.
A word of several tokens is represented by its last token.

The pipeline starts from the same seeded noise as `dpt generate`'s other methods, uses the
same scheduler, and its latents are decoded the same way, so methods differ only in sampling.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from ..data.prompt_text import quote
from ..io.bundle import ModelBundle
from .sampling import decode

SPLIT = re.compile(r"\s*(?:,|\band\b|\bwith\b)\s*")


def subject_words(prompt: str, nouns: Sequence[str] | None = None) -> list[str]:
    """The prompt's subject words: those in `nouns` when given, else each phrase's last word."""
    words = prompt.lower().split()
    if nouns is not None:
        known = {n.lower() for n in nouns}
        return [w for w in words if w in known]
    return [phrase.split()[-1] for phrase in SPLIT.split(prompt.lower().strip(" .")) if phrase]


def token_indices(tokenizer, prompt: str, words: Sequence[str]) -> list[int]:
    """Positions, in the tokenized prompt (start token = 0), of each word's last token.

    Raises:
        ValueError: naming a word that the prompt does not contain.
    """
    positions, ids = [], [tokenizer.bos_token_id]
    spans = []
    for word in prompt.split():
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        spans.append((word.lower().strip(".,"), len(ids) + len(pieces) - 1))
        ids += pieces
    used: set[int] = set()
    for word in words:
        found = [pos for w, pos in spans if w == word.lower() and pos not in used]
        if not found:
            raise ValueError(f"subject word {quote(word)} is not a word of the prompt "
                             f"{quote(prompt)}")
        used.add(found[0])
        positions.append(found[0])
    return positions


def attention_resolution(bundle: ModelBundle) -> tuple[int, int]:
    """The cross-attention map size A&E reads: a quarter of the latent side where the U-Net
    attends there and it is at least 8 (16x16 on SD's 64x64 latents, as the authors chose),
    else the largest side at which it attends to the text (8x8 on the Shapes U-Net)."""
    config = bundle.unet.config
    side, levels = int(config.sample_size), len(config.down_block_types)
    sides = {side // 2 ** i for i, kind in enumerate(config.down_block_types)
             if "CrossAttn" in kind}
    sides |= {side // 2 ** (levels - 1 - j) for j, kind in enumerate(config.up_block_types)
              if "CrossAttn" in kind}
    if "CrossAttn" in str(config.mid_block_type):
        sides.add(side // 2 ** (levels - 1))
    if not sides:
        raise ValueError("this U-Net has no cross-attention for Attend-and-Excite to read")
    res = side // 4 if side // 4 >= 8 and side // 4 in sides else max(sides)
    return res, res


def build_pipeline(bundle: ModelBundle, scheduler):
    """diffusers' A&E pipeline on the bundle's modules (no safety checker: a local model)."""
    from diffusers import StableDiffusionAttendAndExcitePipeline

    pipe = StableDiffusionAttendAndExcitePipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer,
        unet=bundle.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_attend_excite(pipe, bundle: ModelBundle, prompts: list[str], indices: list[list[int]],
                         latents: torch.Tensor, steps: int, guidance: float,
                         max_iter_to_alter: int | None = None, scale_factor: float = 20.0
                         ) -> np.ndarray:
    """(B, H, W, 3) uint8 images, one per prompt, from `initial_latents`-style noise.

    Args:
        indices: each prompt's subject token positions (`token_indices`).
        latents: (B, C, h, w) starting noise already times init_noise_sigma.
        max_iter_to_alter: steps that move the latent (default: the first half, as A&E's
            25 of 50).
        scale_factor: A&E's step size (its default 20).
    """
    if any(not ix for ix in indices):
        raise ValueError("every prompt needs at least one subject token for Attend-and-Excite")
    sigma = float(pipe.scheduler.init_noise_sigma)
    out = pipe(prompt=prompts, token_indices=indices, num_inference_steps=steps,
               guidance_scale=guidance, latents=latents / sigma, output_type="latent",
               max_iter_to_alter=steps // 2 if max_iter_to_alter is None else max_iter_to_alter,
               scale_factor=scale_factor, attn_res=attention_resolution(bundle))
    return decode(bundle, out.images)
