"""Assemble the trained parts into one Stable Diffusion diffusers folder (fp16 safetensors).

The folder loads with plain `StableDiffusionPipeline.from_pretrained(path)`. Beside the
pipeline components it holds `shapes_world.json` (marks a Shapes model and lists its
vocabulary) and the tokenizer also in the `vocab.json` + `merges.txt` form that older
transformers releases read. The full CLIP (text and image towers) is saved to its own
folder: later stages use its image encoder as a judge of image quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from ..data.shapes.grammar import vocabulary
from .unet import build_noise_scheduler


def assemble(vae_dir: Path, clip_dir: Path, unet_dir: Path, out: Path,
             clip_out: Path | None = None) -> Path:
    """Write the fp16 pipeline folder `out` (and the full CLIP to `clip_out` if given)."""
    out = Path(out)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    scheduler = DDIMScheduler.from_config(build_noise_scheduler().config, clip_sample=False,
                                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(vae_dir),
        text_encoder=CLIPTextModel.from_pretrained(clip_dir),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(unet_dir),
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    _load_as_float32(out / "text_encoder")
    _write_slow_tokenizer_files(tokenizer, out / "tokenizer")
    (out / "shapes_world.json").write_text(json.dumps(
        {"world": "shapes", "image_size": 64, "vocabulary": list(vocabulary())}, indent=1))
    if clip_out is not None:
        clip = CLIPModel.from_pretrained(clip_dir).to(torch.float16)
        clip.save_pretrained(clip_out, safe_serialization=True)
        _load_as_float32(Path(clip_out))
        tokenizer.save_pretrained(clip_out)
        _write_slow_tokenizer_files(tokenizer, Path(clip_out))
    return out


def _load_as_float32(folder: Path) -> None:
    """Weights stay fp16 on disk; the config asks transformers to load them as fp32.

    diffusers loads its fp16 components as fp32 unless told otherwise, while transformers
    follows the config's dtype; without this, a plain `from_pretrained` mixes dtypes.
    """
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["dtype"] = "float32"
    path.write_text(json.dumps(config, indent=2))


def _write_slow_tokenizer_files(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """vocab.json and merges.txt, the files a pre-5 `CLIPTokenizer` loads."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
