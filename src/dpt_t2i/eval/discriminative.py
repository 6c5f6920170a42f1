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

from ..data.real import load_rgb
from ..data.samples import images_to_tensor
from ..data.shapes.dpt_samples import make_dpt_sample
from ..data.shapes.grammar import parse_prompt, satisfied, scene_for
from ..data.shapes.world import render
from ..data.text_negatives import caption_negatives
from ..model.boxes import box_cxcywh_to_xyxy, box_iou
from ..model.config import DPTConfig
from ..model.heads import DPTHeads, rec_choice
from ..model.latents import Noiser, encode_latents
from ..model.score import CHUNK, MatchScore
from ..model.text import EncodedTexts, encode_texts


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


class DiscriminativeScorer:
    """Noises images once and scores them with a DPT model (heads + possibly LoRA'd U-Net).

    A scorer gives `encode(images)` and `pair_scores(encoded, texts, pairs)` (ITM), and here
    also `rec_boxes` (REC); `zero_shot` has adapter-free scorers with the same ITM methods.
    Matching is `model.score.MatchScore`'s; `score` is that object.
    """

    unet_evals_per_pair = 1  # at most: empty-condition features are computed once per image

    def __init__(self, bundle, heads: DPTHeads, config: DPTConfig, timestep: int = 100,
                 seed: int = 0):
        self.bundle, self.heads, self.config = bundle, heads.eval(), config
        self.timestep, self.seed = timestep, seed
        self.score = MatchScore(bundle, self.heads, config)
        self.noiser = Noiser(bundle.scheduler_config)

    @torch.no_grad()
    def encode(self, images: list[np.ndarray]) -> Tensor:
        """(N, C, h, w) latents of uint8 images noised to the scorer's timestep, with noise
        from a generator seeded afresh at each call (the same images: the same z_t)."""
        latents = encode_latents(self.bundle.vae, images_to_tensor(images), chunk=CHUNK)
        return self.noiser(latents, self.timestep, torch.Generator().manual_seed(self.seed))

    def pair_scores(self, latents: Tensor, texts: list[str], pairs: list[tuple[int, int]]
                    ) -> Tensor:
        """(P,) matching scores of (latent index, text index) pairs."""
        return self.score.pair_scores(latents, self.timestep, texts, pairs)

    def ground_outputs(self, latents: Tensor, states: Tensor, refs: EncodedTexts
                       ) -> dict[str, Tensor]:
        """Adapter outputs of the grounding pass: the U-Net under states (B, L, D), the adapter
        reading the B expressions' tokens where it reads text."""
        t = torch.full((len(latents),), self.timestep, device=latents.device)
        features = self.score.features(latents, t, states)
        return self.heads.ground(features, t, refs.hidden, refs.mask)

    @torch.no_grad()
    def rec_boxes(self, latents: Tensor, refexps: list[str]) -> Tensor:
        """(N, 4) cxcywh box the model picks for each latent's referring expression."""
        encoded = encode_texts(self.bundle.text_encoder, self.bundle.tokenizer,
                               [*refexps, ""])
        refs, empty = encoded[:-1], encoded.hidden[-1:]  # (N, ...), (1, L, D)
        boxes = []
        for i in range(0, len(latents), CHUNK):
            lat, words = latents[i:i + CHUNK], refs[i:i + CHUNK]
            states = (words.hidden if self.config.ground_condition == "expression"
                      else empty.expand(len(lat), -1, -1))
            out = self.ground_outputs(lat, states, words)
            choice = rec_choice(out, words.pooled)
            boxes.append(out["ground_boxes"][torch.arange(len(lat), device=choice.device),
                                             choice])
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
           "evaluate_shapes", "shapes_itm_item", "shapes_rec_items"]


def coco_itm_items(captioned: list, resolution: int, n: int, seed: int = 1
                   ) -> tuple[list[ITMItem], int]:
    """ITM items from COCO captions: caption + 3 rule-based negatives; 3 other images.

    Returns:
        the items (up to n, fewer when images are missing) and the number of images skipped.
    """
    rng = np.random.default_rng([seed, 3])
    order = rng.permutation(len(captioned))
    items, skipped = [], 0
    for pos in order:
        if len(items) >= n:
            break
        entry = captioned[pos]
        negatives = caption_negatives(entry.captions[0], 3, rng)
        drawn = rng.choice(len(captioned), 4, replace=False)
        others = [captioned[j] for j in drawn if j != pos][:3]
        images = [load_rgb(e.path, resolution) for e in [entry, *others]]
        if len(negatives) < 3 or len(others) < 3 or any(im is None for im in images):
            skipped += sum(im is None for im in images)
            continue
        items.append(ITMItem(images, [entry.captions[0], *negatives]))
    return items, skipped
