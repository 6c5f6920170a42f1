"""The Shapes referee (`model.shapes_referee`) as a referee of referee generation: a scorer
with `generation.referee`'s signature, differentiable in the image."""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.shapes_referee import ShapesReferee, token_ids
from .referee import Scorer


def shapes_referee_scorer(model: ShapesReferee) -> Scorer:
    """The referee's match logit of each image and its prompt.

    Args:
        model: a Shapes referee (`io.shapes_referee.load_shapes_referee`); its weights stay
            frozen.

    Returns:
        score(images (B, 3, H, W) in [-1, 1], B prompts) -> (B,) logits, with the graph to
        the images (images of another size than the world's 64 are resized first). A prompt
        of more words than the referee reads is a ValueError.
    """
    model = model.eval().requires_grad_(False)
    dtype = next(model.parameters()).dtype
    cache: dict[str, Tensor] = {}  # prompt -> its (1, L) token ids

    def score(images: Tensor, prompts: list[str]) -> Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images and {len(prompts)} prompts")
        missing = sorted(set(prompts) - set(cache))
        if missing:
            cache.update(zip(missing, token_ids(model.config, missing).split(1)))
        ids = torch.cat([cache[p] for p in prompts]).to(images.device)
        pairs = torch.arange(len(prompts), device=images.device).unsqueeze(1).expand(-1, 2)
        return model.match(model.encode_images(images.to(dtype)), ids, pairs)

    return score
