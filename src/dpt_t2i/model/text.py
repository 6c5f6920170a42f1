"""The one text encoder call of the project: texts tokenized and encoded as
`StableDiffusionPipeline` encodes them, for sampling, training, evaluation and the score."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class EncodedTexts:
    """The three views of N texts that DPT reads, one row per text."""

    pooled: torch.Tensor  # (N, D) `pooler_output`: the text side of matching and grounding
    hidden: torch.Tensor  # (N, L, D) last hidden states: what the U-Net attends to
    mask: torch.Tensor    # (N, L) bool, True on real tokens (start, words, end): the adapter's

    def __len__(self) -> int:
        return len(self.pooled)

    def __getitem__(self, index) -> EncodedTexts:
        """The rows `index` selects (a slice, a list or a tensor of row indices)."""
        return EncodedTexts(self.pooled[index], self.hidden[index], self.mask[index])


@torch.no_grad()
def encode_texts(text_encoder, tokenizer, texts: Sequence[str],
                 dtype: torch.dtype | None = torch.float32, unique: bool = True) -> EncodedTexts:
    """Encode texts for a frozen text encoder.

    The attention mask goes to the encoder exactly when its config sets
    `use_attention_mask` (the rule of `StableDiffusionPipeline.encode_prompt`), so sampling,
    training, evaluation and the score see the same states on every encoder.

    A text's states hardly depend on the other texts of the call: bit-identical for the
    shipped Shapes encoder on the CPUs measured, within ~3e-7 for the tests' tiny random
    encoder (tests/test_score.py).

    Args:
        text_encoder: a transformers text model (CLIPTextModel) with `pooler_output`.
        tokenizer: its tokenizer.
        texts: N strings ("" for the unconditional text); repeats are allowed.
        dtype: of `pooled` and `hidden`: float32 (default) for the adapter and the losses;
            None keeps the encoder's dtype, as the pipeline does for sampling.
        unique: encode each distinct text once (default); False encodes the N texts as
            given, in one batch, as the pipeline does.

    Returns:
        `EncodedTexts` with rows in the order of `texts`, on the encoder's device.
    """
    batch = sorted(set(texts)) if unique else list(texts)
    tokens = tokenize(tokenizer, batch)
    weight = next(text_encoder.parameters())
    mask = tokens.attention_mask.to(weight.device)  # (U, L)
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    out = text_encoder(tokens.input_ids.to(weight.device),
                       attention_mask=mask if use_mask else None)
    index: torch.Tensor | slice = slice(None)  # the batch's rows are the texts'
    if unique:
        row = {t: i for i, t in enumerate(batch)}
        index = torch.tensor([row[t] for t in texts], device=weight.device, dtype=torch.long)
    dtype = dtype or getattr(text_encoder, "dtype", weight.dtype)
    return EncodedTexts(out.pooler_output[index].to(dtype),
                        out.last_hidden_state[index].to(dtype), mask[index].bool())
