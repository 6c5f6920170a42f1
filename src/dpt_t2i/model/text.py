"""Texts tokenized as `StableDiffusionPipeline` tokenizes them, for every text encoder call."""

from __future__ import annotations

from typing import Sequence

import torch


def tokenize(tokenizer, texts: Sequence[str]):
    """Pad every text to the tokenizer's `model_max_length` and truncate longer ones.

    Args:
        tokenizer: a transformers tokenizer (CLIPTokenizer for SD and the Shapes model).
        texts: B strings ("" for the unconditional text).

    Returns:
        A BatchEncoding with `input_ids` and `attention_mask`, each (B, L) tensors.
    """
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt")


def text_mask(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """(B, L) bool, True on each text's real tokens (start, words, end), False on padding."""
    return tokenize(tokenizer, texts).attention_mask.bool()


@torch.no_grad()
def encode_texts(text_encoder, tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both text views DPT uses, for a frozen text encoder; each distinct text encoded once.

    Returns:
        pooled: (N, D) `pooler_output`, the text side of matching and grounding.
        hidden: (N, L, D) last hidden states, what the U-Net attends to.
    """
    unique = sorted(set(texts))
    ids = tokenize(tokenizer, unique).input_ids
    device = next(text_encoder.parameters()).device
    out = text_encoder(ids.to(device))
    row = {t: i for i, t in enumerate(unique)}
    index = torch.tensor([row[t] for t in texts], device=device)
    return out.pooler_output[index].float(), out.last_hidden_state[index].float()
