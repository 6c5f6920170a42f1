"""Atomic, resumable training checkpoints stored as safetensors.

A run folder holds `step-00001000/` checkpoints and a `latest` file naming the newest.
Each checkpoint holds one `<name>.safetensors` per module and per optimizer (optimizer
tensors flattened, the rest of its state kept as JSON in the file's metadata), and
`state.json` with the step and whatever the caller adds. A checkpoint is written to a
temporary folder and renamed into place, so a crash never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(run_dir: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    extra: dict | None = None, keep: int = 2) -> Path:
    """Write checkpoint `step` into `run_dir` atomically and prune old ones, keeping `keep`
    (0 keeps every checkpoint)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:08d}"
    with atomic_folder(final) as tmp:
        for name, module in modules.items():
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, tmp / f"{name}.safetensors")
        for name, opt in (optimizers or {}).items():
            tensors, meta = _flatten_optimizer(opt)
            save_file(tensors, tmp / f"{name}.optim.safetensors", metadata={"state": json.dumps(meta)})
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}, indent=1))
    _write_atomic(run_dir / "latest", final.name)
    # Later steps than this one were left by a run that was started over: stale, not newer.
    others = sorted(p for p in run_dir.glob("step-*") if p != final)
    stale = [p for p in others if p.name > final.name]
    older = [p for p in others if p.name < final.name]
    pruned = older[:max(0, len(older) - (keep - 1))] if keep > 0 else []
    for old in stale + pruned:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename.

    On any exception the temporary folder is removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None if it has none."""
    pointer = Path(run_dir) / "latest"
    if not pointer.is_file():
        return None
    path = Path(run_dir) / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None) -> dict:
    """Load modules and optimizers in place from a checkpoint folder; returns its state.json."""
    path = Path(path)
    for name, module in modules.items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {file.name}; expected one per module")
        module.load_state_dict(load_file(file))
    for name, opt in (optimizers or {}).items():
        from safetensors import safe_open

        file = path / f"{name}.optim.safetensors"
        with safe_open(file, framework="pt") as f:
            meta = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        opt.load_state_dict(_unflatten_optimizer(tensors, meta))
    return json.loads((path / "state.json").read_text())


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
