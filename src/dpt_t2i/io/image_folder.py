"""An output folder of PNG images and `index.jsonl`, never left half-written.

Files are written into a staging folder beside the output folder (so on the same file
system) and moved into place at the end, the index last: an interrupted run leaves either
nothing or images without an index, never an index that names a missing file. PNGs are
written by PIL without metadata, so the same pixels give byte-identical files. One writer at a
time and resuming a killed run: `io/folder_writer.py`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

INDEX = "index.jsonl"
PLAN = "plan.json"              # in a resumable staging folder: what the run makes
PUBLISHING = "publishing.json"  # PLAN renamed by `publish` once files start moving into `out`
REPLACED = "replaced.jsonl"     # the index of the earlier run `publish` is replacing


def check_output_folder(out: str | Path, names: Iterable[str], overwrite: bool = False) -> Path:
    """Check, before any work, that `out` can receive the files `names` and the index.

    Args:
        out: the output folder; it may not exist yet (parents are created when publishing).
        names: file names the run will write into it.
        overwrite: allow replacing an earlier run (its index and the files it names) and
            files of the same names.

    Returns:
        `out`, resolved.

    Raises:
        ValueError: `out` is a file, holds a run or clashing files without `overwrite`,
            or no file can be created where the run must write.
    """
    out = _check_place(out)
    if not overwrite:
        _check_free(out, names)
    return out


def _check_place(out: str | Path) -> Path:
    """`out` resolved; ValueError if it is a file or no file can be created there."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} is a file; expected a folder to write images into")
    _check_writable(out.parent)
    if out.is_dir():
        _check_writable(out)
    return out


def _check_free(out: Path, names: Iterable[str]) -> None:
    """ValueError if `out` holds a run or a file of one of `names`."""
    if not out.is_dir():
        return
    if (out / INDEX).exists():
        raise ValueError(f"{out} already holds a run ({INDEX}); pass --overwrite to replace "
                         "it, or choose another output folder")
    clash = next((n for n in names if (out / n).exists()), None)
    if clash is not None:
        raise ValueError(f"{out} already has {clash}; pass --overwrite to replace it, or "
                         "choose another output folder")


def _check_writable(folder: Path) -> None:
    """Create (and delete) a file in `folder`'s nearest existing ancestor."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot create {folder}: {existing} is a file; expected a writable "
                         "output folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(f"cannot write in {existing} ({err.strerror or err}); expected a "
                         "writable output folder") from None


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_stages(out: Path) -> None:
    """Remove the staging folders `.NAME.partial-PID-HEX` beside `out` of processes now dead
    (a live process's are left alone)."""
    prefix = f".{out.name}.partial-"
    if not out.parent.is_dir():
        return
    for path in out.parent.iterdir():
        pid = path.name[len(prefix):].partition("-")[0]
        if path.name.startswith(prefix) and pid.isdigit() and path.is_dir() \
                and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` to write into; removed on exit whatever happens (the stale
    ones of dead processes are removed first)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(out)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def numbered_records(prompts: list[str], num_images: int, seed: int, fields: dict
                     ) -> list[dict]:
    """One index record per image, in run order: image k of the run (counted over all
    prompts, `num_images` each) is file k.png (five digits) with seed `seed` + k, plus `fields`."""
    records = []
    for p, prompt in enumerate(prompts):
        for _ in range(num_images):
            k = len(records)
            records.append({"file": f"{k:05d}.png", "prompt": prompt, "prompt_index": p,
                            "seed": seed + k, **fields})
    return records


def write_png(path: Path, image: np.ndarray) -> None:
    """Write one (H, W, 3) uint8 image."""
    Image.fromarray(image).save(path, format="PNG")


def write_index(folder: Path, records: list[dict]) -> None:
    """Write `index.jsonl`: one JSON object a line, in the records' order."""
    with (folder / INDEX).open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def read_index(folder: Path, required: tuple[str, ...] = ("file",)) -> list[dict]:
    """The records of a folder's `index.jsonl`; ValueError naming the line if one is malformed."""
    path = Path(folder) / INDEX
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {n} is not JSON ({err.msg}); expected one JSON "
                             "object per line as `dpt generate` writes") from None
        missing = [k for k in required if not isinstance(record, dict) or k not in record]
        if missing:
            raise ValueError(f"{path} line {n} lacks {', '.join(missing)}; expected "
                             f"{', '.join(required)} in every record")
        records.append(record)
    return records


def publish(stage: Path, out: Path, overwrite: bool = False) -> None:
    """Move a finished staging folder's images into `out`, the index last; remove the stage.

    A new `out` is one rename of the staging folder. With `overwrite`, an earlier run in
    `out` is removed first (its index, then the images it names that the new run does not
    replace). Run again on a stage whose publication was interrupted, it finishes the job.
    """
    if not (stage / INDEX).is_file():
        raise ValueError(f"{stage} has no {INDEX}: publish a finished run only")
    names = [r["file"] for r in read_index(stage)]
    if (stage / PLAN).exists():
        os.replace(stage / PLAN, stage / PUBLISHING)
    if not out.exists():
        (stage / PUBLISHING).unlink(missing_ok=True)
        os.replace(stage, out)
        return
    if overwrite and (out / INDEX).exists():
        os.replace(out / INDEX, stage / REPLACED)
    if (stage / REPLACED).exists():
        _remove_named(out, stage / REPLACED, keep=set(names))
    for name in names:
        if (stage / name).exists():
            os.replace(stage / name, out / name)
    os.replace(stage / INDEX, out / INDEX)
    shutil.rmtree(stage, ignore_errors=True)


def _remove_named(out: Path, index: Path, keep: set[str]) -> None:
    """Delete the files the index file `index` names directly in `out`, but for `keep` (which
    the new run replaces); then the index file."""
    names = []
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            names.append(record.get("file"))
    for name in names:
        if isinstance(name, str) and name and Path(name).name == name and name not in keep \
                and (out / name).is_file():
            (out / name).unlink()
    index.unlink()

