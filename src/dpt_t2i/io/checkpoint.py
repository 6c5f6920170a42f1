"""Atomic, resumable training checkpoints stored as safetensors.

A run folder holds `step-00001000/` checkpoints and a `latest` file naming the newest.
Each checkpoint holds one `<name>.safetensors` per module and per optimizer (optimizer
tensors flattened, the rest of its state kept as JSON in the file's metadata), and
`state.json` with the step, the id of the run that wrote it and whatever the caller adds.
A checkpoint is written to a temporary folder, read back, and renamed into place, so a crash
never leaves a half-written one under a step name.

Resuming (`resume_run`) takes the newest INTACT checkpoint of the run (every file present and
readable, `state.json` valid) and says which one and why newer ones were skipped; when it
cannot tell where the run stands it raises ValueError and touches nothing. Only a checkpoint
just written and read back prunes others: older ones of its run beyond `keep`, and those of
another run (a run started over in the same folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

_STEP_FOLDER = re.compile(r"step-(\d{8})")
_UNKNOWN = object()  # the run of a checkpoint whose state.json cannot be read


@dataclass
class Resumed:
    """Where a run continues.

    Attributes:
        step: the step it continues from (0: a fresh run).
        state: the loaded checkpoint's state.json ({} for a fresh run).
        run_id: the run's id, written into every checkpoint it saves (None: a run from before
            ids, kept so its own checkpoints stay its own).
        message: one line saying where it continues and why; None for a plain fresh start.
    """

    step: int = 0
    state: dict = field(default_factory=dict)
    run_id: str | None = None
    message: str | None = None


class _Broken(Exception):
    """A checkpoint that cannot be used; `reason` says which file and how, e.g.
    'heads.safetensors is truncated'."""

    def __init__(self, reason: str, missing: str | None = None):
        super().__init__(reason)
        self.reason, self.missing = reason, missing


def save_checkpoint(run_dir: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    extra: dict | None = None, keep: int = 2, run_id: str | None = None) -> Path:
    """Write checkpoint `step` into `run_dir` atomically, read it back, then prune.

    Args:
        run_dir: the run folder.
        step: the number of optimizer steps taken.
        modules / optimizers: what the checkpoint holds, by file name.
        extra: more keys for state.json (e.g. wall_s).
        keep: checkpoints of this run kept, counting this one (0 keeps every one).
        run_id: the run writing it (`Resumed.run_id`); checkpoints of another run go.

    Returns:
        The checkpoint folder.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:08d}"
    with atomic_folder(final) as tmp:
        for name, module in modules.items():
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, tmp / f"{name}.safetensors")
        for name, opt in (optimizers or {}).items():
            tensors, meta = _flatten_optimizer(opt)
            save_file(tensors, tmp / f"{name}.optim.safetensors",
                      metadata={"state": json.dumps(meta)})
        run = {"run": run_id} if run_id is not None else {}  # None: a run from before ids
        (tmp / "state.json").write_text(json.dumps({"step": step, **run, **(extra or {})},
                                                   indent=1))
        try:  # a write the disk cut short must not land, nor prune what it would replace
            _read(tmp, step, list(modules), list(optimizers or {}))
        except _Broken as err:
            raise ValueError(f"checkpoint {final} did not read back ({err.reason}); "
                             "nothing was replaced or pruned: is the disk full?") from None
    _write_atomic(run_dir / "latest", final.name)
    _prune(run_dir, final, run_id, keep)
    return final


