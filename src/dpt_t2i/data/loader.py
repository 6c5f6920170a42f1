"""The batches of a process's coming training slots, drawn ahead by DataLoader workers.

Training step k, micro-step m of process r (of N) reads slot s = (k * grad_accum + m) * N + r,
the samples s*B .. s*B+B-1 of its source (`sources.draw_samples`, which replaces an
unreadable image by a later sample). `process_slots` lists the slots a process reads from a
step on, and `SlotLoader` yields their batches in that order: inline (workers 0, as the loop
drew them before) or from `torch.utils.data.DataLoader` workers that decode, resize and
collate the next `workers * prefetch` batches while the accelerator works on this one. A
batch depends only on its slot, so both ways yield the same batches, and a resumed run, which
starts the list at its checkpoint's step, the same batches an uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch.utils.data import DataLoader, Dataset

from .samples import collate
from .sources import SampleSource, draw_samples


@dataclass
class LoaderSettings:
    workers: int = 0          # DataLoader worker processes; 0 draws inline, in the loop
    prefetch: int = 2         # batches each worker keeps ready (DataLoader's prefetch_factor)
    pin_memory: bool = False  # page-locked batches: asynchronous copies to a CUDA device

    def __post_init__(self):
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {self.prefetch}")


def process_slots(start: int, steps: int, grad_accum: int, world: int, rank: int) -> range:
    """The slots process `rank` of `world` reads in steps start .. steps-1, in order."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    return range(start * grad_accum * world + rank, steps * grad_accum * world, world)


class DrawSamples:
    """draw(slot): the collated samples slot*B .. slot*B+B-1 of `source`.

    Returns:
        {"slot": slot, "batch": `samples.collate` of the samples, "skipped": the unreadable
        images met while drawing them}: a worker's source counts its own skips, so the
        loader adds up the counts that come back.
    """

    def __init__(self, source: SampleSource, batch: int):
        self.source, self.batch = source, batch

    def __call__(self, slot: int) -> dict:
        before = self.source.skipped
        samples = draw_samples(self.source, slot * self.batch, self.batch)
        return {"slot": slot, "batch": collate(samples), "skipped": self.source.skipped - before}


class _Slots(Dataset):
    """Item j: `draw(slots[j])`."""

    def __init__(self, draw: Callable[[int], dict], slots: Sequence[int]):
        self.draw, self.slots = draw, slots

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, j: int) -> dict:
        return self.draw(self.slots[j])


def _as_is(item: dict) -> dict:
    return item


class SlotLoader:
    """The draws of `slots`, in order, drawn inline or ahead by worker processes.

    Args:
        draw: slot -> a dict with "slot" and "skipped" (`DrawSamples`, or a cache's reader);
            with workers it runs in their processes, so it must pickle where the platform
            spawns them.
        slots: the slots to read (`process_slots`).
        settings: workers, prefetch and pinned memory.

    Attributes:
        skipped: unreadable images met by the draws read so far.
    """

    def __init__(self, draw: Callable[[int], dict], slots: Sequence[int],
                 settings: LoaderSettings | None = None):
        settings = settings or LoaderSettings()
        self.skipped = 0
        if settings.workers == 0:
            self._loader = None
            self._items = (draw(slot) for slot in slots)
        else:
            self._loader = DataLoader(
                _Slots(draw, slots), batch_size=None, shuffle=False, collate_fn=_as_is,
                num_workers=settings.workers, prefetch_factor=settings.prefetch,
                pin_memory=settings.pin_memory, persistent_workers=True)
            self._items = iter(self._loader)

    def next(self, slot: int) -> dict:
        """The draw of `slot`, which must be the next slot of the list."""
        try:
            item = next(self._items)
        except StopIteration:
            raise RuntimeError(f"slot {slot} asked for after the loader's last slot") from None
        if item["slot"] != slot:
            raise RuntimeError(f"the loader drew slot {item['slot']} where slot {slot} is "
                               "needed; the slots and the training steps disagree")
        self.skipped += item["skipped"]
        return item

    def close(self) -> None:
        """Stop the workers (the loader reads nothing after this)."""
        self._items = iter(())
        self._loader = None
