"""DPT stage 1 (`probe`: U-Net frozen) and stage 2 (`tune`: LoRA on the U-Net attention),
and the HN-DiffusionITM baseline (`hn-itm`: LoRA only, denoising-error matching).

One training step reads top to bottom: draw samples -> encode them with the frozen VAE and
text encoder (`prepare_inputs`) -> noise the latents -> `DPTObjective` (features of one
U-Net block -> adapter -> matching and grounding losses, plus the optional denoising MSE)
-> backward -> optimizer step. The `hn-itm` stage swaps the objective for `HNITMObjective`
(no adapter: the U-Net's denoising error under the caption and under a hard negative). The step runs under accelerate, so `accelerate launch` spreads
it over several GPUs or nodes unchanged; each process draws its own samples.

Every random draw of step k (samples, timesteps, noise, dropout) is seeded by (seed, k,
micro-step, process), so a run resumed from a checkpoint takes exactly the steps an
uninterrupted one would have taken.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .data.samples import DPTSample, collate
from .data.shapes.dpt_samples import make_dpt_sample
from .dpt import DPTConfig, DPTHeads, save_dpt, unet_features
from .features import tap_with_output
from .lora import LoraWeights, add_lora
from .losses import DEFAULT_GROUNDING_WEIGHTS, GroundingCriterion, GroundingMatcher
from .shapes_model.loop import cosine_lr
from .text import encode_texts, text_mask

STAGES = ("probe", "tune", "hn-itm")


@dataclass
class TrainSettings:
    stage: str = "probe"
    steps: int = 2000
    batch: int = 64              # samples per process per micro-step
    grad_accum: int = 1          # micro-steps per optimizer step
    lr: float = 1e-3             # adapter and heads (3e-4 trained boxes far slower)
    lora_lr: float = 1e-4        # LoRA (stage 2)
    warmup: int = 100
    t_min: int = 0               # training timesteps are drawn from [t_min, t_max)
    t_max: int = 1000
    match_weight: float = 1.0
    ground_weight: float = 1.0
    mse_weight: float = 0.0      # the denoising term the official code kept (stage 2)
    n_negatives: int = 3         # hard negatives per caption
    hn_weight: float = 1.0       # hn-itm: weight of the hard negative's (clipped) error
    hn_clip: float = 1.0         # hn-itm: that error is clipped at hn_clip x the positive's
    mixed_precision: str = "no"  # accelerate's: no, fp16, bf16
    checkpoint_every: int = 250
    keep_checkpoints: int = 2    # newest checkpoints kept; 0 keeps all (a learning curve)
    seed: int = 0
    log_with: str | None = None  # "tensorboard" to log losses under <run>/logs

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("steps", "batch", "grad_accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        if not 0 <= self.t_min < self.t_max:
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")


class SampleSource(Protocol):
    """Where samples come from: `sample(i)` is always the same, None for an unreadable image."""

    skipped: int

    def sample(self, index: int) -> DPTSample | None: ...


class ShapesSource:
    """The Shapes world's endless DPT stream (never skips)."""

    def __init__(self, seed: int = 0, split: str = "train", n_negatives: int = 3):
        self.seed, self.split, self.n_negatives = seed, split, n_negatives
        self.skipped = 0

    def sample(self, index: int) -> DPTSample:
        return make_dpt_sample(self.seed, index, self.split, self.n_negatives)


def draw_samples(source: SampleSource, first: int, count: int) -> list[DPTSample]:
    """Samples first .. first+count-1; one that cannot be read is replaced by a later one."""
    out = []
    for i in range(first, first + count):
        for attempt in range(100):
            sample = source.sample(i + attempt * 1_000_003)
            if sample is not None:
                out.append(sample)
                break
        else:
            raise RuntimeError(f"100 unreadable images in a row from sample {i}; "
                               f"{source.skipped} skipped so far")
    return out


