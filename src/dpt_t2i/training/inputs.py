"""A training batch through the frozen VAE and text encoder: latents and text tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.samples import DPTSample, collate
from ..model.config import DPTConfig
from ..model.text import encode_texts, text_mask


@torch.no_grad()
def prepare_inputs(parts: "FrozenParts", samples: list[DPTSample], config: DPTConfig,
                   need_caption_states: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """Latents and text tensors of a batch from the frozen VAE and text encoder.

    Returns:
        latents: (B, C, h, w) scaled VAE posterior means.
        inputs: `caption_embeds` (B, D), `negative_embeds` (B, K, D), `ref_embeds` (B, D),
            token states and real-token masks of the three kinds of text: `caption_tokens`
            (B, L, D) / `caption_mask` (B, L), `negative_tokens` (B, K, L, D) /
            `negative_mask` (B, K, L), `ref_tokens` (B, L, D) / `ref_mask` (B, L),
            `boxes` (B, 4), `object_boxes` (B, O, 4), `object_mask` (B, O), `has_ref` (B,),
            `states` (B, L, D) the matching pass's U-Net condition, and `ref_states` /
            `caption_states` (B, L, D) where needed.
    """
    batch = collate(samples)
    device = parts.device
    pixels = batch["pixels"].to(device, parts.vae.dtype)
    latents = parts.vae.encode(pixels).latent_dist.mean.float() * parts.scaling_factor
    n, k = len(samples), len(batch["negatives"][0])
    texts = batch["captions"] + [t for negs in batch["negatives"] for t in negs] + batch["refexps"]
    pooled, hidden = encode_texts(parts.text_encoder, parts.tokenizer, texts + [""])
    inputs = {"caption_embeds": pooled[:n], "negative_embeds": pooled[n:n + n * k].view(n, k, -1),
              "ref_embeds": pooled[n + n * k:n + n * k + n],
              "caption_tokens": hidden[:n],
              "negative_tokens": hidden[n:n + n * k].unflatten(0, (n, k)),
              "ref_tokens": hidden[n + n * k:n + n * k + n],
              "boxes": batch["boxes"].to(device), "has_ref": batch["has_ref"].to(device),
              "object_boxes": batch["object_boxes"].to(device),
              "object_mask": batch["object_mask"].to(device)}
    masks = text_mask(parts.tokenizer, texts).to(device)
    inputs["caption_mask"], inputs["ref_mask"] = masks[:n], masks[n + n * k:]
    inputs["negative_mask"] = masks[n:n + n * k].unflatten(0, (n, k))
    caption_states = hidden[:n]
    empty_states = hidden[-1:].expand(n, -1, -1)
    inputs["states"] = caption_states if config.condition == "caption" else empty_states
    if config.ground_condition == "expression":
        inputs["ref_states"] = hidden[n + n * k:n + n * k + n]
    if need_caption_states:
        inputs["caption_states"] = caption_states
    return latents, inputs


@dataclass
class FrozenParts:
    """The frozen modules a training step reads through."""

    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    noise_scheduler: object
    device: torch.device

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


def frozen_parts(bundle, device: torch.device) -> FrozenParts:
    from diffusers import DDPMScheduler

    bundle.vae.to(device)
    bundle.text_encoder.to(device)
    return FrozenParts(bundle.vae, bundle.text_encoder, bundle.tokenizer,
                       DDPMScheduler.from_config(bundle.scheduler_config), device)
