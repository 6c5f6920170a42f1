"""RealDPTData and RecEvalSet on tiny COCO/RefCOCO files: samples, skips, determinism."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpt_t2i.data.coco import CaptionedImage, read_coco_captions
from dpt_t2i.data.real import RealDPTData, RecEvalSet
from dpt_t2i.data.refcoco import read_refcoco
from dpt_t2i.data.samples import collate

from .test_coco import write_coco_captions
from .test_refcoco import write_refcoco

RESOLUTION = 16


def write_images(folder: Path, names=("a.png", "b.jpg", "c.png")) -> None:
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        pixels = np.zeros((30, 40, 3), np.uint8)
        pixels[..., i % 3] = 200  # a, b, c: red, green, blue
        Image.fromarray(pixels).save(folder / name)


@pytest.fixture
def tiny(tmp_path):
    """COCO captions of images 7, 9, 11 (all written) and RefCOCO refs 1, 2, 4."""
    images = tmp_path / "train2014"
    write_images(images)
    captioned = read_coco_captions(write_coco_captions(tmp_path), images)
    refs = read_refcoco(*write_refcoco(tmp_path), images)
    return captioned, refs, images


def test_samples_carry_caption_k_negatives_and_the_images_refs(tiny):
    captioned, refs, _ = tiny
    data = RealDPTData(captioned, refs, RESOLUTION, n_negatives=4, seed=1)
    assert len(data) == 3
    for index in range(6):
        sample = data.sample(index)
        item = captioned[data.image_index(index)]
        assert sample.image.shape == (RESOLUTION, RESOLUTION, 3)
        assert sample.image.dtype == np.uint8
        assert sample.caption in item.captions and sample.family == "coco"
        assert len(sample.negatives) == 4
        assert all(n.lower() != sample.caption.lower() for n in sample.negatives)
        on_image = [r for r in refs if r.image_id == item.image_id]
        if on_image:
            ref = next(r for r in on_image if sample.refexp in r.sentences)
            assert sample.box == ref.box
        else:
            assert sample.refexp is None and sample.box is None
    # image 9 (b.jpg, green) has ref 2 only; image 11 (c.png, blue) has none
    at = {data.image_index(i): i for i in range(3)}  # epoch 0: each image once
    assert sorted(at) == [0, 1, 2]
    assert data.sample(at[1]).refexp == "dog"
    assert data.sample(at[1]).box == pytest.approx((.5, .5, 1, 1))
    assert data.sample(at[2]).image[..., 2].min() > 150  # blue image, squashed to 16x16
    batch = collate([data.sample(at[i]) for i in range(3)])
    assert batch["has_ref"].tolist() == [True, True, False]


def test_sampling_is_deterministic_by_seed_and_index(tiny):
    captioned, refs, _ = tiny
    a = RealDPTData(captioned, refs, RESOLUTION, seed=3)
    b = RealDPTData(captioned, refs, RESOLUTION, seed=3)
    texts = lambda s: (s.caption, tuple(s.negatives), s.refexp, s.box)  # noqa: E731
    for index in range(6):
        sa, sb = a.sample(index), b.sample(index)
        assert texts(sa) == texts(sb) and np.array_equal(sa.image, sb.image)
    seeds = {texts(RealDPTData(captioned, refs, RESOLUTION, seed=s).sample(0))[:2]
             for s in range(6)}
    assert len(seeds) > 1


def test_missing_and_corrupt_images_are_skipped_and_counted(tiny):
    captioned, refs, images = tiny
    (images / "b.jpg").unlink()
    (images / "c.png").write_bytes(b"\x89PNG garbage, not an image")
    data = RealDPTData(captioned, refs, RESOLUTION)
    at = [{data.image_index(i): i for i in range(3 * e, 3 * e + 3)} for e in (0, 1)]
    assert data.sample(at[0][1]) is None
    assert (data.skipped, data.skipped_paths) == (1, {images / "b.jpg"})
    assert data.sample(at[0][2]) is None and data.sample(at[1][2]) is None
    assert data.skipped == 3 and data.skipped_paths == {images / "b.jpg", images / "c.png"}
    assert data.sample(at[0][0]) is not None and data.skipped == 3


def test_negatives_fall_back_to_other_images_captions(tmp_path):
    write_images(tmp_path)
    captioned = [CaptionedImage(1, tmp_path / "a.png", 40, 30, ["Dog."]),
                 CaptionedImage(2, tmp_path / "b.jpg", 40, 30, ["A cat.", "Cat asleep."])]
    data = RealDPTData(captioned, None, RESOLUTION, n_negatives=3)
    sample = data.sample([i for i in range(2) if data.image_index(i) == 0][0])
    assert sample.caption == "Dog." and len(sample.negatives) == 3
    assert set(sample.negatives) <= {"A cat.", "Cat asleep."}
    assert sample.refexp is None and sample.box is None


def test_bad_arguments_are_usage_errors(tiny):
    captioned, refs, _ = tiny
    with pytest.raises(ValueError, match="expected at least 2"):
        RealDPTData(captioned[:1], None, RESOLUTION)
    with pytest.raises(ValueError, match="resolution must be a positive"):
        RealDPTData(captioned, None, 0)
    with pytest.raises(ValueError, match="ref 1 is on image 7 of size 40x30, but the captions "
                                         "file gives it 80x30"):
        RealDPTData([CaptionedImage(7, Path("a.png"), 80, 30, ["x y"])] + captioned[1:],
                    refs, RESOLUTION)


def test_rec_eval_set_yields_one_example_per_sentence_and_skips_missing(tiny):
    _, refs, images = tiny
    rec = RecEvalSet(refs, RESOLUTION)
    examples = list(rec)
    assert len(rec) == len(examples) == 4 and rec.skipped == 0
    assert [(e.ref_id, e.sentence, e.split) for e in examples] == [
        (1, "red bus left", "train"), (1, "the bus", "train"), (2, "dog", "testA"),
        (4, "whole picture", "val")]
    image, sentence, box, split, ref_id = examples[0]
    assert image.shape == (RESOLUTION, RESOLUTION, 3) and box == pytest.approx(refs[0].box)
    (images / "a.png").unlink()  # refs 1 and 4 are on it
    assert [e.ref_id for e in rec] == [2]
    assert rec.skipped == 3 and rec.skipped_paths == {images / "a.png"}
