"""The input pipeline's cost on a small SD-2.1-shaped model, on CPU: the host-side time a
step waits for its batch with DataLoader workers 0 vs 2, and a stage-1 (probe) step from a
latent cache vs from images.

    OMP_NUM_THREADS=1 python bench/input_pipeline.py [--resolution 256] [--batch 4]
        [--steps 3] [--rounds 2] [--condition empty] [--workers 2]

Model: Stable Diffusion 2.1's layout (4-level U-Net with linear-projection transformers and
no attention at the lowest level, 4-level VAE, a 77-token GELU CLIP text encoder, v-prediction)
at a quarter of its widths, random weights, built in a temporary folder: conv FLOPs scale as
width^2, so the VAE : U-Net cost ratio is about SD-2.1's. Data: COCO-like 640x480 JPEGs with
captions, decoded and squashed to --resolution as in training (`RealDPTData`).

Each configuration has its own `training.feed` over the same slots: "images, workers 0"
(decode, resize and collate inline, then the frozen VAE and text encoder), "images, workers
N" (the same batches drawn ahead by N processes) and "cache" (the rows of a `dpt cache`
folder, no encoder). A step is what the training loop's micro-step does: the batch, the
noise, `DPTObjective` forward and backward, AdamW. Host time is the wait for the batch
(`SlotLoader.next`); encode is the frozen encoders (device work on a GPU); the rest is the
U-Net to the tapped block and the adapter. Configurations alternate in rounds (A B C A B C)
so that load drift on a shared machine hits them alike; medians over all steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dpt_t2i.data.coco import read_coco_captions
from dpt_t2i.data.loader import LoaderSettings
from dpt_t2i.data.real import RealDPTData
from dpt_t2i.io.bundle import load_bundle
from dpt_t2i.model.adapter import AdapterConfig
from dpt_t2i.model.config import DPTConfig
from dpt_t2i.model.features import block_channels
from dpt_t2i.model.heads import DPTHeads
from dpt_t2i.training.cache import LatentCache, write_cache
from dpt_t2i.training.feed import open_feed
from dpt_t2i.training.inputs import frozen_parts
from dpt_t2i.training.objective import DPTObjective
from dpt_t2i.training.settings import TrainSettings

WORDS = ("a", "an", "the", "photo", "of", "red", "blue", "green", "white", "black", "small",
         "large", "dog", "cat", "car", "bus", "man", "woman", "table", "cup", "on", "under",
         "next", "to", "two", "three", "sitting", "standing", "street", "grass", "and")
CAPTIONS = ("a red car next to two small dogs on the grass",
            "a black cat sitting under a white table",
            "two women standing next to a blue bus on the street",
            "a green cup on a large table and a small cat")


def sd21_quarter(folder: Path) -> Path:
    """SD-2.1's layout at a quarter of its widths (text encoder: a quarter width and depth)."""
    from diffusers import (AutoencoderKL, DDPMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from dpt_t2i.shapes_model.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(WORDS)
    tokenizer.model_max_length = 77
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(80, 160, 320, 320),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=256,
        use_linear_projection=True, upcast_attention=True, norm_num_groups=16)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, norm_num_groups=32, sample_size=768)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024,
        num_hidden_layers=6, num_attention_heads=4, max_position_embeddings=77,
        hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type="v_prediction",
                              clip_sample=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def coco_like(root: Path, images: int) -> RealDPTData:
    """`images` smooth random 640x480 JPEGs (COCO's size) with 2 captions each."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    entries, notes = [], []
    for i in range(images):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((640, 480), Image.BICUBIC)
        noisy = np.asarray(picture, np.int16) + rng.integers(-12, 12, (480, 640, 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / f"images/{i}.jpg",
                                                                   quality=90)
        entries.append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        notes += [{"id": 2 * i + j, "image_id": i, "caption": CAPTIONS[(i + j) % 4]}
                  for j in range(2)]
    (root / "captions.json").write_text(json.dumps({"images": entries, "annotations": notes}))
    return read_coco_captions(root / "captions.json", root / "images")


def step_once(feed, slot: int, objective, optimizer, noiser, batch: int) -> dict[str, float]:
    """One micro-step as the training loop runs it, timed in its three parts."""
    t0 = time.perf_counter()
    item = feed.loader.next(slot)
    t1 = time.perf_counter()
    latents, inputs = feed.encode(item)
    t2 = time.perf_counter()
    gen = torch.Generator().manual_seed(slot)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    inputs["target"] = noiser.target(latents, noise, t)
    losses = objective(noiser.add(latents, t, noise), t, inputs)
    losses["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return {"host": t1 - t0, "encode": t2 - t1, "unet_adapter": t3 - t2, "step": t3 - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="steps a configuration a round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--condition", default="empty", choices=["empty", "caption", "each"])
    p.add_argument("--block", default="up1")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="input-pipeline-"))
    bundle = load_bundle(sd21_quarter(root / "model"))
    steps = args.steps * args.rounds
    source = RealDPTData(coco_like(root / "coco", 16), None, args.resolution, 3, seed=0)
    t0 = time.perf_counter()
    write_cache(root / "cache", bundle, source, 16, args.resolution, batch=args.batch)
    cache_s = (time.perf_counter() - t0) / 16
    adapter = AdapterConfig(feature_dim=block_channels(bundle.unet, args.block),
                            text_dim=256, d_model=64, n_heads=2, ffn_dim=512,
                            n_ground_queries=25, max_hw=args.resolution // 8)
    config = DPTConfig(block=args.block, condition=args.condition, adapter=adapter)
    heads = DPTHeads(adapter)
    objective = DPTObjective(bundle.unet, heads, config, TrainSettings(batch=args.batch))
    optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-4)
    parts = frozen_parts(bundle, torch.device("cpu"))
    slots = range(steps + 1)  # slot 0 warms up
    feeds = {"images, workers 0": open_feed(source, parts, config, args.batch, slots, False),
             f"images, workers {args.workers}": open_feed(
                 source, parts, config, args.batch, slots, False,
                 LoaderSettings(workers=args.workers)),
             "cache": open_feed(LatentCache(root / "cache"), parts, config, args.batch, slots,
                                False)}
    times: dict[str, list[dict]] = {name: [] for name in feeds}
    for name, feed in feeds.items():  # untimed warm-up: workers start, first allocations
        step_once(feed, 0, objective, optimizer, parts.noiser, args.batch)
    for r in range(args.rounds):
        for name, feed in feeds.items():
            for slot in range(1 + r * args.steps, 1 + (r + 1) * args.steps):
                times[name].append(step_once(feed, slot, objective, optimizer, parts.noiser,
                                             args.batch))
    _report(times, args, cache_s, f"images, workers {args.workers}")
    for feed in feeds.values():
        feed.close()


def _report(times: dict[str, list[dict]], args, cache_s: float, ahead: str) -> None:
    med = {name: {k: statistics.median(t[k] for t in rows) for k in rows[0]}
           for name, rows in times.items()}
    print(f"resolution {args.resolution}, batch {args.batch}, condition {args.condition}, "
          f"block {args.block}, {len(next(iter(times.values())))} timed steps a configuration, "
          f"torch threads {args.threads}")
    print(f"{'configuration':<20} {'host s':>8} {'encode s':>9} {'unet+adapter s':>15} "
          f"{'step s':>8} {'host share':>11}")
    for name, m in med.items():
        print(f"{name:<20} {m['host']:8.4f} {m['encode']:9.4f} {m['unet_adapter']:15.4f} "
              f"{m['step']:8.4f} {m['host'] / m['step']:10.1%}")
    inline = med["images, workers 0"]
    print(f"host wait, workers {args.workers} / workers 0: "
          f"{med[ahead]['host'] / inline['host']:.3f}")
    print(f"step from images (workers 0) / step from cache: "
          f"{inline['step'] / med['cache']['step']:.2f}x")
    print(f"step from images (workers {args.workers}) / step from cache: "
          f"{med[ahead]['step'] / med['cache']['step']:.2f}x")
    print(f"writing the cache: {cache_s:.3f} s a sample (once)")


if __name__ == "__main__":
    main()
