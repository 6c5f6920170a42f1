"""One writer at a time into an output folder, and a killed run resumed where it stopped.

A run into `out` holds an exclusive lock, `.NAME.lock` beside `out` (flock, which the OS drops
when the process dies), from its checks to its end; a second writer gets a ValueError naming
the holder's pid. The run writes into a staging folder beside `out`, `.NAME.partial`, that is
at every moment an image folder of the images finished so far: a batch's PNGs are written
first, then the batch's index lines are appended to its `index.jsonl` in one write, and
`plan.json` beside them holds the records planned, the batch size and whether the run replaces
the one in `out`. When every image is made the staging folder is published into `out`
(`image_folder.publish`, itself resumable). A run killed on the way leaves `.NAME.partial`:
the next run refuses to start over it unless told to resume it (`resume`: keep its finished
images and make the rest, in the batches an uninterrupted run makes, so the folder ends
byte-identical to an uninterrupted run's) or to discard it (`overwrite`). Resuming keeps
the batch size and its boundaries because batch composition changes pixels: the shipped
model on the CPU, 8 images at batch size 1 against 8, gave 5 PNGs that differ by one level.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .image_folder import (INDEX, PLAN, PUBLISHING, check_output_folder, publish, read_index,
                           remove_stale_stages)

RESUME_OR_OVERWRITE = ("--resume keeps the images of an unfinished run and --overwrite "
                       "discards them; pass one of the two")


@contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold `out`'s writer lock (`.NAME.lock` beside it, created with `out`'s parents).

    Yields:
        `out`, resolved. Raises ValueError, naming the holder's pid, if another process holds
        the lock. On exit the lock file is removed, and the parents created for it if `out`
        was not made and they are empty.
    """
    out = Path(out).expanduser().resolve()
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    try:
        fd = _acquire(path, out)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield out
    finally:
        try:
            path.unlink()  # before letting go, so a waiting opener sees another file (_acquire)
        except OSError:
            pass
        os.close(fd)
        if not out.exists():
            _remove_empty(created)


