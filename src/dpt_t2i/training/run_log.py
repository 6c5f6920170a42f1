"""What a DPT run logs every few steps: `log.jsonl` rows and the same values to the tracker
(tensorboard under `<run>/logs` with `--tensorboard`).

A row holds the step, every loss term averaged over the step's micro-steps and over all
processes (`accelerator.reduce`; each process draws its own samples), the learning rate of
each parameter group (`lr` for the adapter and heads, `lora_lr` for LoRA), the gradient norm
before clipping (`grad_norm`, the global one: gradients are already averaged over processes),
and the throughput since the previous row: `s_per_step` and `samples_per_s`, counting the
samples of every process (batch x grad_accum x processes a step).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor


class RunLog:
    """Rows every `every` steps and at the last step; every process calls `row` on those."""

    def __init__(self, run_dir: Path, accelerator, settings, start: int,
                 group_names: list[str], every: int = 10):
        """
        Args:
            run_dir: the run folder (`log.jsonl` is appended to by the main process).
            accelerator: the run's `accelerate.Accelerator`.
            settings: the run's `TrainSettings` (steps, batch, grad_accum, log_with).
            start: the first step of this launch.
            group_names: the optimizer's parameter groups' names in the log, in order.
            every: steps between rows.
        """
        self.accelerator, self.settings, self.every = accelerator, settings, every
        self.group_names = group_names
        self.main = accelerator.is_main_process
        self.file = (Path(run_dir) / "log.jsonl").open("a") if self.main else None
        self.mark = (start, time.perf_counter())  # first step and time of the next interval
        self.per_step = settings.batch * settings.grad_accum * accelerator.num_processes

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step + 1 == self.settings.steps

    def row(self, step: int, losses: dict[str, Tensor], optimizer, grad_norm: Tensor | None
            ) -> dict[str, float]:
        """Log step `step` (a collective: every process calls it on the same steps).

        Args:
            step: the step just taken.
            losses: this process's 0-d loss terms, averaged over the step's micro-steps.
            optimizer: the optimizer whose groups' `lr` the step used.
            grad_norm: 0-d gradient norm before clipping (None: not computed).

        Returns:
            The row without its step (the same on every process).
        """
        values = mean_over_processes(self.accelerator, losses)
        now = time.perf_counter()
        steps, seconds = step + 1 - self.mark[0], max(now - self.mark[1], 1e-9)
        self.mark = (step + 1, now)
        row = {**values, **{name: group["lr"] for name, group in
                            zip(self.group_names, optimizer.param_groups)}}
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        row.update(s_per_step=round(seconds / steps, 4),
                   samples_per_s=round(steps * self.per_step / seconds, 3))
        if self.main:
            self.file.write(json.dumps({"step": step, **row}) + "\n")
            self.file.flush()
            if self.settings.log_with:
                self.accelerator.log(row, step=step)
        return row

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def mean_over_processes(accelerator, losses: dict[str, Tensor]) -> dict[str, float]:
    """Each 0-d tensor of `losses` averaged over the processes (a collective: every process
    calls it with the same keys)."""
    if not losses:
        return {}
    keys = sorted(losses)
    stacked = torch.stack([losses[k].detach().double() for k in keys]).to(accelerator.device)
    return dict(zip(keys, accelerator.reduce(stacked, reduction="mean").tolist()))
