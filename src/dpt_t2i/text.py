"""Texts tokenized as `StableDiffusionPipeline` tokenizes them, for every text encoder call."""

from __future__ import annotations

from typing import Sequence


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
