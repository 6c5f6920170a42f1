"""Check the Shapes model's frozen parts on their own: VAE round trip and CLIP matching.

    python bench/shapes_parts.py [--model DIR] [--clip DIR] [--vae DIR] [--scenes N]

VAE: random scenes are encoded (posterior mean) and decoded; the scene parser reads the
reconstruction back and is compared with the scene: "kinds" counts scenes whose multiset
of (shape, colour, size) matches, "exact" also needs every box to match to the pixel.
CLIP: for training-distribution and OOD samples, image-to-text choice between the caption
and three hard negatives (25% chance), per family.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from dpt_t2i.data.shapes.dataset import images_to_tensor, make_sample
from dpt_t2i.data.shapes.negatives import sample_hard_negatives
from dpt_t2i.data.shapes.parse import parse_image
from dpt_t2i.data.shapes.world import random_scene, render
from dpt_t2i.io.bundle import default_model_path
from dpt_t2i.model.latents import decode_latents, encode_latents
from dpt_t2i.model.text import tokenize


@torch.no_grad()
def vae_round_trip(vae_dir: Path, n: int) -> dict[str, float]:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
    rng = np.random.default_rng(123)
    scenes = [random_scene(rng) for _ in range(n)]
    x = images_to_tensor([render(s) for s in scenes])
    # a VAE of its own: scaled and unscaled by its config's factor, the round trip's latents
    rec = torch.cat([decode_latents(vae, encode_latents(vae, c)) for c in x.split(50)])
    images = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    kinds = exact = 0
    for scene, image in zip(scenes, images):
        parsed = parse_image(image)
        kinds += Counter((o.shape, o.colour, o.size) for o in parsed) == \
            Counter((o.shape, o.colour, o.size) for o in scene)
        exact += Counter((o.shape, o.colour, o.size, o.box) for o in parsed) == \
            Counter((o.shape, o.colour, o.size, o.box) for o in scene)
    return {"kinds": kinds / n, "exact": exact / n, "l1": float((rec - x).abs().mean())}


@torch.no_grad()
def clip_hard_negatives(clip_dir: Path, n: int) -> dict[str, dict[str, float]]:
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for split in ("id", "ood"):
        for i in range(n):
            s = make_sample(99, i, split=split)
            negatives = sample_hard_negatives(s.prompt, 3, np.random.default_rng(i),
                                              objects=s.objects)
            texts = [s.prompt.text] + [neg.text for _, neg in negatives]
            ids = tokenize(tokenizer, texts).input_ids
            pixels = images_to_tensor([s.image])
            logits = model(input_ids=ids, pixel_values=pixels).logits_per_image
            hits[split][s.prompt.family].append(int(logits[0].argmax() == 0))
    return {split: {f: round(float(np.mean(v)), 3) for f, v in fams.items()}
            for split, fams in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--vae", type=Path, default=None, help="default: MODEL/vae")
    parser.add_argument("--clip", type=Path, default=None, help="default: MODEL/../shapes-clip")
    parser.add_argument("--scenes", type=int, default=300)
    args = parser.parse_args()
    vae = args.vae or args.model / "vae"
    clip = args.clip or args.model.parent / "shapes-clip"
    print("VAE round trip", vae, vae_round_trip(vae, args.scenes))
    print("CLIP caption vs 3 hard negatives", clip, clip_hard_negatives(clip, args.scenes))


if __name__ == "__main__":
    main()
