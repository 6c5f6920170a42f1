"""DPT stage 1 (`probe`: U-Net frozen) and stage 2 (`tune`: LoRA on the U-Net attention),
and the HN-DiffusionITM baseline (`hn-itm`: LoRA only, denoising-error matching).

One training step reads top to bottom: the slot's samples (drawn ahead by DataLoader workers
with `settings.workers`) -> encoded by the frozen VAE and text encoder, or read from a latent
cache (`feed.TrainingFeed`) -> noise the latents -> `DPTObjective` (features of one
U-Net block -> adapter -> matching and grounding losses, plus the optional denoising MSE)
-> backward -> optimizer step. The `hn-itm` stage swaps the objective for `HNITMObjective`
(no adapter: the U-Net's denoising error under the caption and under a hard negative).
The step runs under accelerate, so `accelerate launch` spreads it over several GPUs or
nodes unchanged; each process draws its own samples.

Every random draw of step k (samples, timesteps, noise, dropout) is seeded by (seed, k,
micro-step, process), so a run resumed from a checkpoint takes exactly the steps an
uninterrupted one would have taken.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.loader import LoaderSettings, process_slots
from ..data.sources import SampleSource
from ..io.checkpoint import resume_run, save_checkpoint, trim_log
from ..io.dpt_folder import save_dpt
from ..model.config import DPTConfig
from ..model.heads import DPTHeads
from ..model.lora import LoraWeights, add_lora
from .cache import LatentCache
from .feed import TrainingFeed, open_feed
from .hn_itm import HNITMObjective
from .inputs import FrozenParts, frozen_parts
from .objective import DPTObjective
from .run_log import RunLog, mean_over_processes
from .run_record import check_world_size, recorded_world_size, schedule_history, write_run_config
from .schedule import extended_lr
from .settings import TrainSettings
from .validation import Validation, Validator


def train_dpt(run_dir: Path, bundle, source: SampleSource | LatentCache, config: DPTConfig,
              settings: TrainSettings, init_heads: DPTHeads | None = None,
              resume: bool = True, show_progress: bool = True,
              record: dict | None = None, validation: Validation | None = None) -> dict:
    """Run stage 1 or 2 into `run_dir`; writes checkpoints, `log.jsonl` and `final/`.

    Args:
        run_dir: checkpoints (`step-*`, `latest`), `log.jsonl`, `summary.json`, `final/`.
        bundle: the base model (`bundle.load_bundle`); its U-Net gains LoRA in stage 2.
        source: training samples, or a latent cache of them (`cache.LatentCache`, checked
            against the run by the caller).
        config: the DPT config (block, condition, adapter; `lora` set for stage 2).
        settings: the optimisation settings.
        init_heads: start the heads from these (stage 2 from stage 1's result).
        resume: continue from the run folder's newest intact checkpoint if it has one
            (ValueError when it has checkpoints but none intact: nothing is deleted, or when
            it was trained on another number of processes). A `settings.steps` other than
            the checkpoint's changes the end of the schedule (`schedule.extended_lr`).
        record: what `run_config.json` records of the run (model, DPT config, settings);
            written with the world size and the schedule's changes once the resume checks
            pass. None writes no run_config.json.
        validation: images sampled after the checkpoints (or every `validation.settings.every`
            steps) with the model as it trains (`validation.py`); None samples none.

    Returns:
        A summary: steps, wall seconds, seconds per step, mean losses of the last 50 steps.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _setup(run_dir, bundle, config, settings, init_heads,
                 encoders=not isinstance(source, LatentCache))
    validator = None if validation is None else Validator(
        validation, run_dir, bundle, run.heads, config, settings.stage,
        settings.checkpoint_every, settings.steps, run.accelerator)
    resumed = resume_run(run_dir, run.modules, {"optimizer": run.optimizer}, resume)
    start, wall, run.run_id = resumed.step, resumed.state.get("wall_s", 0.0), resumed.run_id
    accelerator = run.accelerator
    if start:
        check_world_size(run_dir, recorded_world_size(resumed.state), accelerator.num_processes)
    run.extended = schedule_history(run_dir, resumed.state, start, settings.steps)
    if accelerator.is_main_process:
        if resumed.message:
            print(resumed.message, file=sys.stderr, flush=True)
        if record is not None:  # every process read the old one before `prepare`'s broadcast
            write_run_config(run_dir, record, settings, accelerator.num_processes, run.extended)
        trim_log(run_dir / "log.jsonl", start)  # the steps from `start` on are logged again
    if settings.log_with:
        accelerator.init_trackers("dpt", config={k: v for k, v in asdict(settings).items()
                                                 if isinstance(v, (int, float, str))})
    main = accelerator.is_main_process
    t0 = time.time()
    feed = _open_feed(run, source, config, settings, start)
    try:
        recent = _train_loop(run, feed, settings, start, wall, t0,
                             show_progress=main and show_progress, validator=validator)
    finally:
        feed.close()
    steps_run, elapsed = settings.steps - start, time.time() - t0
    summary = {"stage": settings.stage, "steps": settings.steps, "steps_this_run": steps_run,
               "wall_s": round(wall + elapsed, 1),
               "s_per_step": round(elapsed / steps_run, 4) if steps_run else None,
               "skipped_images": feed.skipped, "extended": run.extended,
               "final_losses": _final_losses(run, recent),
               "settings": asdict(settings)}
    accelerator.wait_for_everyone()
    if main:
        save_dpt(run_dir / "final", run.heads, config, run.unet, extra=summary)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    _end(run)
    return summary


def _end(run: _Run) -> None:
    """Drop the DDP wrapper, then end the process group (accelerate's `end_training`).

    In this order because of how torch frees them: DDP's reducer holds the process group and,
    were it the last holder, would run gloo's destructor holding the GIL; that destructor joins
    gloo's worker thread, which may still need the GIL to free the last collective's tensors,
    and the process hangs at exit (1 of 24 two-process launches on a loaded 2-core machine).
    `destroy_process_group` frees the group with the GIL released.
    """
    run.objective = run.wrapped_optimizer = None
    run.accelerator.free_memory()  # accelerate's own references to the prepared objects
    gc.collect()  # should a cycle hold the wrapper: free_memory collects before it clears
    run.accelerator.end_training()


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
    run_id: str | None = None  # written into every checkpoint (io.checkpoint.Resumed)
    extended: list[dict] = field(default_factory=list)  # changes of --steps (run_record.py)


def _setup(run_dir: Path, bundle, config: DPTConfig, settings: TrainSettings,
           init_heads: DPTHeads | None, encoders: bool = True) -> _Run:
    """Accelerator, heads (+ LoRA in stage 2), optimizer groups, and the frozen parts."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision, gradient_accumulation_steps=settings.grad_accum,
        log_with=settings.log_with, project_dir=str(run_dir / "logs"),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    torch.manual_seed(settings.seed)
    unet = _frozen_unet(bundle, accelerator.device, settings)
    if settings.stage == "hn-itm":
        return _setup_hn_itm(run_dir, accelerator, bundle, unet, config, settings, encoders)
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
                frozen_parts(bundle, accelerator.device, encoders))


WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _frozen_unet(bundle, device: torch.device, settings: TrainSettings) -> nn.Module:
    """The frozen U-Net, VAE and text encoder on `device`, in the training dtype, with the
    memory and speed switches of `settings`.

    Under --mixed-precision fp16 / bf16 the frozen weights are stored in that dtype, as
    diffusers' training scripts store them: autocast computes in it anyway, and the U-Net's
    weights take half the memory. What trains (LoRA, added later by `add_lora`, and the
    heads) stays float32.
    """
    dtype = WEIGHT_DTYPES[settings.mixed_precision]
    if settings.allow_tf32:  # Ampere and later GPUs; the flags exist (and do nothing) on a CPU
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    unet = bundle.unet.to(device, dtype).requires_grad_(False)
    if settings.channels_last:
        unet.to(memory_format=torch.channels_last)
    if settings.gradient_checkpointing:  # only where gradients cross the U-Net: tune, hn-itm
        unet.enable_gradient_checkpointing()
    for part in (bundle.vae, bundle.text_encoder):
        part.to(dtype=dtype)  # they encode under no_grad; their outputs are cast to float32
    return unet


def _setup_hn_itm(run_dir: Path, accelerator, bundle, unet: nn.Module, config: DPTConfig,
                  settings: TrainSettings, encoders: bool = True) -> _Run:
    if config.lora is None or config.adapter is not None:
        raise ValueError("stage 'hn-itm' needs config.lora and no adapter (config.adapter None)")
    params = add_lora(unet, config.lora)
    optimizer = torch.optim.AdamW([{"params": params, "lr": settings.lora_lr,
                                    "base_lr": settings.lora_lr}], weight_decay=0.01)
    objective, wrapped = accelerator.prepare(HNITMObjective(unet, settings), optimizer)
    return _Run(run_dir, accelerator, objective, wrapped, optimizer, {"lora": LoraWeights(unet)},
                None, unet, frozen_parts(bundle, accelerator.device, encoders))


def _open_feed(run: _Run, source: SampleSource | LatentCache, config: DPTConfig,
               settings: TrainSettings, start: int) -> TrainingFeed:
    """This process's slots from step `start` on, drawn ahead by `settings.workers`."""
    accelerator = run.accelerator
    slots = process_slots(start, settings.steps, settings.grad_accum,
                          accelerator.num_processes, accelerator.process_index)
    loader = LoaderSettings(workers=settings.workers, prefetch=settings.prefetch,
                            pin_memory=accelerator.device.type == "cuda")
    need_caption_states = settings.mse_weight > 0 or settings.stage == "hn-itm"
    return open_feed(source, run.parts, config, settings.batch, slots, need_caption_states,
                     loader)


def _train_loop(run: _Run, feed: TrainingFeed, settings: TrainSettings,
                start: int, wall: float, t0: float, show_progress: bool,
                validator: Validator | None = None) -> list[dict[str, Tensor]]:
    """Steps start .. settings.steps-1 with logging, checkpoints and validation images; the
    last 50 steps' losses (this process's, as 0-d tensors)."""
    accelerator, main = run.accelerator, run.accelerator.is_main_process
    log = RunLog(run.run_dir, accelerator, settings, start, _group_names(settings))
    bar = tqdm(range(start, settings.steps), desc=settings.stage, initial=start,
               total=settings.steps, dynamic_ncols=True, mininterval=2.0,
               disable=not show_progress)
    recent: list[dict[str, Tensor]] = []
    for step in bar:
        for group in run.optimizer.param_groups:
            group["lr"] = extended_lr(step, settings.steps, group["base_lr"], settings.warmup,
                                      run.extended, settings.lr_floor)
        losses, grad_norm = _optimizer_step(accelerator, run.objective, run.wrapped_optimizer,
                                            run.parts, feed, settings, step)
        recent = (recent + [losses])[-50:]
        if log.due(step):
            row = log.row(step, losses, run.optimizer, grad_norm)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items()
                             if k in ("loss", "match", "loss_giou", "mse", "mse_neg")})
        done = step + 1
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(run.run_dir, done, run.modules, {"optimizer": run.optimizer},
                                {"wall_s": wall + time.time() - t0, **_shape(run, settings)},
                                keep=settings.keep_checkpoints, run_id=run.run_id)
        if validator is not None and validator.due(done):  # restores what training had
            validator.run(done)
    log.close()
    return recent


