"""Image quality on the Shapes world: a Fréchet distance to clean renders of the same prompts.

FID's formula, ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), in the feature space of
the Shapes CLIP image encoder (its 128-wide image embedding before normalisation) instead of
Inception's. The reference set renders, for each generated image, a scene that satisfies its
prompt (`scene_for`, seeded by the image's position), so both sets have the same prompts.
Lower is better; a clean render set against another clean render set scores near 0. With a
few hundred images the figure carries a sample-size bias: compare sets of equal size only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from ..data.samples import images_to_tensor
from ..data.shapes.grammar import parse_prompt, scene_for
from ..data.shapes.world import render
from ..io.clip import load_clip

BATCH = 256


@torch.no_grad()
def clip_image_features(images: list[np.ndarray], model=None) -> np.ndarray:
    """(N, D) Shapes CLIP image embeddings of (64, 64, 3) uint8 images.

    Args:
        model: a loaded CLIP (`load_clip()`, loaded here when None).
    """
    model = model if model is not None else load_clip()
    out = [model.get_image_features(pixel_values=images_to_tensor(images[i:i + BATCH]))
           for i in range(0, len(images), BATCH)]
    out = [o.pooler_output if hasattr(o, "pooler_output") else o for o in out]
    return torch.cat(out).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"expected two (N, D) feature sets with N >= 2, got {a.shape} and "
                         f"{b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)  # the matrix alone (`disp` is deprecated in SciPy 1.17)
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def reference_renders(prompts: list[str], seed: int = 0) -> list[np.ndarray]:
    """One clean render per prompt: image k shows `scene_for(prompt k)` drawn with seed
    (seed, k)."""
    return [render(scene_for(parse_prompt(p), np.random.default_rng([seed, k])))
            for k, p in enumerate(prompts)]


def quality_by_split(verdicts: list[dict], model=None) -> dict[str, float | None]:
    """{split: Fréchet distance of its images to renders of the same prompts}.

    A split of fewer than 2 images has no covariance to compare: its distance is None.

    Args:
        verdicts: from `alignment.judge_folders` (each carries its `folder`, `file`, `prompt`
            and `split`).
        model: a loaded Shapes CLIP (`load_clip()`, loaded here when None).
    """
    from PIL import Image

    model, out = model if model is not None else load_clip(), {}
    for split in sorted({v["split"] for v in verdicts}):
        group = [v for v in verdicts if v["split"] == split]
        if len(group) < 2:
            out[split] = None
            continue
        images = [np.asarray(Image.open(Path(v["folder"]) / v["file"]).convert("RGB"))
                  for v in group]
        renders = reference_renders([v["prompt"] for v in group])
        out[split] = frechet_distance(clip_image_features(images, model),
                                      clip_image_features(renders, model))
    return out
