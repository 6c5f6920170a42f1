"""Helpers for the resume tests of the Shapes trainers: interrupt a run, compare run folders."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dpt_t2i.shapes_model import loop


def watch_steps(monkeypatch, trainer_module, stop_at: int | None = None) -> list[int]:
    """Record the steps a trainer takes; raise KeyboardInterrupt at `stop_at`, as a kill would.

    Wraps the `run_loop` the trainer module imported, so the trainer's own step runs unchanged.
    """
    taken: list[int] = []

    def run_loop(run_dir, total_steps, step_fn, *args, **kwargs):
        def watched(step: int) -> dict[str, float]:
            if step == stop_at:
                raise KeyboardInterrupt
            taken.append(step)
            return step_fn(step)

        return loop.run_loop(run_dir, total_steps, watched, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "run_loop", run_loop)
    return taken


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under `folder`, keyed by file and name."""
    out = {}
    for file in sorted(Path(folder).rglob("*.safetensors")):
        for name, value in load_file(file).items():
            out[f"{file.relative_to(folder)}:{name}"] = value
    return out


def assert_identical(a: Path, b: Path) -> None:
    """The two folders hold the same tensors, bit for bit."""
    ta, tb = tensors(a), tensors(b)
    assert ta and ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different[:5]


def assert_changed(before: Path, after: Path, file: str) -> None:
    """Training moved `file`'s weights between two checkpoints (so equality means something)."""
    ta, tb = load_file(Path(before) / file), load_file(Path(after) / file)
    assert any(not torch.equal(ta[k], tb[k]) for k in ta)
