"""Discriminative baselines that need no adapter, scored like `DiscriminativeScorer`.

Both give `encode(images)` and `pair_scores(encoded, texts, pairs)`, so `evaluate_itm` runs
them on the same items as a DPT model:
- `CLIPScorer`: cosine similarity of a CLIP model's image and text embeddings (the Shapes
  CLIP by default); no U-Net evaluation.
- `DiffusionITMScorer`: DiffusionITM (Krojer et al., NeurIPS 2023), the text-to-image model
  as a zero-shot matcher. A pair (x, y) scores e(x, "") - e(x, y), where e is the denoising
  error averaged over fixed timesteps with fixed noise per image; subtracting the
  unconditional error is the authors' normalisation for choosing among images (it changes
  nothing when choosing among texts). With LoRA on the U-Net (an HN-DiffusionITM folder from
  `dpt tune-hn-itm`) it scores the tuned model.
- `ShapesRefereeScorer`: the Shapes referee's match logit (`model.shapes_referee`, the
  world's analogue of BLIP-2's ITM head); no U-Net evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.samples import images_to_tensor
from ..io.clip import clip_image_embeds, clip_text_embeds
from ..io.shapes_referee import load_shapes_referee
from ..model.latents import Noiser, encode_latents
from ..model.shapes_referee import ShapesReferee, token_ids
from ..model.text import encode_texts
from .discriminative import evaluate_itm, shapes_itm_item

CHUNK = 128  # latents per U-Net call
DEFAULT_TIMESTEPS = tuple(range(50, 1000, 100))  # 10 levels, 50 .. 950


class CLIPScorer:
    """Image-text matching by a CLIP model's cosine similarity."""

    unet_evals_per_pair = 0

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer

    @torch.no_grad()
    def encode(self, images: list[np.ndarray]) -> Tensor:
        """(N, D) unit image embeddings."""
        return torch.cat([clip_image_embeds(self.model, images_to_tensor(images[i:i + CHUNK]))
                          for i in range(0, len(images), CHUNK)])

    @torch.no_grad()
    def pair_scores(self, encoded: Tensor, texts: list[str], pairs: list[tuple[int, int]]
                    ) -> Tensor:
        text = clip_text_embeds(self.model, self.tokenizer, texts)
        li, ti = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
        return (encoded[li] * text[ti]).sum(-1)


class DiffusionITMScorer:
    """Zero-shot matching by the U-Net's denoising error (see the module docstring)."""

    def __init__(self, bundle, timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS, seed: int = 0):
        if not timesteps or not all(0 <= t < 1000 for t in timesteps):
            raise ValueError(f"timesteps must be a non-empty list in [0, 1000), got {timesteps}")
        self.bundle, self.timesteps, self.seed = bundle, tuple(timesteps), seed
        self.unet_evals_per_pair = len(self.timesteps)
        self.noiser = Noiser(bundle.scheduler_config)

    @torch.no_grad()
    def encode(self, images: list[np.ndarray]) -> Tensor:
        """(N, C, h, w) clean latents (the VAE posterior mean, scaled)."""
        return encode_latents(self.bundle.vae, images_to_tensor(images), chunk=CHUNK)

    @torch.no_grad()
    def errors(self, latents: Tensor, states: Tensor) -> Tensor:
        """(N,) denoising MSE of latent i under text states i (N, L, D), averaged over the
        timesteps; the noise of timestep k is the same for every text, seeded per image shape."""
        unet = self.bundle.unet
        gen = torch.Generator().manual_seed(self.seed)
        # one draw per timestep, shared by every image (not `Noiser`'s draw per latent)
        noises = torch.randn((len(self.timesteps), *latents.shape[1:]), generator=gen)
        total = torch.zeros(len(latents))
        for k, step in enumerate(self.timesteps):
            noise = noises[k].expand_as(latents).to(latents.device)
            t = torch.full((len(latents),), step, device=latents.device)
            noisy = self.noiser.add(latents, t, noise)
            target = self.noiser.target(latents, noise, t).float()  # epsilon, v or z_0
            for i in range(0, len(latents), CHUNK):
                sl = slice(i, i + CHUNK)
                out = unet(noisy[sl].to(unet.dtype), t[sl], states[sl].to(unet.dtype)).sample
                total[sl] += ((out.float() - target[sl]) ** 2).mean((1, 2, 3)).cpu()
        return total / len(self.timesteps)

    @torch.no_grad()
    def pair_scores(self, encoded: Tensor, texts: list[str], pairs: list[tuple[int, int]]
                    ) -> Tensor:
        hidden = encode_texts(self.bundle.text_encoder, self.bundle.tokenizer,
                              texts + [""]).hidden
        li, ti = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
        images = sorted(set(li.tolist()))
        unconditional = self.errors(encoded[images], hidden[-1:].expand(len(images), -1, -1))
        base = dict(zip(images, unconditional.tolist()))
        conditional = self.errors(encoded[li], hidden[ti])
        return torch.tensor([base[i] for i in li.tolist()]) - conditional


class ShapesRefereeScorer:
    """Image-text matching by the Shapes referee's logit: its image memories are made once an
    image (`encode`), then each pair's text reads its image's memory."""

    unet_evals_per_pair = 0

    def __init__(self, model: ShapesReferee):
        self.model = model.eval()

    @torch.no_grad()
    def encode(self, images: list[np.ndarray]) -> Tensor:
        """(N, S, W) image memories of uint8 images."""
        return torch.cat([self.model.encode_images(images_to_tensor(images[i:i + CHUNK]))
                          for i in range(0, len(images), CHUNK)])

    @torch.no_grad()
    def pair_scores(self, encoded: Tensor, texts: list[str], pairs: list[tuple[int, int]]
                    ) -> Tensor:
        """(P,) match logits of (image index, text index) pairs."""
        ids = token_ids(self.model.config, texts)
        return self.model.match(encoded, ids, torch.tensor(pairs, dtype=torch.long))


def run_shapes_referee(folder: Path, n_itm: int = 200, seed: int = 1,
                       progress: bool = True) -> dict:
    """ITM of a Shapes referee folder on the Shapes world's ID and OOD streams, the items of
    `dpt evaluate-disc` (`run_discriminative`'s result layout, no REC).

    Raises:
        ValueError: the folder cannot be read (named by the flag that gives it, --referee).
    """
    try:
        scorer = ShapesRefereeScorer(load_shapes_referee(folder))
    except ValueError as err:
        raise ValueError(f"--referee: {err}") from None
    itm = {split: evaluate_itm(scorer, [shapes_itm_item(seed, i, split) for i in range(n_itm)],
                               progress=progress)
           for split in ("id", "ood")}
    return {"itm": itm, "rec": {}, "settings": {"method": "shapes-referee",
                                                "referee": str(folder), "seed": seed,
                                                "unet_evals_per_pair": 0}}
