"""Time one DPT probe (stage 1) and tune (stage 2) step on the Stable Diffusion 2.1 U-Net, on CPU.

    python bench/sd21_probe_tune.py [--resolution 256] [--batch 1] [--block up1]
        [--lora-targets cross] [--threads N] [--steps 1] [--warmup 0] [--mse-weight 0]

The U-Net is `UNet2DConditionModel` built from stabilityai/stable-diffusion-2-1's unet
config (written out below) with *random* weights: nothing is downloaded. Random tensors
stand in for the VAE latents (noisy z_t and noise) and for the 1024-wide OpenCLIP-H text
encoder (U-Net states (B, 77, 1024), pooled caption / negative / expression embeddings
(B, 1024)); boxes are random cxcywh. The numbers measure cost only, not learning.

The adapter uses the official release's sizes; max_hw comes from tapping the block.
Each stage runs in its own spawned process, so each peak resident memory
(getrusage ru_maxrss) is that stage's own: U-Net weights, activations, optimizer state.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import time

import torch
from diffusers import UNet2DConditionModel

from dpt_t2i.model.adapter import AdapterConfig
from dpt_t2i.model.config import DPTConfig
from dpt_t2i.model.features import tap
from dpt_t2i.model.heads import DPTHeads
from dpt_t2i.model.lora import LoraSettings, add_lora
from dpt_t2i.training.objective import DPTObjective
from dpt_t2i.training.settings import TrainSettings

# stabilityai/stable-diffusion-2-1 unet/config.json (v-prediction, 768 px, OpenCLIP-H text)
SD21_UNET = {
    "sample_size": 96, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
    "use_linear_projection": True, "upcast_attention": True, "norm_num_groups": 32,
    "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "center_input_sample": False,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
    "dual_cross_attention": False}
TEXT_DIM, TEXT_LEN = 1024, 77  # OpenCLIP-H (stood in for by random tensors)


def fake_batch(batch: int, side: int, n_negatives: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Random z_t (B, 4, side, side), timesteps (B,) and `prepare_inputs`-shaped text tensors."""
    def boxes() -> torch.Tensor:  # (B, 4) cxcywh in (0, 1)
        return torch.cat([torch.rand(batch, 2) * 0.5 + 0.25, torch.rand(batch, 2) * 0.4 + 0.1], 1)

    def tokens(*lead: int) -> tuple[torch.Tensor, torch.Tensor]:  # states and real-token mask
        mask = torch.arange(TEXT_LEN) < 12  # a 10-word text between start and end tokens
        return torch.randn(*lead, TEXT_LEN, TEXT_DIM), mask.expand(*lead, TEXT_LEN)

    ref_tokens, ref_mask = tokens(batch)
    caption_tokens, caption_mask = tokens(batch)
    negative_tokens, negative_mask = tokens(batch, n_negatives)
    objects = torch.stack([boxes(), boxes(), boxes()], 1)  # the referred object and 2 others
    inputs = {"states": torch.randn(batch, TEXT_LEN, TEXT_DIM),
              "caption_states": torch.randn(batch, TEXT_LEN, TEXT_DIM),
              "ref_states": ref_tokens, "ref_tokens": ref_tokens, "ref_mask": ref_mask,
              "caption_tokens": caption_tokens, "caption_mask": caption_mask,
              "negative_tokens": negative_tokens, "negative_mask": negative_mask,
              "caption_embeds": torch.randn(batch, TEXT_DIM),
              "negative_embeds": torch.randn(batch, n_negatives, TEXT_DIM),
              "ref_embeds": torch.randn(batch, TEXT_DIM),
              "boxes": objects[:, 0], "object_boxes": objects,
              "object_mask": torch.ones(batch, 3, dtype=torch.bool),
              "has_ref": torch.ones(batch, dtype=torch.bool),
              "noise": torch.randn(batch, 4, side, side)}
    return torch.randn(batch, 4, side, side), torch.randint(0, 1000, (batch,)), inputs


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    """Build the U-Net and heads, then time `args.steps` optimizer steps of one stage."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).requires_grad_(False)
    unet_params = sum(p.numel() for p in unet.parameters())
    side = args.resolution // 8  # latent side (VAE factor 8)
    settings = TrainSettings(stage=stage, batch=args.batch, mse_weight=args.mse_weight)
    noisy, t, inputs = fake_batch(args.batch, side, settings.n_negatives)
    with torch.no_grad():
        shape = tuple(tap(unet, args.block, noisy, t, inputs["states"]).shape)  # (B, d, h, w)
    adapter = AdapterConfig(feature_dim=shape[1], text_dim=TEXT_DIM, d_model=256, n_heads=8,
                            ffn_dim=2048, encoder_layers=1, decoder_layers=1, n_match_queries=10,
                            n_ground_queries=100, max_hw=max(shape[2:]))
    lora = LoraSettings(rank=4, alpha=4, targets=args.lora_targets) if stage == "tune" else None
    config = DPTConfig(block=args.block, condition="empty", adapter=adapter, lora=lora)
    heads = DPTHeads(adapter)
    groups = [{"params": list(heads.parameters()), "lr": settings.lr}]
    if stage == "tune":
        groups.append({"params": add_lora(unet, lora), "lr": settings.lora_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    objective = DPTObjective(unet, heads, config, settings).train()
    trained = sum(p.numel() for g in groups for p in g["params"])
    times, losses = [], {}
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        losses = objective(noisy, t, inputs)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    losses = {k: float(v.detach()) for k, v in losses.items()}
    assert all(math.isfinite(v) for v in losses.values()), f"{stage}: non-finite loss {losses}"
    return {"stage": stage, "unet_params": unet_params, "features": shape, "trained": trained,
            "step_s": times, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256, help="pixels; latent side = /8")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--block", default="up1", help="SD-2.1 up1: 1280 channels")
    parser.add_argument("--lora-targets", default="cross", choices=("cross", "all"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=1, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps before them")
    parser.add_argument("--mse-weight", type=float, default=0.0,
                        help="> 0 adds the denoising term (a second, full U-Net pass)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit(f"need --steps >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")
    if args.resolution % 64:
        raise SystemExit(f"--resolution must be a multiple of 64 (three 2x downsamplings of "
                         f"the /8 latent), got {args.resolution}")
    print(f"SD-2.1 U-Net config, random weights, CPU, {args.threads} thread(s); "
          f"{args.resolution} px (latent {args.resolution // 8}x{args.resolution // 8}), "
          f"batch {args.batch}, block {args.block}, condition empty")
    print(f"text side: random tensors stand in for OpenCLIP-H "
          f"(states ({args.batch}, {TEXT_LEN}, {TEXT_DIM}), pooled ({args.batch}, {TEXT_DIM}))")
    spawn = multiprocessing.get_context("spawn")
    rows = []
    for stage in ("probe", "tune"):
        with spawn.Pool(1) as pool:  # a fresh process: its ru_maxrss is this stage's alone
            r = pool.apply(run_stage, (stage, args))
        rows.append(r)
        print(f"\n[{stage}] U-Net params {r['unet_params'] / 1e6:.1f} M, "
              f"{args.block} features {r['features']}, trained params {r['trained']:,}"
              + (f" (heads + LoRA {args.lora_targets})" if stage == "tune" else " (heads)"))
        print(f"[{stage}] step s {[round(s, 2) for s in r['step_s']]}, peak RSS "
              f"{r['peak_mib']:.0f} MiB, losses (finite) "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["losses"].items()))
    print(f"\n{'stage':<6} {'trained params':>15} {'step s (mean)':>14} {'peak RSS MiB':>13}")
    for r in rows:
        mean = sum(r["step_s"]) / len(r["step_s"])
        print(f"{r['stage']:<6} {r['trained']:>15,} {mean:>14.2f} {r['peak_mib']:>13.0f}")


if __name__ == "__main__":
    main()