def _group_names(settings: TrainSettings) -> list[str]:
    """The log's names of the optimizer's parameter groups, in `_setup`'s order."""
    return {"probe": ["lr"], "tune": ["lr", "lora_lr"], "hn-itm": ["lora_lr"]}[settings.stage]


def _final_losses(run: _Run, recent: list[dict[str, Tensor]]) -> dict[str, float]:
    """The mean of each loss term over the last steps and over all processes (a collective;
    {} on every process when this launch took no step)."""
    if not recent:
        return {}
    means = {k: torch.stack([r[k] for r in recent]).float().mean() for k in recent[0]}
    return {k: round(v, 5) for k, v in mean_over_processes(run.accelerator, means).items()}


def _shape(run: _Run, settings: TrainSettings) -> dict:
    """What a checkpoint records of the run: a resume must keep the world size, and its
    schedule follows `steps` and `extended`."""
    return {"world_size": run.accelerator.num_processes, "batch": settings.batch,
            "grad_accum": settings.grad_accum, "steps": settings.steps,
            "extended": run.extended}


def _optimizer_step(accelerator, objective, optimizer, parts: FrozenParts, feed: TrainingFeed,
                    settings: TrainSettings, step: int
                    ) -> tuple[dict[str, Tensor], Tensor | None]:
    """`grad_accum` micro-steps and one update.

    Returns:
        The loss terms of this process averaged over the micro-steps (0-d tensors, left on
        the device: no host sync a step), and the gradient norm before clipping.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    sums: dict[str, Tensor] = {}
    grad_norm = None
    for micro in range(settings.grad_accum):
        slot = (step * settings.grad_accum + micro) * world + rank
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + slot)
        torch.manual_seed(settings.seed * 7_919 + slot)  # dropout of this micro-step
        latents, inputs = feed.inputs(slot)  # drawn ahead; encoded, or read from a cache
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        t = torch.randint(settings.t_min, settings.t_max, (len(latents),), generator=gen)
        t = t.to(latents.device)
        noisy = parts.noiser.add(latents, t, noise)
        inputs["target"] = parts.noiser.target(latents, noise, t)  # epsilon, v or z_0
        with accelerator.accumulate(objective):
            losses = objective(noisy, t, inputs)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(  # the norm before clipping
                    objective.parameters(), settings.grad_clip or math.inf)  # 0: no clipping
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / settings.grad_accum
    return sums, grad_norm
