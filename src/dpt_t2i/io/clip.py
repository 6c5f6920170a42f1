"""The Shapes CLIP (or any transformers CLIP folder) and its unit embeddings: the judge's
image space for the Fréchet distance, a zero-shot matcher and a referee."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from transformers import CLIPModel, CLIPTokenizer

from ..model.text import tokenize

CLIP_FOLDER = Path(__file__).resolve().parents[1] / "weights" / "shapes-clip"


def load_clip(clip_folder: Path = CLIP_FOLDER):
    """The Shapes CLIP (text and image towers), in eval mode."""
    return CLIPModel.from_pretrained(clip_folder, local_files_only=True).eval()


def load_clip_and_tokenizer(clip_folder: Path = CLIP_FOLDER):
    """(model, tokenizer) of a transformers CLIP folder (the Shapes CLIP by default)."""
    return load_clip(clip_folder), CLIPTokenizer.from_pretrained(clip_folder,
                                                                   local_files_only=True)


def clip_image_embeds(model, pixels: Tensor) -> Tensor:
    """(N, D) unit image embeddings of pixels (N, 3, H, W) in [-1, 1]; keeps the graph."""
    feats = model.get_image_features(pixel_values=pixels.to(next(model.parameters()).device))
    return torch.nn.functional.normalize(getattr(feats, "pooler_output", feats).float(), dim=-1)


def clip_text_embeds(model, tokenizer, texts: list[str]) -> Tensor:
    """(N, D) unit text embeddings."""
    ids = tokenize(tokenizer, texts).input_ids.to(next(model.parameters()).device)
    feats = model.get_text_features(input_ids=ids)
    return torch.nn.functional.normalize(getattr(feats, "pooler_output", feats).float(), dim=-1)