def _acquire(path: Path, out: Path) -> int:
    """An open descriptor of lock file `path`, flock'ed; ValueError if another process holds it.

    A holder removes the file as it lets go, so a descriptor opened just before may lock a
    file no longer there: then open again (flock's unlink race).
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(f"cannot create the lock file {path} ({err.strerror or err}); "
                             "expected a writable output folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"{out} is being written by another run (pid {holder}); wait for "
                             "it to end, or choose another output folder") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@dataclass
class _Partial:
    """What a staging folder `.NAME.partial` left by an earlier run holds."""

    planned: list[dict]     # its records, as JSON reads them back
    batch_size: int | None  # None: publication had begun (nothing left to make)
    overwrite: bool         # it replaces the run already in `out`
    done: int               # images finished and indexed, from the first, whole batches
    index_bytes: int        # the length of its index up to image `done`


def _plan_text(records: list[dict], batch_size: int, overwrite: bool) -> str:
    return json.dumps({"batch_size": batch_size, "overwrite": overwrite, "records": records})


def _read_partial(stage: Path) -> _Partial | None:
    """The staging folder's run, or None if there is none or it cannot be read."""
    for name, publishing in ((PLAN, False), (PUBLISHING, True)):
        if (stage / name).is_file():
            try:
                plan = json.loads((stage / name).read_text(encoding="utf-8"))
                records, batch_size = plan["records"], int(plan["batch_size"])
                overwrite = bool(plan["overwrite"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
            if publishing:
                return _Partial(records, None, overwrite, len(records), 0)
            return _Partial(records, batch_size, overwrite, *_finished(stage, records,
                                                                       batch_size))
    if (stage / INDEX).is_file():  # PUBLISHING removed just before the rename into a new `out`
        try:
            records = read_index(stage)
        except (OSError, ValueError):
            return None
        return _Partial(records, None, False, len(records), 0)
    return None


def _finished(stage: Path, planned: list[dict], batch_size: int) -> tuple[int, int]:
    """(n, bytes): the first n planned images are indexed in `stage` (their lines whole and
    as planned) and written, n a whole number of batches unless all are done; their index
    lines fill its first `bytes` bytes."""
    ends, n = [0], 0
    for line in (stage / INDEX).read_bytes().split(b"\n")[:-1]:  # the last piece: torn or ""
        try:
            record = json.loads(line)
        except ValueError:
            break
        if n == len(planned) or record != planned[n] or not (stage / record["file"]).is_file():
            break
        n += 1
        ends.append(ends[-1] + len(line) + 1)
    if n < len(planned):
        n -= n % batch_size
    return n, ends[n]


def _difference(planned: list[dict], found: list[dict], exact: bool) -> str | None:
    """How the records `found` differ from `planned` (None: they agree). Without `exact`, a
    record may hold keys that the planned one lacks."""
    if len(planned) != len(found):
        return f"{len(found)} images then, {len(planned)} now"
    for p, f in zip(planned, found):
        for key in {**p, **f} if exact else p:
            if p.get(key) != f.get(key):
                return (f"{p.get('file')}: {key} {json.dumps(f.get(key))} then, "
                        f"{json.dumps(p.get(key))} now")
    return None


def _as_read(records: list[dict]) -> list[dict]:
    """The records as JSON reads them back (tuples become lists)."""
    return json.loads(json.dumps(records))


def holds_run(out: Path, planned: list[dict]) -> bool:
    """Whether `out`'s index holds the records planned (and the images it names): a finished
    run of that plan (`dpt report` reuses such a folder; `--resume` has nothing to do)."""
    planned = _as_read(planned)
    try:
        found = read_index(out) if (out / INDEX).is_file() else None
    except (OSError, ValueError):
        return False
    return found is not None and _difference(planned, found, exact=False) is None and \
        all((out / r["file"]).is_file() for r in found)


class FolderWriter:
    """A run's way into its output folder, made by `open_folder` under the folder's lock.

    `start` (once the model is loaded) gives the records still to make, `add` indexes a
    batch whose PNGs are written in `stage`, `finish` publishes the folder.
    """

    def __init__(self, out: Path, batch_size: int, overwrite: bool):
        self.out = out
        self.stage = out.parent / f".{out.name}.partial"
        self.batch_size = batch_size
        self.overwrite = overwrite               # replace the run in `out` when publishing
        self.adopted: _Partial | None = None     # the unfinished run resumed
        self.complete = False                    # `out` already holds this very run

    def check(self, records: list[dict], resume: bool) -> None:
        """ValueError, before the model loads, if the run cannot go ahead as asked."""
        planned = _as_read(records)
        try:
            partial = _read_partial(self.stage) if self.stage.is_dir() else None
        except OSError:
            partial = None
        if partial is not None and partial.done == 0:
            partial = None  # nothing made: start over it
        if resume and partial is not None:
            why = _difference(planned, partial.planned, exact=False)
            if why is None and partial.batch_size not in (None, self.batch_size):
                why = (f"--batch-size {partial.batch_size} then, {self.batch_size} now; the "
                       "batch an image is made in can change its last bits")
            if why is not None:
                raise ValueError(f"--resume: the unfinished run in {self.stage} was planned "
                                 f"with other settings ({why}); pass the settings it was "
                                 "started with, or --overwrite to start over")
            self.adopted, self.overwrite = partial, partial.overwrite
            if partial.batch_size is None:
                return  # its publication had begun: some of its images are in `out` already
        elif resume and holds_run(self.out, planned):
            self.complete = True
            return
        elif partial is not None and not self.overwrite:
            raise ValueError(f"{self.out} has an unfinished run ({partial.done} of "
                             f"{len(partial.planned)} images made, in {self.stage}); pass "
                             "--resume to finish it, or --overwrite to start over")
        check_output_folder(self.out, [r["file"] for r in planned], self.overwrite)

    def start(self, records: list[dict]) -> list[dict]:
        """The staging folder made (or the unfinished run's adopted); the records still to
        make, in run order. `records` are the final ones (with what the model adds)."""
        if self.complete or self.adopted is not None:
            found = read_index(self.out) if self.complete else self.adopted.planned
            why = _difference(_as_read(records), found, exact=True)
            if why is not None:
                where = self.out / INDEX if self.complete else self.stage
                raise ValueError(f"--resume: {where} was planned with other settings ({why}); "
                                 "pass the settings it was made with, or --overwrite")
            if self.complete:
                return []
            if self.adopted.batch_size is not None:  # drop a torn or unfinished batch's lines
                os.truncate(self.stage / INDEX, self.adopted.index_bytes)
            return records[self.adopted.done:]
        if self.stage.exists():
            shutil.rmtree(self.stage)  # an earlier run with no image made, or --overwrite
        fresh = self.out.parent / f".{self.out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        fresh.mkdir()
        (fresh / PLAN).write_text(_plan_text(_as_read(records), self.batch_size, self.overwrite),
                                  encoding="utf-8")
        (fresh / INDEX).touch()
        os.replace(fresh, self.stage)  # the staging folder appears whole, plan and all
        return records

    def add(self, batch: list[dict]) -> None:
        """Index a batch whose PNGs are written in `stage`: its lines, in one append."""
        data = "".join(json.dumps(r) + "\n" for r in batch).encode()
        fd = os.open(self.stage / INDEX, os.O_WRONLY | os.O_APPEND)
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Publish the finished run into `out` (nothing to do if it was there already)."""
        if not self.complete:
            publish(self.stage, self.out, overwrite=self.overwrite)

    def close(self) -> None:
        """Remove the staging folder if it holds no finished image (nothing to resume)."""
        try:
            empty = (self.stage / PLAN).is_file() and (self.stage / INDEX).stat().st_size == 0
        except OSError:
            return
        if empty:
            shutil.rmtree(self.stage, ignore_errors=True)


@contextmanager
def open_folder(out: str | Path, records: list[dict], batch_size: int, overwrite: bool = False,
                resume: bool = False) -> Iterator[FolderWriter]:
    """Take `out` for a run of `records`, made `batch_size` at a time, for the whole block.

    Args:
        out: the output folder.
        records: the planned index records (`file` names the image), in run order.
        batch_size: images made together (a resumed run must use the same).
        overwrite: replace the run in `out` and discard an unfinished one.
        resume: keep an unfinished run's images (it must be planned the same), or start a
            new run if there is none.

    Yields:
        The FolderWriter. Raises ValueError, before any work, if another process writes
        `out`, `out` cannot take the run, or an unfinished run is in the way.
    """
    if overwrite and resume:
        raise ValueError(RESUME_OR_OVERWRITE)
    out = check_output_folder(out, [], overwrite=True)  # a folder, and writable
    with output_lock(out):
        remove_stale_stages(out)
        writer = FolderWriter(out, batch_size, overwrite)
        writer.check(records, resume)
        try:
            yield writer
        finally:
            writer.close()
