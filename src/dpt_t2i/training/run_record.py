"""What a DPT run folder records about the run itself, and the checks a resume makes.

Every checkpoint's `state.json` holds the world size (processes) that trained it and the
schedule: `steps`, the run's total, and `extended`, the changes of that total made on resume
(`schedule.extended_lr` turns them into rates). A resume on another number of processes is
refused: each process draws its own samples and the batch of a step is per process, so the
resumed run would not be the run the checkpoint belongs to. `run_config.json` mirrors both
for people reading the folder, beside what the command says the run is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def check_world_size(run_dir: Path, recorded: int, now: int) -> None:
    """ValueError when a run trained on `recorded` processes is resumed on `now`."""
    if recorded != now:
        raise ValueError(
            f"{run_dir} was trained on {recorded} process(es) and this launch has {now}: a "
            "resumed run must keep the world size (each process draws its own samples); "
            f"launch {recorded} process(es), or start over with --resume no")


def recorded_world_size(record: dict) -> int:
    """The world size a checkpoint's state.json or a run_config.json records.

    Folders written before it was recorded count as one process: the documented CPU launch
    (`accelerate launch --cpu`) started one, and most runs were that or a single GPU.
    """
    return int(record.get("world_size", 1))


def schedule_history(run_dir: Path, state: dict, resumed_step: int, steps: int) -> list[dict]:
    """The run's total changes (`extended`), with this launch's change appended if any.

    Args:
        run_dir: the run folder (for the message).
        state: the resumed checkpoint's state.json ({} for a fresh run).
        resumed_step: the step the run continues from.
        steps: this launch's total (`--steps`).

    Returns:
        [{"at_step", "from", "to"}, ...], oldest first; [] for a run never changed.

    Raises:
        ValueError: `steps` is below the step the run resumes from.
    """
    if not resumed_step:
        return []
    history = [dict(e) for e in state.get("extended", [])]
    # checkpoints from before the schedule was recorded: their total is taken to be this one
    before = int(state.get("steps", steps))
    if steps == before:
        return history
    if steps < resumed_step:
        raise ValueError(f"--steps {steps} is below step {resumed_step}, where {run_dir} "
                         f"resumes; give --steps >= {resumed_step}, or start over with "
                         "--resume no")
    return history + [{"at_step": resumed_step, "from": before, "to": steps}]


def write_run_config(run_dir: Path, record: dict, settings, world_size: int,
                     extended: list[dict]) -> None:
    """Write run_config.json: `record` (what the command says the run is) with the world
    size, the global batch (samples a step) and the changes of `steps` made on resume."""
    write_json(Path(run_dir) / "run_config.json", {
        **record, "world_size": world_size,
        "global_batch": settings.batch * settings.grad_accum * world_size, "extended": extended})


def write_json(file: Path, record: dict) -> None:
    """Write `record` as indented JSON through a temporary file and a rename."""
    tmp = Path(file).with_name(Path(file).name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, file)
