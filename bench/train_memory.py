"""Peak memory of one DPT stage-2 (tune) step with and without gradient checkpointing, on CPU.

    python bench/train_memory.py [--resolution 256] [--batch 1] [--block up1]
        [--condition empty] [--mse-weight 1] [--dtype fp32] [--threads N] [--small]
        [--device cuda]

The U-Net is the SD-2.1 one (`sd21_probe_tune.SD21_UNET`, random weights; `--small` halves
its channels for a quick look), with LoRA rank 4 on every attention layer and the
authors' adapter (width 256, FFN 2048, 10 + 100 queries). Random tensors stand in for the
VAE latents and the text encoder, as in `sd21_probe_tune.py`. Each configuration runs in its
own spawned process. Its memory is read from the process: `base` is the resident set after
the model, LoRA, heads and optimizer are built; `peak` is getrusage's ru_maxrss after one
step (forward, backward, optimizer step); `step` = peak - base is what the step itself held
at its peak (activations, gradients, optimizer state), the part checkpointing can shrink.
`--dtype bf16` stores the frozen U-Net weights in bf16 under bf16 autocast (what
`--mixed-precision bf16` does in training), the trained weights staying float32.

The printed ratios are checkpointed / plain, for the step's own memory and for the peak.
With `--device cuda` the figures are torch's allocator's (memory_allocated before the step,
max_memory_allocated after it) instead of the process's resident set.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from contextlib import nullcontext

import torch
from diffusers import UNet2DConditionModel
from sd21_probe_tune import SD21_UNET, TEXT_DIM, fake_batch

from dpt_t2i.model.adapter import AdapterConfig
from dpt_t2i.model.config import DPTConfig
from dpt_t2i.model.features import tap
from dpt_t2i.model.heads import DPTHeads
from dpt_t2i.model.lora import LoraSettings, add_lora
from dpt_t2i.training.objective import DPTObjective
from dpt_t2i.training.settings import TrainSettings

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _memory_mib(device: str, peak: bool) -> float:
    """The process's memory in MiB: now (peak False) or at its peak since it started."""
    if device.startswith("cuda"):
        read = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
        return read(device) / 2**20
    if peak:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return _rss_mib()


def _rss_mib() -> float:
    """The resident set now, in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def unet_config(small: bool) -> dict:
    if not small:
        return SD21_UNET
    return {**SD21_UNET, "block_out_channels": (160, 320, 640, 640)}  # text stays 1024 wide


def one_step(checkpointing: bool, args: argparse.Namespace) -> dict:
    """Build the tune step, take it once, and read the memory (runs in a fresh process)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    unet = UNet2DConditionModel(**unet_config(args.small)).requires_grad_(False)
    unet.to(args.device, dtype)
    side = args.resolution // 8
    settings = TrainSettings(stage="tune", batch=args.batch, mse_weight=args.mse_weight,
                             batch_negatives=args.batch_negatives)
    noisy, t, inputs = fake_batch(args.batch, side, settings.n_negatives)
    noisy, t = noisy.to(args.device), t.to(args.device)
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    with torch.no_grad(), _autocast(dtype, args.device):
        shape = tuple(tap(unet, args.block, noisy, t, inputs["states"]).shape)
    adapter = AdapterConfig(feature_dim=shape[1], text_dim=TEXT_DIM, d_model=256, n_heads=8,
                            ffn_dim=2048, n_match_queries=10, n_ground_queries=100,
                            max_hw=max(shape[2:]))
    lora = LoraSettings(rank=4, alpha=4.0, targets="all")
    config = DPTConfig(block=args.block, condition=args.condition, adapter=adapter, lora=lora)
    heads = DPTHeads(adapter).to(args.device)
    params = list(heads.parameters()) + add_lora(unet, lora)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    objective = DPTObjective(unet, heads, config, settings).train()
    inputs["target"] = inputs.pop("noise")
    base = _memory_mib(args.device, peak=False)
    start = time.perf_counter()
    with _autocast(dtype, args.device):
        losses = objective(noisy, t, inputs)
    losses["loss"].backward()
    optimizer.step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = _memory_mib(args.device, peak=True)
    return {"checkpointing": checkpointing, "base": base, "peak": peak, "step": peak - base,
            "seconds": seconds, "loss": float(losses["loss"].detach()), "features": shape}


def _autocast(dtype: torch.dtype, device: str):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.split(":")[0], dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256, help="pixels; latent side = /8")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--block", default="up1")
    parser.add_argument("--condition", default="empty", choices=("empty", "caption", "each"))
    parser.add_argument("--batch-negatives", type=int, default=0,
                        help="condition each: other images' captions a sample")
    parser.add_argument("--mse-weight", type=float, default=1.0,
                        help="the denoising term (a full U-Net pass); the authors' weight 1")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--small", action="store_true",
                        help="SD-2.1's layout, half the channels")
    args = parser.parse_args()
    if args.resolution % 64:
        raise SystemExit(f"--resolution must be a multiple of 64, got {args.resolution}")
    print(f"tune step, SD-2.1 U-Net{' (1/2 channels)' if args.small else ''}, random weights, "
          f"{args.device}, {args.threads} thread(s); {args.resolution} px, batch {args.batch}, "
          f"block {args.block}, condition {args.condition}, mse weight {args.mse_weight:g}, "
          f"frozen weights {args.dtype}")
    spawn = multiprocessing.get_context("spawn")
    rows = {}
    for checkpointing in (False, True):
        with spawn.Pool(1) as pool:  # a fresh process: its ru_maxrss is this run's alone
            rows[checkpointing] = pool.apply(one_step, (checkpointing, args))
    print(f"\n{'checkpointing':<14} {'base MiB':>9} {'peak MiB':>9} {'step MiB':>9} "
          f"{'step s':>7} {'loss':>8}")
    for r in rows.values():
        print(f"{str(r['checkpointing']):<14} {r['base']:>9.0f} {r['peak']:>9.0f} "
              f"{r['step']:>9.0f} {r['seconds']:>7.2f} {r['loss']:>8.4f}")
    plain, ckpt = rows[False], rows[True]
    print(f"\ncheckpointed / plain: step memory {ckpt['step'] / plain['step']:.3f}, "
          f"peak {ckpt['peak'] / plain['peak']:.3f}, "
          f"time {ckpt['seconds'] / plain['seconds']:.2f}")


if __name__ == "__main__":
    main()
