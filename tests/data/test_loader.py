"""The slot loader (workers yield what inline drawing yields) and the per-epoch shuffle."""

import numpy as np
import pytest
import torch
from PIL import Image

from dpt_t2i.data.coco import CaptionedImage
from dpt_t2i.data.loader import DrawSamples, LoaderSettings, SlotLoader, process_slots
from dpt_t2i.data.real import RealDPTData
from dpt_t2i.data.sources import EpochShuffle, ShapesSource

N_IMAGES = 7


@pytest.fixture
def real(tmp_path) -> RealDPTData:
    """7 captioned images of distinct colours; image 3's file is missing."""
    items = []
    for i in range(N_IMAGES):
        path = tmp_path / f"{i}.png"
        if i != 3:
            Image.fromarray(np.full((20, 24, 3), 30 * i, np.uint8)).save(path)
        items.append(CaptionedImage(i, path, 24, 20, [f"a photo of thing {i} on a red table",
                                                      f"thing {i} beside a blue cup"]))
    return RealDPTData(items, None, 16, n_negatives=2, seed=5)


def _same(a: dict, b: dict) -> bool:
    return (a["slot"] == b["slot"] and a["skipped"] == b["skipped"]
            and all(torch.equal(a["batch"][k], b["batch"][k])
                    for k in ("pixels", "boxes", "has_ref", "object_boxes", "object_mask"))
            and all(a["batch"][k] == b["batch"][k] for k in ("captions", "negatives", "refexps")))


def test_slots_are_the_loops_and_a_resume_continues_them():
    world, accum, steps = 3, 2, 5
    for rank in range(world):
        loop = [(k * accum + m) * world + rank for k in range(steps) for m in range(accum)]
        assert list(process_slots(0, steps, accum, world, rank)) == loop
        assert list(process_slots(2, steps, accum, world, rank)) == loop[2 * accum:]
    with pytest.raises(ValueError, match="rank must be in"):
        process_slots(0, 1, 1, 2, 2)


@pytest.mark.parametrize("kind", ["real", "shapes"])
def test_two_workers_yield_the_inline_batches(real, kind):
    source = real if kind == "real" else ShapesSource(seed=2)
    slots = process_slots(1, 4, 2, 2, 1)  # a resumed process 1 of 2, grad_accum 2
    inline = SlotLoader(DrawSamples(source, 3), slots)
    ahead = SlotLoader(DrawSamples(source, 3), slots, LoaderSettings(workers=2, prefetch=2))
    for slot in slots:
        assert _same(inline.next(slot), ahead.next(slot)), slot
    ahead.close()
    assert ahead.skipped == inline.skipped  # the workers' skips come back
    if kind == "real":  # 18 samples of 7 images, one missing: replaced by later samples
        assert inline.skipped >= 2
        assert real.skipped_paths == {real.items[3].path}


def test_the_loader_refuses_a_slot_out_of_order():
    loader = SlotLoader(DrawSamples(ShapesSource(), 2), process_slots(0, 2, 1, 1, 0))
    loader.next(0)
    with pytest.raises(RuntimeError, match="drew slot 1 where slot 5 is needed"):
        loader.next(5)
    with pytest.raises(RuntimeError, match="after the loader's last slot"):
        loader.next(2)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        LoaderSettings(workers=-1)


def test_each_epoch_is_a_new_permutation_of_every_image():
    size = 50
    order = EpochShuffle(size, seed=3)
    epochs = [[order(i) for i in range(e * size, (e + 1) * size)] for e in range(3)]
    for images in epochs:
        assert sorted(images) == list(range(size))  # every image once
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert epochs[0] != list(range(size))  # not file order
    again = EpochShuffle(size, seed=3)
    assert [again(i) for i in reversed(range(3 * size))] == sum(epochs, [])[::-1]  # any order
    assert [EpochShuffle(size, seed=4)(i) for i in range(size)] != epochs[0]
    with pytest.raises(IndexError):
        order(-1)


def test_real_data_reads_its_images_in_the_shuffled_order(real):
    images = [real.image_index(i) for i in range(2 * N_IMAGES)]
    assert sorted(images[:N_IMAGES]) == sorted(images[N_IMAGES:]) == list(range(N_IMAGES))
    assert images[:N_IMAGES] != images[N_IMAGES:]
    first = next(i for i, image in enumerate(images) if image != 3)  # 3 is missing
    assert real.sample(first).image[0, 0, 0] == 30 * images[first]  # that image's colour
