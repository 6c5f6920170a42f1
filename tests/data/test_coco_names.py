"""COCO 2014 and 2017 file names of one image id: a captions file reads a folder of the other
release, and `require` refuses a folder holding none of its images."""

import pytest

from dpt_t2i.data.coco import MissingImages, coco_names, read_coco_captions

from .test_coco import IMAGES, write_coco_captions
from .test_refcoco import touch

# captions_train2017.json names 2017 files
IMAGES_2017 = [{**image, "file_name": f"{image['id']:012d}.jpg"} for image in IMAGES]


def test_the_names_of_an_id_in_each_release():
    assert coco_names(581857) == ("000000581857.jpg", "COCO_train2014_000000581857.jpg",
                                  "COCO_val2014_000000581857.jpg")


def test_2017_captions_read_a_train2014_folder_by_id(tmp_path):
    folder = touch(tmp_path / "train2014", "COCO_train2014_000000000007.jpg",
                   "COCO_train2014_000000000011.jpg")  # image 9 is missing
    items = read_coco_captions(write_coco_captions(tmp_path, images=IMAGES_2017), folder,
                               require=True)
    assert [item.path.name for item in items] == [
        "COCO_train2014_000000000007.jpg", "000000000009.jpg", "COCO_train2014_000000000011.jpg"]


def test_a_file_found_under_its_own_name_keeps_it(tmp_path):
    folder = touch(tmp_path / "images", "a.png", "000000000009.jpg", "b.jpg")
    items = read_coco_captions(write_coco_captions(tmp_path), folder, require=True)
    assert [item.path.name for item in items] == ["a.png", "b.jpg", "c.png"]


def test_require_refuses_a_folder_without_the_captioned_images(tmp_path):
    folder = touch(tmp_path / "val2017", "000000000139.jpg")
    captions = write_coco_captions(tmp_path, images=IMAGES_2017)
    assert len(read_coco_captions(captions, folder)) == 3  # lazily skipped, as before
    with pytest.raises(MissingImages, match=r"val2017: 0 of the 3 images "
                       r"captions_train2014\.json's captions name are in it \(it holds 1 files "
                       r"such as 000000000139\.jpg, COCO 2017 names of other ids\); expected the "
                       r"image folder of captions_train2014\.json"):
        read_coco_captions(captions, folder, require=True)