def _prune(run_dir: Path, final: Path, run_id: str | None, keep: int) -> None:
    """After `final` was written and read back: drop the checkpoints of another run (one
    started over in this folder) and this run's older ones beyond `keep`.

    Newer checkpoints of this run, or of no known run, stay: this run rewrites them when it
    gets there, and until then they may be all that is left of a longer run.
    """
    older = []
    for path in _step_folders(run_dir).values():
        if path == final:
            continue
        run = _run_of(path)
        if run is not _UNKNOWN and run != run_id:
            shutil.rmtree(path, ignore_errors=True)
        elif path.name < final.name:
            older.append(path)
    older.sort()
    for old in older[:max(0, len(older) - (keep - 1))] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final` by renames.

    On any exception the temporary folder is removed and `final` is left as it was. An
    existing `final` is renamed aside first and removed only once the new one is in place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        aside = None
        if final.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
            os.replace(final, aside / final.name)
        os.replace(tmp, final)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resume_run(run_dir: Path, modules: dict[str, torch.nn.Module],
               optimizers: dict[str, torch.optim.Optimizer] | None = None,
               resume: bool = True) -> Resumed:
    """Load the newest intact checkpoint of `run_dir` into `modules` and `optimizers`.

    Args:
        run_dir: the run folder.
        modules / optimizers: filled in place; their names are the files a checkpoint needs.
        resume: False starts a new run (its first checkpoint replaces the old run's ones).

    Returns:
        Where the run continues; `message` is the line to print.

    Raises:
        ValueError: checkpoints exist but none is intact, or they belong to several runs and
            `latest` does not say which; nothing is touched.
    """
    run_dir = Path(run_dir)
    folders = _step_folders(run_dir)
    if not resume:
        note = (f"starting over at step 0 (resume off): the {len(folders)} checkpoint(s) in "
                f"{run_dir} go once this run writes its first" if folders else None)
        return Resumed(run_id=_new_run_id(), message=note)
    if not folders:  # nothing to lose; a `latest` left alone is worth a word
        note = (f"starting at step 0: {run_dir} has a latest file but no checkpoint folder"
                if (run_dir / "latest").exists() else None)
        return Resumed(run_id=_new_run_id(), message=note)
    path, (module_states, optimizer_states, state), notes = _choose(
        run_dir, folders, list(modules), list(optimizers or {}))
    _apply(path, modules, optimizers or {}, module_states, optimizer_states)
    message = f"resuming from {path} (step {state['step']})" + "".join(f"; {n}" for n in notes)
    return Resumed(state["step"], state, state.get("run"), message)


def _choose(run_dir: Path, folders: dict[int, Path], module_names: list[str],
            optimizer_names: list[str]) -> tuple[Path, tuple, list[str]]:
    """The newest intact checkpoint of the run `latest` names (or of the only run there is),
    its contents, and notes: `latest`'s trouble and each newer folder skipped, with why."""
    pointer, trouble = _pointer(run_dir, folders)
    notes = [f"{trouble}: took the newest intact step folder"] if trouble else []
    states, skipped = {}, []
    for step, path in folders.items():
        try:
            states[step] = _state(path, step)
        except _Broken as err:
            skipped.append((step, f"skipped {path.name}: {err.reason}"))
    runs = {step: state.get("run") for step, state in states.items()}
    if pointer in states:
        ref = runs[pointer]
    elif len(set(runs.values())) > 1:
        held = ", ".join(f"{folders[s].name}: run {r}" for s, r in runs.items())
        raise ValueError(f"{run_dir}: cannot tell which run to continue: "
                         f"{trouble or 'latest names no readable checkpoint'}, and the "
                         f"step folders belong to different runs ({held}); nothing was "
                         "deleted: move away the folders of the run you do not want, or start "
                         "over in another folder (--resume no)")
    else:
        ref = next(iter(runs.values()), _UNKNOWN)
    for step, path in folders.items():
        if step in states and runs[step] != ref:
            skipped.append((step, f"skipped {path.name}: written by another run"))
        elif step in states:
            try:
                contents = _read(path, step, module_names, optimizer_names, states[step])
            except _Broken as err:
                skipped.append((step, f"skipped {path.name}: {err.reason}"))
                continue
            newer = [note for s, note in sorted(skipped, reverse=True) if s > step]
            if pointer is not None and step > pointer:  # killed before `latest` moved on
                notes.append(f"newer than {folders[pointer].name}, which latest still names")
            return path, contents, notes + newer
    reasons = "; ".join(note.removeprefix("skipped ") for _, note in sorted(skipped, reverse=True))
    raise ValueError(f"{run_dir}: no intact checkpoint to resume from ({reasons}); nothing was "
                     "deleted: repair or move these folders, or start over in another folder "
                     "(--resume no)")


def _pointer(run_dir: Path, folders: dict[int, Path]) -> tuple[int | None, str | None]:
    """The step `latest` names, or None and what is wrong with it."""
    file = run_dir / "latest"
    if not file.is_file():
        return None, "latest is missing"
    raw = file.read_bytes()[:40]
    match = _STEP_FOLDER.fullmatch(raw.decode("utf-8", "replace").strip())
    if match is None:
        return None, f"latest holds {raw!r}, not a step folder name"
    if int(match.group(1)) not in folders:
        return None, f"latest names {match.group(0)}, which is gone"
    return int(match.group(1)), None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint the `latest` pointer names if it has its state.json, else None.

    Training loops resume through `resume_run`, which also falls back to older checkpoints.
    """
    pointer = Path(run_dir) / "latest"
    if not pointer.is_file():
        return None
    path = Path(run_dir) / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None) -> dict:
    """Load modules and optimizers in place from a checkpoint folder; returns its state.json.

    Every file is read before any module changes. A missing file raises FileNotFoundError,
    any other damage ValueError, each naming the file.
    """
    path = Path(path)
    match = _STEP_FOLDER.fullmatch(path.name)
    try:
        contents = _read(path, int(match.group(1)) if match else None, list(modules),
                         list(optimizers or {}))
    except _Broken as err:
        if err.missing:
            raise FileNotFoundError(f"checkpoint {path} has no {err.missing}; expected one per "
                                    "module and optimizer") from None
        raise ValueError(f"checkpoint {path}: {err.reason}") from None
    module_states, optimizer_states, state = contents
    _apply(path, modules, optimizers or {}, module_states, optimizer_states)
    return state


def _apply(path: Path, modules: dict, optimizers: dict, module_states: dict,
           optimizer_states: dict) -> None:
    for name, module in modules.items():
        try:
            module.load_state_dict(module_states[name])
        except RuntimeError as err:  # intact, but of another shape: not this model's
            first = str(err).strip().splitlines()[-1].strip()
            raise ValueError(f"checkpoint {path}: {name}.safetensors does not fit this "
                             f"model ({first})") from None
    for name, opt in optimizers.items():
        opt.load_state_dict(optimizer_states[name])


def _read(path: Path, step: int | None, module_names: list[str], optimizer_names: list[str],
          state: dict | None = None) -> tuple[dict, dict, dict]:
    """Every tensor and state.json of a checkpoint, read in full; raises _Broken."""
    state = _state(path, step) if state is None else state
    module_states = {name: _tensors(path / f"{name}.safetensors")[0] for name in module_names}
    optimizer_states = {}
    for name in optimizer_names:
        file = path / f"{name}.optim.safetensors"
        tensors, metadata = _tensors(file)
        try:
            meta = json.loads((metadata or {})["state"])
            optimizer_states[name] = _unflatten_optimizer(tensors, meta)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise _Broken(f"{file.name} holds no readable optimizer state") from None
    return module_states, optimizer_states, state


def _state(path: Path, step: int | None) -> dict:
    """state.json, checked: a JSON object whose integer `step` matches the folder's."""
    file = path / "state.json"
    if not file.is_file():
        raise _Broken("state.json is missing", missing=file.name)
    try:
        state = json.loads(file.read_text())
    except (ValueError, OSError):
        raise _Broken("state.json is not valid JSON") from None
    if not isinstance(state, dict) or type(state.get("step")) is not int:
        raise _Broken("state.json has no integer 'step'")
    if step is not None and state["step"] != step:
        raise _Broken(f"state.json says step {state['step']}")
    if not isinstance(state.get("wall_s", 0.0), (int, float)):
        raise _Broken("state.json's wall_s is not a number")
    if not isinstance(state.get("run"), (str, type(None))):
        raise _Broken("state.json's run is not a string")
    return state


def _tensors(file: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Every tensor of a safetensors file and its metadata; raises _Broken saying what is wrong."""
    if not file.is_file():
        raise _Broken(f"{file.name} is missing", missing=file.name)
    problem = _layout_problem(file)
    if problem:
        raise _Broken(f"{file.name} {problem}")
    try:
        with safe_open(file, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    except (SafetensorError, OSError, ValueError) as err:
        raise _Broken(f"{file.name} is unreadable ({err})") from None


def _layout_problem(file: Path) -> str | None:
    """What the safetensors header says is wrong with the file's size, or None.

    Layout: 8-byte little-endian header length, the JSON header, then the tensor bytes whose
    offsets the header gives.
    """
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            return "is not a safetensors file (its header length is garbage)"
        if 8 + n > size:
            return f"is truncated ({size} bytes, its header alone needs {8 + n})"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "is not a safetensors file (its header is not valid)"
    if 8 + n + end > size:
        return f"is truncated ({size} of {8 + n + end} bytes)"
    if 8 + n + end < size:
        return f"has {size - 8 - n - end} bytes more than its header accounts for"
    return None


def _run_of(path: Path):
    """The run id in a checkpoint's state.json, or _UNKNOWN when it cannot be read."""
    try:
        return _state(path, None).get("run")
    except _Broken:
        return _UNKNOWN


def _step_folders(run_dir: Path) -> dict[int, Path]:
    """The `step-XXXXXXXX` folders of a run, newest first (temporary `.step-*` ones left out)."""
    if not Path(run_dir).is_dir():
        return {}
    found = {int(m.group(1)): p for p in Path(run_dir).iterdir()
             if p.is_dir() and (m := _STEP_FOLDER.fullmatch(p.name))}
    return dict(sorted(found.items(), reverse=True))


def _new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def trim_log(path: Path, start: int) -> None:
    """Drop the lines of a `log.jsonl` at or after step `start` (a resumed run logs them
    again) and a torn last line; rewrites the file atomically, only when something goes."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").split("\n")
    *whole, last = lines  # `last` is "" unless a kill cut the last line short
    kept = [line for line in whole if not _logged_at_or_after(line, start)]
    if last and _logged_before(last, start):
        kept.append(last)
    if len(kept) == len(lines) - 1 and last == "":
        return
    _write_atomic(path, "".join(line + "\n" for line in kept))


def _logged_at_or_after(line: str, start: int) -> bool:
    step = _logged_step(line)
    return step is not None and step >= start


def _logged_before(line: str, start: int) -> bool:
    step = _logged_step(line)
    return step is not None and step < start


def _logged_step(line: str) -> int | None:
    """The step of a log line, or None if it is not a JSON record with an integer step."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if type(step) is int else None


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
