"""Discriminative evaluation of a DPT model: image-text matching and referring expressions.

ITM follows the paper's Table 3 protocol: one positive and three hard negatives, 25% chance.
- image-to-text: the image scores its caption above each of the caption's 3 hard negatives;
- text-to-image: the caption scores its image above 3 negative images (on the Shapes world,
  renders of scenes where one of the hard negatives holds and the caption does not; on real
  data, which has no images of its negative captions, 3 other images of the set);
- overall: the mean of the two.
REC: the chosen query's box has IoU >= 0.5 with the referred object's box.

Each image is noised once, at a fixed timestep with fixed noise (seeded), before the
U-Net reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.samples import images_to_tensor
from ..data.shapes.dpt_samples import make_dpt_sample
from ..data.shapes.grammar import parse_prompt, satisfied, scene_for
from ..data.shapes.world import render
from ..model.boxes import box_cxcywh_to_xyxy, box_iou
from ..model.config import DPTConfig
from ..model.heads import DPTHeads, itm_matrix, rec_choice, text_embeddings, unet_features
from ..model.losses import matching_scores
from ..model.text import encode_texts, text_mask

CHUNK = 128  # latents per U-Net call


@dataclass
class ITMItem:
    images: list[np.ndarray]  # 4: the caption's image, then 3 negative images
    texts: list[str]          # 4: the caption, then its 3 hard negatives


@dataclass
class RECItem:
    image: np.ndarray
    refexp: str
    box: tuple[float, float, float, float]  # cxcywh in [0, 1]
    split: str


def shapes_itm_item(seed: int, index: int, split: str) -> ITMItem:
    """Sample `index` of the evaluation stream `seed`: caption, 3 negatives, 4 images."""
    sample = make_dpt_sample(seed, index, split, n_negatives=3)
    caption = parse_prompt(sample.caption)
    rng = np.random.default_rng([seed, index, 2])
    images = [sample.image]
    for text in sample.negatives:
        for _ in range(100):
            objects = scene_for(parse_prompt(text), rng)
            if not satisfied(caption, objects):
                break
        else:
            raise RuntimeError(f"no scene for {text!r} that makes {sample.caption!r} false")
        images.append(render(objects))
    return ITMItem(images, [sample.caption, *sample.negatives])


def shapes_rec_items(seed: int, split: str, n: int) -> list[RECItem]:
    """The first `n` samples of stream `seed` that carry a referring expression."""
    items, index = [], 0
    while len(items) < n:
        s = make_dpt_sample(seed, index, split, n_negatives=0)
        if s.refexp is not None:
            items.append(RECItem(s.image, s.refexp, s.box, split))
        index += 1
    return items


@torch.no_grad()
def clean_latents(vae, images: list[np.ndarray]) -> Tensor:
    """(N, C, h, w) scaled VAE posterior means of uint8 images, CHUNK at a time."""
    out = []
    for i in range(0, len(images), CHUNK):
        pixels = images_to_tensor(images[i:i + CHUNK]).to(vae.device, vae.dtype)
        out.append(vae.encode(pixels).latent_dist.mean.float())
    return torch.cat(out) * float(vae.config.scaling_factor)


class DiscriminativeScorer:
    """Noises images once and scores them with a DPT model (heads + possibly LoRA'd U-Net).

    A scorer gives `encode(images)` and `pair_scores(encoded, texts, pairs)` (ITM), and here
    also `rec_boxes` (REC); `zero_shot` has adapter-free scorers with the same ITM methods.
    """

    unet_evals_per_pair = 1  # at most: empty-condition features are computed once per image

    def __init__(self, bundle, heads: DPTHeads, config: DPTConfig, timestep: int = 100,
                 seed: int = 0):
        self.bundle, self.heads, self.config = bundle, heads.eval(), config
        self.timestep, self.seed = timestep, seed

    def encode(self, images: list[np.ndarray]) -> Tensor:
        return self.noisy_latents(images)

    @torch.no_grad()
    def noisy_latents(self, images: list[np.ndarray]) -> Tensor:
        """(N, C, h, w) latents of the images noised to the scorer's timestep."""
        from diffusers import DDPMScheduler

        latents = clean_latents(self.bundle.vae, images)
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        t = torch.full((len(latents),), self.timestep, device=latents.device)
        return DDPMScheduler.from_config(self.bundle.scheduler_config).add_noise(latents, noise, t)

    def _texts(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return encode_texts(self.bundle.text_encoder, self.bundle.tokenizer, texts)

    def match_texts(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """text(y) of the matching score (N, D), and the U-Net states of the texts (N, L, D)."""
        return text_embeddings(self.heads, self.bundle.text_encoder, self.bundle.tokenizer, texts)

    def _heads_out(self, latents: Tensor, states: Tensor, ref_tokens: Tensor | None = None,
                   ref_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Adapter outputs; with `ref_tokens` given, the grounding pass that reads them."""
        unet = self.bundle.unet
        t = torch.full((len(latents),), self.timestep, device=latents.device)
        feats = unet_features(unet, self.config, latents.to(unet.dtype), t,
                              states.to(unet.dtype)).float()
        if ref_tokens is None:
            return self.heads(feats, t)
        return self.heads.ground(feats, t, ref_tokens, ref_mask)

    @torch.no_grad()
    def pair_scores(self, latents: Tensor, texts: list[str], pairs: list[tuple[int, int]]) -> Tensor:
        """(P,) matching scores of (latent index, text index) pairs."""
        pooled, hidden = self.match_texts(texts + [""])
        li = torch.tensor([p[0] for p in pairs])
        ti = torch.tensor([p[1] for p in pairs])
        if self.config.condition == "empty":  # features once per latent
            embeds = torch.cat([self._heads_out(latents[i:i + CHUNK], hidden[-1:].expand(
                len(latents[i:i + CHUNK]), -1, -1))["match_embeds"]
                for i in range(0, len(latents), CHUNK)])  # (N, M, D)
            return torch.cat([matching_scores(embeds[li[j:j + 1]], pooled[ti[j:j + 1]])[0]
                              for j in range(len(pairs))])
        scores = []
        for j in range(0, len(pairs), CHUNK):  # features conditioned on the text scored
            a, b = li[j:j + CHUNK], ti[j:j + CHUNK]
            embeds = self._heads_out(latents[a], hidden[b])["match_embeds"]  # (P', M, D)
            scores.append(torch.diagonal(matching_scores(embeds, pooled[b])))
        return torch.cat(scores)

    @torch.no_grad()
    def rec_boxes(self, latents: Tensor, refexps: list[str]) -> Tensor:
        """(N, 4) cxcywh box the model picks for each latent's referring expression."""
        pooled, hidden = self._texts(list(refexps) + [""])
        mask = text_mask(self.bundle.tokenizer, list(refexps)).to(hidden.device)
        boxes = []
        for i in range(0, len(latents), CHUNK):
            lat = latents[i:i + CHUNK]
            words = hidden[i:i + len(lat)]
            states = (words if self.config.ground_condition == "expression"
                      else hidden[-1:].expand(len(lat), -1, -1))
            out = self._heads_out(lat, states, words, mask[i:i + len(lat)])
            choice = rec_choice(out, pooled[i:i + len(lat)])
            boxes.append(out["ground_boxes"][torch.arange(len(lat)), choice])
        return torch.cat(boxes)


def evaluate_itm(scorer, items: list[ITMItem],
                 batch: int = 64, progress: bool = False) -> dict:
    """i2t, t2i and overall accuracy (1 positive vs 3 negatives) over `items`.

    Args:
        scorer: a `DiscriminativeScorer`, or any object with its `encode` and `pair_scores`.
    """
    i2t, t2i = [], []
    for start in tqdm(range(0, len(items), batch), desc="itm", disable=not progress):
        chunk = items[start:start + batch]
        images = [im for item in chunk for im in item.images]  # 4 per item
        texts = [tx for item in chunk for tx in item.texts]  # 4 per item
        latents = scorer.encode(images)
        pairs = []
        for k in range(len(chunk)):
            pairs += [(4 * k, 4 * k + j) for j in range(4)]  # image 0 vs the 4 texts
            pairs += [(4 * k + j, 4 * k) for j in range(1, 4)]  # caption vs images 1..3
        s = scorer.pair_scores(latents, texts, pairs).view(len(chunk), 7)
        i2t += (s[:, 0] > s[:, 1:4].max(1).values).tolist()
        t2i += (s[:, 0] > s[:, 4:7].max(1).values).tolist()
    a, b = float(np.mean(i2t)), float(np.mean(t2i))
    return {"i2t": a, "t2i": b, "overall": (a + b) / 2, "n": len(items)}


def evaluate_rec(scorer: DiscriminativeScorer, items: list[RECItem], batch: int = 128,
                 progress: bool = False) -> dict:
    """Accuracy at IoU >= 0.5 and mean IoU over `items`."""
    ious = []
    for start in tqdm(range(0, len(items), batch), desc="rec", disable=not progress):
        chunk = items[start:start + batch]
        latents = scorer.encode([it.image for it in chunk])
        pred = scorer.rec_boxes(latents, [it.refexp for it in chunk])
        target = torch.tensor([it.box for it in chunk], dtype=pred.dtype)
        iou, _ = box_iou(box_cxcywh_to_xyxy(pred.cpu()), box_cxcywh_to_xyxy(target))
        ious += torch.diagonal(iou).tolist()
    ious_arr = np.array(ious)
    return {"acc": float((ious_arr >= 0.5).mean()), "mean_iou": float(ious_arr.mean()),
            "n": len(items)}


def evaluate_shapes(scorer: DiscriminativeScorer, n_itm: int = 200, n_rec: int = 400,
                    seed: int = 1, splits: tuple[str, ...] = ("id", "ood"),
                    progress: bool = False) -> dict:
    """ITM and REC on the Shapes world's ID and OOD evaluation streams (seed != training's)."""
    result: dict = {"itm": {}, "rec": {}}
    for split in splits:
        items = [shapes_itm_item(seed, i, split) for i in range(n_itm)]
        result["itm"][split] = evaluate_itm(scorer, items, progress=progress)
        result["rec"][split] = evaluate_rec(scorer, shapes_rec_items(seed, split, n_rec),
                                            progress=progress)
    return result


__all__ = ["ITMItem", "RECItem", "DiscriminativeScorer", "evaluate_itm", "evaluate_rec",
           "evaluate_shapes", "shapes_itm_item", "shapes_rec_items", "itm_matrix"]


def coco_itm_items(captioned: list, resolution: int, n: int, seed: int = 1) -> tuple[list[ITMItem], int]:
    """ITM items from COCO captions: caption + 3 rule-based negatives; 3 other images.

    Returns:
        the items (up to n, fewer when images are missing) and the number of images skipped.
    """
    from ..data.real import load_rgb
    from ..data.text_negatives import caption_negatives

    rng = np.random.default_rng([seed, 3])
    order = rng.permutation(len(captioned))
    items, skipped = [], 0
    for pos in order:
        if len(items) >= n:
            break
        entry = captioned[pos]
        negatives = caption_negatives(entry.captions[0], 3, rng)
        others = [captioned[j] for j in rng.choice(len(captioned), 4, replace=False) if j != pos][:3]
        images = [load_rgb(e.path, resolution) for e in [entry, *others]]
        if len(negatives) < 3 or len(others) < 3 or any(im is None for im in images):
            skipped += sum(im is None for im in images)
            continue
        items.append(ITMItem(images, [entry.captions[0], *negatives]))
    return items, skipped
