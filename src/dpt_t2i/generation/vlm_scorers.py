"""Referee scores of BLIP-2 and CLIP (io/vlm_referees.py), differentiable in the image.

Each scorer takes decoded images (B, 3, H, W) in [-1, 1] and B prompts and returns (B,)
scores, as `referee.Scorer`; the image goes through the model's image processor written in
torch (`preprocess`: resize, centre crop, rescale, normalise), so the gradient reaches it.
Scores are what the model's own forward gives for the processor's inputs:

- blip2-itm: log p(match) of the ITM head (`use_image_text_matching_head=True`; the softmax
  of its two logits, mean over the queries): the log of what the referee of arXiv 2402.16305
  maximises (its loss is -log p(match), `blip2_sds.py` of the authors' code);
- blip2-itc: the cosine of the image's query embeddings (the best of the queries) and the
  text's [CLS] embedding, both projected (`use_image_text_matching_head=False`);
- clip: the cosine of CLIP's image and text embeddings (`referee.clip_scorer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io.vlm_referees import ImagePrep, VLMReferee
from .referee import Scorer, clip_scorer


def preprocess(images: Tensor, prep: ImagePrep) -> Tensor:
    """The pixel values the model reads, as its image processor makes them, keeping the graph.

    Args:
        images: (N, 3, H, W) in [-1, 1].
        prep: the folder's image processor.

    Returns:
        (N, 3, h, w) float32: resized with the processor's filter, antialiased as PIL is
        (within about one 8-bit level of it), clamped to [0, 1] as an 8-bit image is, centre
        cropped, rescaled and normalised.
    """
    x = (images.float() + 1) / 2
    size = prep.size
    if size is None and prep.shortest_edge is not None:
        h, w = x.shape[-2:]
        short, long = (h, w) if h <= w else (w, h)
        other = int(prep.shortest_edge * long / short)
        size = (prep.shortest_edge, other) if h <= w else (other, prep.shortest_edge)
    if size is not None and tuple(size) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=size, mode=prep.mode, antialias=True, align_corners=False)
        x = x.clamp(0, 1)
    if prep.crop is not None:
        h, w = x.shape[-2:]
        ch, cw = prep.crop
        if ch > h or cw > w:
            raise ValueError(f"the image processor crops {ch}x{cw} from a {h}x{w} image")
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., top:top + ch, left:left + cw]
    mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1)
    return (x * prep.scale - mean) / std


def vlm_scorer(referee: VLMReferee) -> Scorer:
    """The scorer of a loaded referee (see the module's docstring for what each scores)."""
    if referee.referee == "clip":
        base = clip_scorer(referee.model, referee.tokenizer)
        return lambda images, prompts: base(preprocess(images, referee.prep), prompts)
    itm = referee.referee == "blip2-itm"
    model, tokenizer, config = referee.model, referee.tokenizer, referee.config

    def score(images: Tensor, prompts: list[str]) -> Tensor:
        pixels = preprocess(images, referee.prep).to(model.dtype)
        texts = prompts if itm else list(dict.fromkeys(prompts))  # ITC: each text once
        ids, mask = blip2_text_inputs(tokenizer, config, texts, pixels.device)
        out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                    use_image_text_matching_head=itm)
        logits = out.logits_per_image.float()  # ITM: (N, 2); ITC: (N, len(texts))
        if itm:
            return logits.log_softmax(-1)[:, 1]
        column = torch.tensor([texts.index(p) for p in prompts], device=logits.device)
        return logits.gather(1, column[:, None])[:, 0]

    return score


def blip2_text_inputs(tokenizer, config, texts: list[str], device: torch.device | str = "cpu"
                      ) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), each (T, L), of texts for Blip2ForImageTextRetrieval:
    padded to the longest, cut at the Q-Former's positions; where the config has an image
    token, led by num_query_tokens of them, as Blip2Processor puts them (the model drops
    them again)."""
    limit = min(tokenizer.model_max_length, config.qformer_config.max_position_embeddings)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=limit,
                    return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if config.image_token_index is not None:
        lead = (len(texts), config.num_query_tokens)
        ids = torch.cat([torch.full(lead, config.image_token_index), ids], 1)
        mask = torch.cat([torch.ones(lead, dtype=mask.dtype), mask], 1)
    return ids.to(device), mask.to(device)
