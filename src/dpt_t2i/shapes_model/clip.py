"""Train the Shapes CLIP: a text and an image encoder aligned contrastively on world captions.

Its text encoder is then frozen and conditions the U-Net, as Stable Diffusion freezes CLIP.
A fifth of the texts are referring expressions of the scene, so the words DPT's grounding
reads later ("left", "larger", "second") are trained words, as they are in a real CLIP.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from ..data.shapes.dataset import images_to_tensor, make_batch
from ..model.text import tokenize
from .loop import run_loop
from .tokenizer import MAX_LENGTH, build_tokenizer


def build_clip(tokenizer: CLIPTokenizer) -> CLIPModel:
    """A small CLIP: 4-layer, 128-wide text and image transformers (16-pixel patches: 4x4 grid)."""
    text = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512,
                num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=64, patch_size=16, hidden_size=128, intermediate_size=512,
                  num_hidden_layers=4, num_attention_heads=4, num_channels=3)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=128))


def contrastive_loss(model: CLIPModel, input_ids: torch.Tensor, pixels: torch.Tensor,
                     texts: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE where identical texts in the batch all count as positives."""
    out = model(input_ids=input_ids, pixel_values=pixels)
    logits = out.logits_per_image  # (B, B)
    same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def train_clip(run_dir: Path, steps: int = 3000, batch: int = 256, lr: float = 5e-4,
               refexp_share: float = 0.2, seed: int = 0, resume: bool = True,
               checkpoint_every: int = 250) -> dict:
    """Train the CLIP pair on the training split; saves `final/` (CLIPModel + tokenizer)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = build_clip(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)

    def step_fn(step: int) -> dict[str, float]:
        samples = make_batch(seed, step, batch, with_refexp=True)
        n_ref = int(batch * refexp_share)
        texts = [s.refexp.text if i < n_ref and s.refexp else s.prompt.text
                 for i, s in enumerate(samples)]
        loss = contrastive_loss(model, tokenize(tokenizer, texts).input_ids,
                                images_to_tensor([s.image for s in samples]), texts)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        return {"loss": float(loss), "scale": float(model.logit_scale.exp())}

    summary = run_loop(run_dir, steps, step_fn, {"clip": model}, opt, lr, resume,
                       checkpoint_every, "clip")
    model.save_pretrained(Path(run_dir) / "final")
    tokenizer.save_pretrained(Path(run_dir) / "final")
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