class DPTObjective(nn.Module):
    """U-Net features -> adapter -> unweighted DPT losses, plus the weighted total.

    One module holds the U-Net and the heads so accelerate (DDP) wraps the whole step.
    """

    def __init__(self, unet: nn.Module, heads: DPTHeads, config: DPTConfig,
                 settings: TrainSettings):
        super().__init__()
        self.unet, self.heads, self.config = unet, heads, config
        self.criterion = GroundingCriterion(GroundingMatcher())
        self.weights = {"match": settings.match_weight, "ground": settings.ground_weight,
                        "mse": settings.mse_weight}
        self.unet_trains = settings.stage != "probe"

    def forward(self, noisy: Tensor, t: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses for one batch.

        Args:
            noisy: (B, C, h, w) noised latents z_t.
            t: (B,) timesteps.
            inputs: `prepare_inputs`'s text and target tensors (see there).
        """
        losses: dict[str, Tensor] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.unet_trains):
            if self.weights["mse"] > 0 and self.config.condition == "caption":
                feats, eps = tap_with_output(self.unet, self.config.block, noisy, t,
                                             inputs["states"])
                losses["mse"] = F.mse_loss(eps.float(), inputs["noise"])
            else:
                feats = unet_features(self.unet, self.config, noisy, t, inputs["states"])
                if self.weights["mse"] > 0:  # a separate caption-conditioned pass
                    eps = self.unet(noisy, t, inputs["caption_states"]).sample
                    losses["mse"] = F.mse_loss(eps.float(), inputs["noise"])
        out = self.heads(feats, t)
        losses["match"] = self.heads.matching(out["match_embeds"], *self._match_texts(inputs))
        ground = self._grounding(out, feats, noisy, t, inputs)
        losses.update(ground)
        total = self.weights["match"] * losses["match"]
        total = total + self.weights["ground"] * sum(
            DEFAULT_GROUNDING_WEIGHTS[k] * v for k, v in ground.items())
        if "mse" in losses:
            total = total + self.weights["mse"] * losses["mse"]
        losses["loss"] = total
        return losses

    def _match_texts(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """text(y) of the captions (B, D) and of their hard negatives (B, K, D)."""
        if self.heads.adapter.text_head is None:
            return inputs["caption_embeds"], inputs["negative_embeds"]
        n, k = inputs["negative_embeds"].shape[:2]
        texts = self.heads.adapter.text(
            torch.cat([inputs["caption_embeds"], inputs["negative_embeds"].flatten(0, 1)]),
            torch.cat([inputs["caption_tokens"], inputs["negative_tokens"].flatten(0, 1)]),
            torch.cat([inputs["caption_mask"], inputs["negative_mask"].flatten(0, 1)]))
        return texts[:n], texts[n:].view(n, k, -1)

    def _grounding(self, out: dict[str, Tensor], feats: Tensor, noisy: Tensor, t: Tensor,
                   inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Grounding losses; `out` and `feats` are the matching pass's outputs and features."""
        has = inputs["has_ref"]  # (B,) bool
        if not bool(has.any()):
            zero = out["ground_logits"].sum() * 0.0
            return {k: zero for k in DEFAULT_GROUNDING_WEIGHTS}
        if self.config.ground_condition == "expression":  # a pass conditioned on the expression
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.unet_trains):
                ref_feats = unet_features(self.unet, self.config, noisy[has], t[has],
                                          inputs["ref_states"][has])
            ground_out = self.heads.ground(ref_feats, t[has], inputs["ref_tokens"][has],
                                           inputs["ref_mask"][has])
        elif self.heads.adapter.ground_text:  # the matching pass's features, read with the words
            ground_out = self.heads.ground(feats[has], t[has],
                                           inputs["ref_tokens"][has], inputs["ref_mask"][has])
        else:
            ground_out = {k: v[has] for k, v in out.items() if k.startswith("ground_")}
        targets = {"boxes": inputs["boxes"][has], "text_embeds": inputs["ref_embeds"][has],
                   "object_boxes": inputs["object_boxes"][has],
                   "object_mask": inputs["object_mask"][has]}
        losses, _ = self.criterion(ground_out, targets)
        return losses


