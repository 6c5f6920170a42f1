"""DPT training samples from COCO captions and RefCOCO boxes, and a RefCOCO evaluation set.

Sample `i` of seed `s` is always the same: its image is the `i % N`-th of epoch `i // N` in
that epoch's seeded order (`sources.EpochShuffle`: every image once per epoch, a new order
each epoch), and its caption, negatives and referring expression are drawn from
`np.random.default_rng([s, i])`. Images are squashed (not cropped) to a square; a box in
cxcywh normalised to the image is unchanged by squashing, so a ref's box is used as it is. A
missing or broken image file is skipped and counted, never raised: with DataLoader workers
each worker counts its own skips (`loader.DrawSamples` reports them back).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image

from .coco import CaptionedImage
from .refcoco import RefItem
from .samples import DPTSample
from .sources import EpochShuffle
from .text_negatives import caption_negatives

FAMILY = "coco"
_FALLBACK_TRIES = 20  # draws per wanted negative when borrowing other images' captions


def load_rgb(path: Path, resolution: int) -> np.ndarray | None:
    """An image file as (resolution, resolution, 3) uint8, squashed with bicubic resampling.

    Returns:
        None when the file is missing or cannot be decoded.
    """
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((resolution, resolution), Image.BICUBIC)
        return np.array(image, dtype=np.uint8)  # a writable copy
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution!r}")


class RealDPTData:
    """COCO images with a caption, K hard negatives and (where RefCOCO has one) a boxed
    referring expression each.

    Args:
        captioned: the images and their captions (`read_coco_captions`); at least 2.
        refs: RefCOCO refs (`read_refcoco`), joined to the images by image id; refs on
            images not in `captioned` are unused. None: no referring expressions.
        resolution: side of the square images returned, in pixels.
        n_negatives: K, the number of negatives every sample carries (>= 1).
        seed: the stream's seed; it also orders each epoch's images.

    Attributes:
        skipped: how many `sample` calls met a missing or unreadable image.
        skipped_paths: those images' paths.
    """

    def __init__(self, captioned: list[CaptionedImage], refs: list[RefItem] | None,
                 resolution: int, n_negatives: int = 3, seed: int = 0):
        _check_resolution(resolution)
        if len(captioned) < 2:
            raise ValueError(f"got {len(captioned)} captioned image(s); expected at least 2 "
                             "(other images' captions are the negatives of last resort)")
        if n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
        self.items = list(captioned)
        self.resolution, self.n_negatives, self.seed = resolution, n_negatives, seed
        sizes = {item.image_id: (item.width, item.height) for item in self.items}
        self.refs_by_image: dict[int, list[RefItem]] = defaultdict(list)
        for ref in refs or []:
            if ref.image_id not in sizes:
                continue
            if sizes[ref.image_id] != (ref.width, ref.height):
                raise ValueError(f"ref {ref.ref_id} is on image {ref.image_id} of size "
                                 f"{ref.width}x{ref.height}, but the captions file gives it "
                                 f"{sizes[ref.image_id][0]}x{sizes[ref.image_id][1]}; "
                                 "expected the same image in both")
            self.refs_by_image[ref.image_id].append(ref)
        self.order = EpochShuffle(len(self.items), seed)
        self.skipped = 0
        self.skipped_paths: set[Path] = set()

    def __len__(self) -> int:
        return len(self.items)

    def identity(self) -> dict:
        """What makes the samples what they are (a latent cache records it): the seed, K, the
        resolution, and a digest of the images' ids, file names and captions and the refs."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(json.dumps([item.image_id, item.path.name, item.captions]).encode())
        for image_id in sorted(self.refs_by_image):
            for ref in self.refs_by_image[image_id]:
                digest.update(json.dumps([ref.ref_id, ref.sentences, list(ref.box)]).encode())
        return {"kind": FAMILY, "images": len(self.items),
                "refs": sum(map(len, self.refs_by_image.values())), "seed": self.seed,
                "n_negatives": self.n_negatives, "resolution": self.resolution,
                "digest": digest.hexdigest()[:16]}

    def image_index(self, index: int) -> int:
        """The position in `items` of sample `index`'s image (its epoch's seeded order)."""
        return self.order(index)

    def sample(self, index: int) -> DPTSample | None:
        """Sample `index` (>= 0; image `image_index(index)`), or None if its image is unreadable.

        The caption is one of the image's captions; the negatives are `caption_negatives` of
        it, repeated in turn to exactly K when fewer; when the rules give none at all (a
        one-word caption), captions of other images drawn at random stand in. The referring
        expression is a sentence of a random ref on the image, with that ref's box.
        """
        own = self.order(index)  # IndexError below 0
        item = self.items[own]
        image = load_rgb(item.path, self.resolution)
        if image is None:
            self.skipped += 1
            self.skipped_paths.add(item.path)
            return None
        rng = np.random.default_rng([self.seed, index])
        caption = item.captions[rng.integers(len(item.captions))]
        negatives = caption_negatives(caption, self.n_negatives, rng)
        if not negatives:
            negatives = self._other_captions(own, caption, rng)
        negatives = [negatives[i % len(negatives)] for i in range(self.n_negatives)]
        refexp, box = None, None
        refs = self.refs_by_image.get(item.image_id)
        if refs:
            ref = refs[rng.integers(len(refs))]
            refexp, box = ref.sentences[rng.integers(len(ref.sentences))], ref.box
        return DPTSample(image, caption, negatives, refexp, box, FAMILY)

    def _other_captions(self, own: int, caption: str, rng: np.random.Generator) -> list[str]:
        """Up to K distinct captions of other images, each differing from `caption`."""
        out, seen = [], {caption.lower()}
        for _ in range(_FALLBACK_TRIES * self.n_negatives):
            other = (own + 1 + rng.integers(len(self.items) - 1)) % len(self.items)
            captions = self.items[other].captions
            text = captions[rng.integers(len(captions))]
            if text.lower() not in seen:
                seen.add(text.lower())
                out.append(text)
                if len(out) == self.n_negatives:
                    break
        if not out:
            raise ValueError(f"no caption of another image differs from {caption!r}; expected "
                             "captions that tell the images apart")
        return out


class RecExample(NamedTuple):
    image: np.ndarray  # (resolution, resolution, 3) uint8
    sentence: str
    box: tuple[float, float, float, float]  # cxcywh in [0, 1], also of the squashed image
    split: str
    ref_id: int


class RecEvalSet:
    """Referring expression comprehension examples: one per (ref, sentence), in ref order.

    Args:
        refs: e.g. `read_refcoco(..., splits={"val"})`.
        resolution: side of the square images, in pixels.

    Attributes:
        skipped: examples the latest pass skipped because their image was missing or broken.
        skipped_paths: those images' paths.
    """

    def __init__(self, refs: list[RefItem], resolution: int):
        _check_resolution(resolution)
        self.refs, self.resolution = list(refs), resolution
        self.skipped = 0
        self.skipped_paths: set[Path] = set()

    def __len__(self) -> int:
        """Examples in a pass, skipped ones included."""
        return sum(len(ref.sentences) for ref in self.refs)

    def __iter__(self) -> Iterator[RecExample]:
        self.skipped, self.skipped_paths = 0, set()
        last_path, image = None, None  # consecutive refs on one image load it once
        for ref in self.refs:
            if ref.path != last_path:
                last_path, image = ref.path, load_rgb(ref.path, self.resolution)
            if image is None:
                self.skipped += len(ref.sentences)
                self.skipped_paths.add(ref.path)
                continue
            for sentence in ref.sentences:
                yield RecExample(image, sentence, ref.box, ref.split, ref.ref_id)
