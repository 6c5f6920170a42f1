"""What each micro-step of a training run reads: the latents and text tensors of its slot.

`open_feed` joins a source to the step: the slot's samples are drawn (ahead, by DataLoader
workers, `data.loader`) and passed through the frozen VAE and text encoder
(`inputs.encode_batch`), or, from a `cache.LatentCache`, the slot's rows are read (ahead too)
and the encoders are skipped (`cache.cached_inputs`). The loop asks `feed.inputs(slot)` once
per micro-step, in slot order, and reads `feed.skipped` for its summary.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..data.loader import DrawSamples, LoaderSettings, SlotLoader
from ..data.sources import SampleSource
from ..model.config import DPTConfig
from .cache import CacheDraw, LatentCache, cached_inputs
from .inputs import FrozenParts, encode_batch


class TrainingFeed:
    """The inputs of a process's slots, in order (see the module docstring).

    Args:
        loader: draws the slots' batches.
        encode: a loader item -> (latents (B, C, h, w), inputs dict of `prepare_inputs`).
    """

    def __init__(self, loader: SlotLoader,
                 encode: Callable[[dict], tuple[Tensor, dict[str, Tensor]]]):
        self.loader, self.encode = loader, encode

    def inputs(self, slot: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Latents and text tensors of `slot`, the next slot of the feed's list."""
        return self.encode(self.loader.next(slot))

    @property
    def skipped(self) -> int:
        """Unreadable images met so far (by this process, its workers included)."""
        return self.loader.skipped

    def close(self) -> None:
        self.loader.close()


class _EncodeImages:
    def __init__(self, parts: FrozenParts, config: DPTConfig, need_caption_states: bool):
        self.parts, self.config, self.need = parts, config, need_caption_states

    def __call__(self, item: dict) -> tuple[Tensor, dict[str, Tensor]]:
        return encode_batch(self.parts, item["batch"], self.config, self.need)


class _ReadCache:
    def __init__(self, cache: LatentCache, config: DPTConfig, need_caption_states: bool,
                 device):
        self.empty, self.config, self.need, self.device = (cache.empty, config,
                                                           need_caption_states, device)

    def __call__(self, item: dict) -> tuple[Tensor, dict[str, Tensor]]:
        return cached_inputs(item["rows"], self.empty, self.config, self.need, self.device)


def open_feed(source: SampleSource | LatentCache, parts: FrozenParts, config: DPTConfig,
              batch: int, slots: range, need_caption_states: bool,
              loader: LoaderSettings | None = None) -> TrainingFeed:
    """The feed of `slots` (`loader.process_slots`) from a sample source.

    Args:
        source: training samples, or a latent cache of them (stage 1: `cache.LatentCache`,
            checked against the run with its `check`).
        parts: the frozen encoders the batches go through (their device only, from a cache).
        config: the DPT config (which text states the step needs).
        batch: samples per slot.
        slots: this process's slots from the (resumed) first step on.
        need_caption_states: the step also needs the captions as U-Net condition.
        loader: workers, prefetch, pinned memory; None draws inline.
    """
    if isinstance(source, LatentCache):
        return TrainingFeed(SlotLoader(CacheDraw(source, batch), slots, loader),
                            _ReadCache(source, config, need_caption_states, parts.device))
    return TrainingFeed(SlotLoader(DrawSamples(source, batch), slots, loader),
                        _EncodeImages(parts, config, need_caption_states))