class HNITMObjective(nn.Module):
    """HN-DiffusionITM (Krojer et al., NeurIPS 2023): LoRA learns to denoise well under the
    caption and badly under a hard negative of it.

    loss = e(y) - w * min(e(y_neg), c * e(y)), where e(.) is the denoising MSE of the same
    noised latent and noise under that text, and the clip at c times the (detached) positive
    error keeps the negative term from growing without bound (the authors' "hinged" loss).
    """

    def __init__(self, unet: nn.Module, settings: TrainSettings):
        super().__init__()
        self.unet, self.weight, self.clip = unet, settings.hn_weight, settings.hn_clip

    def forward(self, noisy: Tensor, t: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        states = torch.cat([inputs["caption_states"], inputs["negative_tokens"][:, 0]])
        eps = self.unet(torch.cat([noisy, noisy]), torch.cat([t, t]), states).sample.float()
        pos, neg = eps.chunk(2)
        mse = F.mse_loss(pos, inputs["noise"])
        mse_neg = F.mse_loss(neg, inputs["noise"])
        loss = mse - self.weight * torch.clamp(mse_neg, max=self.clip * float(mse.detach()))
        return {"mse": mse, "mse_neg": mse_neg, "loss": loss}


@torch.no_grad()
def prepare_inputs(parts: "FrozenParts", samples: list[DPTSample], config: DPTConfig,
                   need_caption_states: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """Latents and text tensors of a batch from the frozen VAE and text encoder.

    Returns:
        latents: (B, C, h, w) scaled VAE posterior means.
        inputs: `caption_embeds` (B, D), `negative_embeds` (B, K, D), `ref_embeds` (B, D),
            token states and real-token masks of the three kinds of text: `caption_tokens`
            (B, L, D) / `caption_mask` (B, L), `negative_tokens` (B, K, L, D) /
            `negative_mask` (B, K, L), `ref_tokens` (B, L, D) / `ref_mask` (B, L),
            `boxes` (B, 4), `object_boxes` (B, O, 4), `object_mask` (B, O), `has_ref` (B,),
            `states` (B, L, D) the matching pass's U-Net condition, and `ref_states` /
            `caption_states` (B, L, D) where needed.
    """
    batch = collate(samples)
    device = parts.device
    pixels = batch["pixels"].to(device, parts.vae.dtype)
    latents = parts.vae.encode(pixels).latent_dist.mean.float() * parts.scaling_factor
    n, k = len(samples), len(batch["negatives"][0])
    texts = batch["captions"] + [t for negs in batch["negatives"] for t in negs] + batch["refexps"]
    pooled, hidden = encode_texts(parts.text_encoder, parts.tokenizer, texts + [""])
    inputs = {"caption_embeds": pooled[:n], "negative_embeds": pooled[n:n + n * k].view(n, k, -1),
              "ref_embeds": pooled[n + n * k:n + n * k + n],
              "caption_tokens": hidden[:n],
              "negative_tokens": hidden[n:n + n * k].unflatten(0, (n, k)),
              "ref_tokens": hidden[n + n * k:n + n * k + n],
              "boxes": batch["boxes"].to(device), "has_ref": batch["has_ref"].to(device),
              "object_boxes": batch["object_boxes"].to(device),
              "object_mask": batch["object_mask"].to(device)}
    masks = text_mask(parts.tokenizer, texts).to(device)
    inputs["caption_mask"], inputs["ref_mask"] = masks[:n], masks[n + n * k:]
    inputs["negative_mask"] = masks[n:n + n * k].unflatten(0, (n, k))
    caption_states = hidden[:n]
    empty_states = hidden[-1:].expand(n, -1, -1)
    inputs["states"] = caption_states if config.condition == "caption" else empty_states
    if config.ground_condition == "expression":
        inputs["ref_states"] = hidden[n + n * k:n + n * k + n]
    if need_caption_states:
        inputs["caption_states"] = caption_states
    return latents, inputs


@dataclass
class FrozenParts:
    """The frozen modules a training step reads through."""

    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    noise_scheduler: object
    device: torch.device

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


def frozen_parts(bundle, device: torch.device) -> FrozenParts:
    from diffusers import DDPMScheduler

    bundle.vae.to(device)
    bundle.text_encoder.to(device)
    return FrozenParts(bundle.vae, bundle.text_encoder, bundle.tokenizer,
                       DDPMScheduler.from_config(bundle.scheduler_config), device)


def train_dpt(run_dir: Path, bundle, source: SampleSource, config: DPTConfig,
              settings: TrainSettings, init_heads: DPTHeads | None = None,
              resume: bool = True, show_progress: bool = True) -> dict:
    """Run stage 1 or 2 into `run_dir`; writes checkpoints, `log.jsonl` and `final/`.

    Args:
        run_dir: checkpoints (`step-*`, `latest`), `log.jsonl`, `summary.json`, `final/`.
        bundle: the base model (`bundle.load_bundle`); its U-Net gains LoRA in stage 2.
        source: training samples.
        config: the DPT config (block, condition, adapter; `lora` set for stage 2).
        settings: the optimisation settings.
        init_heads: start the heads from these (stage 2 from stage 1's result).
        resume: continue from the run folder's latest checkpoint if it has one.

    Returns:
        A summary: steps, wall seconds, seconds per step, mean losses of the last 50 steps.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _setup(run_dir, bundle, config, settings, init_heads)
    start, wall = 0, 0.0
    found = latest_checkpoint(run_dir) if resume else None
    if found is not None:
        state = load_checkpoint(found, run.modules, {"optimizer": run.optimizer})
        start, wall = state["step"], state.get("wall_s", 0.0)
    accelerator = run.accelerator
    if settings.log_with:
        accelerator.init_trackers("dpt", config={k: v for k, v in asdict(settings).items()
                                                 if isinstance(v, (int, float, str))})
    main = accelerator.is_main_process
    t0 = time.time()
    recent = _train_loop(run, source, config, settings, start, wall, t0,
                         show_progress=main and show_progress)
    steps_run, elapsed = settings.steps - start, time.time() - t0
    summary = {"stage": settings.stage, "steps": settings.steps, "steps_this_run": steps_run,
               "wall_s": round(wall + elapsed, 1),
               "s_per_step": round(elapsed / steps_run, 4) if steps_run else None,
               "skipped_images": source.skipped,
               "final_losses": {k: round(sum(r[k] for r in recent) / len(recent), 5)
                                for k in recent[0]} if recent else {},
               "settings": asdict(settings)}
    accelerator.wait_for_everyone()
    if main:
        save_dpt(run_dir / "final", run.heads, config, run.unet, extra=summary)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary


@dataclass
class _Run:
    """What a training run holds: accelerate's wrapped objective and optimizer, and the raw
    modules and optimizer that checkpoints save."""

    run_dir: Path
    accelerator: object
    objective: nn.Module
    wrapped_optimizer: object
    optimizer: torch.optim.Optimizer
    modules: dict[str, nn.Module]
    heads: DPTHeads | None  # None in the hn-itm stage
    unet: nn.Module
    parts: FrozenParts


def _setup(run_dir: Path, bundle, config: DPTConfig, settings: TrainSettings,
           init_heads: DPTHeads | None) -> _Run:
    """Accelerator, heads (+ LoRA in stage 2), optimizer groups, and the frozen parts."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision, gradient_accumulation_steps=settings.grad_accum,
        log_with=settings.log_with, project_dir=str(run_dir / "logs"),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    torch.manual_seed(settings.seed)
    unet = bundle.unet.to(accelerator.device).requires_grad_(False)
    if settings.stage == "hn-itm":
        return _setup_hn_itm(run_dir, accelerator, bundle, unet, config, settings)
    heads = DPTHeads(config.adapter)
    if init_heads is not None:
        heads.load_state_dict(init_heads.state_dict())
    groups = [{"params": list(heads.parameters()), "base_lr": settings.lr}]
    modules: dict[str, nn.Module] = {"heads": heads}
    if settings.stage == "tune":
        if config.lora is None:
            raise ValueError("stage 'tune' needs config.lora (LoRA settings)")
        groups.append({"params": add_lora(unet, config.lora), "base_lr": settings.lora_lr})
        modules["lora"] = LoraWeights(unet)
    optimizer = torch.optim.AdamW([{**g, "lr": g["base_lr"]} for g in groups], weight_decay=0.01)
    objective = DPTObjective(unet, heads, config, settings)
    objective, wrapped = accelerator.prepare(objective, optimizer)
    return _Run(run_dir, accelerator, objective, wrapped, optimizer, modules, heads, unet,
                frozen_parts(bundle, accelerator.device))


def _setup_hn_itm(run_dir: Path, accelerator, bundle, unet: nn.Module, config: DPTConfig,
                  settings: TrainSettings) -> _Run:
    if config.lora is None or config.adapter is not None:
        raise ValueError("stage 'hn-itm' needs config.lora and no adapter (config.adapter None)")
    params = add_lora(unet, config.lora)
    optimizer = torch.optim.AdamW([{"params": params, "lr": settings.lora_lr,
                                    "base_lr": settings.lora_lr}], weight_decay=0.01)
    objective, wrapped = accelerator.prepare(HNITMObjective(unet, settings), optimizer)
    return _Run(run_dir, accelerator, objective, wrapped, optimizer, {"lora": LoraWeights(unet)},
                None, unet, frozen_parts(bundle, accelerator.device))


def _train_loop(run: _Run, source: SampleSource, config: DPTConfig, settings: TrainSettings,
                start: int, wall: float, t0: float, show_progress: bool) -> list[dict[str, float]]:
    """Steps start .. settings.steps-1 with logging and checkpoints; the last 50 steps' losses."""
    accelerator, main = run.accelerator, run.accelerator.is_main_process
    log = (run.run_dir / "log.jsonl").open("a") if main else None
    bar = tqdm(range(start, settings.steps), desc=settings.stage, initial=start,
               total=settings.steps, dynamic_ncols=True, mininterval=2.0, disable=not show_progress)
    recent: list[dict[str, float]] = []
    for step in bar:
        for group in run.optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings.steps, group["base_lr"], settings.warmup)
        losses = _optimizer_step(accelerator, run.objective, run.wrapped_optimizer, run.parts,
                                 source, config, settings, step)
        recent = (recent + [losses])[-50:]
        if main and (step % 10 == 0 or step + 1 == settings.steps):
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()
                             if k in ("loss", "match", "loss_giou", "mse", "mse_neg")})
            log.write(json.dumps({"step": step, **losses}) + "\n")
            log.flush()
            if settings.log_with:
                accelerator.log(losses, step=step)
        done = step + 1
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(run.run_dir, done, run.modules, {"optimizer": run.optimizer},
                                {"wall_s": wall + time.time() - t0},
                                keep=settings.keep_checkpoints)
    if log is not None:
        log.close()
    return recent


def _optimizer_step(accelerator, objective, optimizer, parts: FrozenParts, source: SampleSource,
                    config: DPTConfig, settings: TrainSettings, step: int) -> dict[str, float]:
    """`grad_accum` micro-steps and one update; returns the last micro-step's losses."""
    rank, world = accelerator.process_index, accelerator.num_processes
    sums: dict[str, float] = {}
    for micro in range(settings.grad_accum):
        slot = (step * settings.grad_accum + micro) * world + rank
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + slot)
        torch.manual_seed(settings.seed * 7_919 + slot)  # dropout of this micro-step
        samples = draw_samples(source, slot * settings.batch, settings.batch)
        latents, inputs = prepare_inputs(parts, samples, config,
                                         need_caption_states=settings.mse_weight > 0
                                         or settings.stage == "hn-itm")
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        t = torch.randint(settings.t_min, settings.t_max, (len(samples),), generator=gen)
        t = t.to(latents.device)
        noisy = parts.noise_scheduler.add_noise(latents, noise, t)
        inputs["noise"] = noise
        with accelerator.accumulate(objective):
            losses = objective(noisy, t, inputs)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(objective.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / settings.grad_accum
    return sums
