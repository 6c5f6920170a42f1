"""A small resumable training loop shared by the Shapes model trainers.

Every random draw of step `k` comes from generators seeded by (seed, k), so a run resumed
from a checkpoint takes exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..io.checkpoint import resume_run, save_checkpoint, trim_log
from ..training.schedule import cosine_lr


def run_loop(run_dir: Path, total_steps: int, step_fn: Callable[[int], dict[str, float]],
             modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
             base_lr: float, resume: bool, checkpoint_every: int, desc: str,
             warmup: int = 100, after_step: Callable[[int], None] | None = None) -> dict:
    """Run `step_fn(step)` for steps [start, total_steps), checkpointing as it goes.

    Args:
        run_dir: folder for checkpoints and `log.jsonl`.
        total_steps: the step count the run ends at (a resumed run keeps its own).
        step_fn: does one optimisation step's forward and backward; returns named losses.
        modules / optimizer: what a checkpoint holds.
        base_lr: peak learning rate of the cosine schedule.
        resume: continue from the run's newest intact checkpoint if there is one
            (ValueError when it has checkpoints but none intact: nothing is deleted).
        after_step: called with the step after the optimizer update (e.g. an EMA update).

    Returns:
        A summary with the final step, wall seconds and the mean losses of the last 100 steps.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed = resume_run(run_dir, modules, {"optimizer": optimizer}, resume)
    start, wall = resumed.step, resumed.state.get("wall_s", 0.0)
    if resumed.message:
        print(resumed.message, file=sys.stderr, flush=True)
    trim_log(run_dir / "log.jsonl", start)  # the steps from `start` on are logged again
    recent: list[dict[str, float]] = []
    log = (run_dir / "log.jsonl").open("a")
    bar = tqdm(range(start, total_steps), desc=desc, initial=start, total=total_steps,
               dynamic_ncols=True, mininterval=2.0)
    t0 = time.time()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, total_steps, base_lr, warmup)
        losses = step_fn(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(step)
        recent = (recent + [losses])[-100:]
        if step % 20 == 0:
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
            log.write(json.dumps({"step": step, **losses}) + "\n")
            log.flush()
        done = step + 1
        if done % checkpoint_every == 0 or done == total_steps:
            save_checkpoint(run_dir, done, modules, {"optimizer": optimizer},
                            {"wall_s": wall + time.time() - t0}, run_id=resumed.run_id)
    log.close()
    means = {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]} if recent else {}
    return {"step": total_steps, "wall_s": round(wall + time.time() - t0, 1), "final_losses": means}
