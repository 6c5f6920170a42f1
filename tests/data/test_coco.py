"""COCO captions: tiny files in the real format, parsed, and bad files refused clearly."""

import json
from pathlib import Path

import pytest

from dpt_t2i.data.coco import CaptionedImage, read_coco_captions

IMAGES = [{"id": 7, "file_name": "a.png", "width": 40, "height": 30, "license": 1},
          {"id": 9, "file_name": "b.jpg", "width": 40, "height": 30},
          {"id": 11, "file_name": "c.png", "width": 40, "height": 30},
          {"id": 12, "file_name": "no_caption.png", "width": 40, "height": 30}]
ANNOTATIONS = [{"id": 1, "image_id": 7, "caption": "A red bus to the left of a white van.\n"},
               {"id": 2, "image_id": 9, "caption": "  Two dogs on top of a blue bed "},
               {"id": 3, "image_id": 7, "caption": "A bus parked on a street"},
               {"id": 4, "image_id": 11, "caption": "A man riding a horse."},
               {"id": 5, "image_id": 11, "caption": "   "}]


def write_coco_captions(folder: Path, images=IMAGES, annotations=ANNOTATIONS) -> Path:
    path = folder / "captions_train2014.json"
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


def test_reads_images_with_their_stripped_captions_in_file_order(tmp_path):
    items = read_coco_captions(write_coco_captions(tmp_path), tmp_path / "train2014")
    assert items == [
        CaptionedImage(7, tmp_path / "train2014" / "a.png", 40, 30,
                       ["A red bus to the left of a white van.", "A bus parked on a street"]),
        CaptionedImage(9, tmp_path / "train2014" / "b.jpg", 40, 30,
                       ["Two dogs on top of a blue bed"]),
        CaptionedImage(11, tmp_path / "train2014" / "c.png", 40, 30, ["A man riding a horse."])]


def test_images_are_not_opened(tmp_path):
    # no image exists: reading must not look for them (that happens lazily when sampling)
    assert len(read_coco_captions(write_coco_captions(tmp_path), tmp_path / "missing")) == 3


def test_missing_file_and_invalid_json_are_usage_errors(tmp_path):
    with pytest.raises(ValueError, match="nope.json does not exist"):
        read_coco_captions(tmp_path / "nope.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_coco_captions(bad, tmp_path)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON list; expected an object"):
        read_coco_captions(bad, tmp_path)


def test_missing_top_level_key_names_file_and_key(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": IMAGES}))
    with pytest.raises(ValueError, match=r"c\.json has no top-level key 'annotations'"):
        read_coco_captions(path, tmp_path)


def test_missing_entry_key_names_entry_index_and_id(tmp_path):
    images = IMAGES[:1] + [{"id": 9, "file_name": "b.jpg", "height": 30}]
    with pytest.raises(ValueError, match=r"captions_train2014\.json: images\[1\] \(id 9\) has "
                                         r"no key 'width'"):
        read_coco_captions(write_coco_captions(tmp_path, images=images), tmp_path)
    annotations = ANNOTATIONS + [{"id": 42, "image_id": 7}]
    with pytest.raises(ValueError, match=r"annotations\[5\] \(id 42\) has no key 'caption'"):
        read_coco_captions(write_coco_captions(tmp_path, annotations=annotations), tmp_path)


def test_wrong_types_and_unknown_image_ids_are_refused(tmp_path):
    annotations = [{"id": 1, "image_id": "7", "caption": "x y"}]
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 1\) has image_id='7'; "
                                         "expected int"):
        read_coco_captions(write_coco_captions(tmp_path, annotations=annotations), tmp_path)
    annotations = [{"id": 1, "image_id": 8, "caption": "x y"}]
    with pytest.raises(ValueError, match="image_id 8, which is not in 'images'"):
        read_coco_captions(write_coco_captions(tmp_path, annotations=annotations), tmp_path)
    images = IMAGES + [dict(IMAGES[0])]
    with pytest.raises(ValueError, match="repeats image id 7"):
        read_coco_captions(write_coco_captions(tmp_path, images=images), tmp_path)
