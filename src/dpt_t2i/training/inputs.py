"""A training batch through the frozen VAE and text encoder: latents and text tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.samples import DPTSample, collate
from ..model.config import DPTConfig
from ..model.latents import Noiser, encode_latents
from ..model.text import EncodedTexts, encode_texts


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
    return encode_batch(parts, collate(samples), config, need_caption_states)


@torch.no_grad()
def encode_batch(parts: "FrozenParts", batch: dict, config: DPTConfig,
                 need_caption_states: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """`prepare_inputs` of a batch already collated (`samples.collate`, e.g. by a loader)."""
    pixels = batch["pixels"].to(parts.device, non_blocking=True)  # async from pinned memory
    latents = encode_latents(parts.vae, pixels)
    texts = encode_batch_texts(parts.text_encoder, parts.tokenizer, batch)
    return latents, assemble_inputs(texts, batch, config, need_caption_states, parts.device)


@dataclass
class BatchTexts:
    """Every text a batch's step reads, encoded (`text.EncodedTexts`, float32)."""

    captions: EncodedTexts   # (B, ...) each image's caption
    negatives: EncodedTexts  # (B*K, ...) image-major: image b's k-th at row b*K + k
    refs: EncodedTexts       # (B, ...) referring expressions, "" where an image has none
    empty: EncodedTexts      # (1, ...) the empty prompt


def encode_batch_texts(text_encoder: nn.Module, tokenizer, batch: dict) -> BatchTexts:
    """The frozen text encoder's view of a collated batch's captions, negatives,
    expressions and the empty prompt, in one call (each distinct text once)."""
    n, k = len(batch["captions"]), len(batch["negatives"][0])
    texts = batch["captions"] + [t for negs in batch["negatives"] for t in negs] + batch["refexps"]
    encoded = encode_texts(text_encoder, tokenizer, texts + [""])
    return BatchTexts(encoded[:n], encoded[n:n + n * k], encoded[n + n * k:n + n * k + n],
                      encoded[-1:])


def assemble_inputs(texts: BatchTexts, batch: dict, config: DPTConfig, need_caption_states: bool,
                    device: torch.device) -> dict[str, Tensor]:
    """`prepare_inputs`' dict (see there) of encoded texts and a batch's boxes.

    Args:
        texts: on `device`.
        batch: `boxes`, `has_ref`, `object_boxes`, `object_mask` as `samples.collate` gives.
    """
    captions, negatives, refs = texts.captions, texts.negatives, texts.refs
    n = len(captions)
    k = len(negatives) // n
    inputs = {"caption_embeds": captions.pooled,
              "negative_embeds": negatives.pooled.view(n, k, -1),
              "ref_embeds": refs.pooled,
              "caption_tokens": captions.hidden, "caption_mask": captions.mask,
              "negative_tokens": negatives.hidden.unflatten(0, (n, k)),
              "negative_mask": negatives.mask.unflatten(0, (n, k)),
              "ref_tokens": refs.hidden, "ref_mask": refs.mask,
              **{key: batch[key].to(device, non_blocking=True)
                 for key in ("boxes", "has_ref", "object_boxes", "object_mask")}}
    empty_states = texts.empty.hidden.expand(n, -1, -1)
    # "each" makes its matching features under every candidate's own tokens (objective.py);
    # its "states" are the empty prompt's, for a grounding pass that shares no text
    inputs["states"] = captions.hidden if config.condition == "caption" else empty_states
    if config.ground_condition == "expression":
        inputs["ref_states"] = refs.hidden
    if need_caption_states:
        inputs["caption_states"] = captions.hidden
    return inputs


@dataclass
class FrozenParts:
    """The frozen modules a training step reads through."""

    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    noiser: Noiser
    device: torch.device


def frozen_parts(bundle, device: torch.device, encoders: bool = True) -> FrozenParts:
    """The bundle's frozen encoders, moved to `device` unless `encoders` is False (a run
    that reads a latent cache never calls them)."""
    if encoders:
        bundle.vae.to(device)
        bundle.text_encoder.to(device)
    return FrozenParts(bundle.vae, bundle.text_encoder, bundle.tokenizer,
                       Noiser(bundle.scheduler_config), device)
