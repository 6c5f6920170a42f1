"""COCO and RefCOCO image folders of either release: `dpt evaluate-disc` and `dpt probe`
read a train2017 folder for RefCOCO's train2014 names, and refuse a folder without the
images in one line naming the flag, instead of an empty result."""

import json

import pytest
from data.test_coco import IMAGES, write_coco_captions
from data.test_real import write_images
from data.test_refcoco import INSTANCES_2014, write_refcoco

from dpt_t2i.cli import main

IMAGES_2017 = [{**image, "file_name": f"{image['id']:012d}.jpg"} for image in IMAGES]


def dpt(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def coco(tmp_path):
    """RefCOCO files naming train2014 files, a train2017 folder of images 7, 9 and 11, and
    an empty val2017 folder."""
    write_images(tmp_path / "train2017", [f"{i:012d}.jpg" for i in (7, 9, 11)])
    (tmp_path / "val2017").mkdir()
    refs, instances = write_refcoco(tmp_path, instances=INSTANCES_2014)
    return {"root": tmp_path, "refs": refs, "instances": instances,
            "captions": write_coco_captions(tmp_path, images=IMAGES_2017)}


def test_rec_reads_a_coco_2017_folder_by_id(tiny_model, tiny_dpt, coco, capsys):
    assert dpt("evaluate-disc", "--dpt", tiny_dpt, "--model", tiny_model, "--n-itm", 0,
               "--n-rec", 4, "--refcoco-refs", coco["refs"], "--refcoco-instances",
               coco["instances"], "--refcoco-images", coco["root"] / "train2017",
               "--refcoco-splits", "val,testA", "--resolution", 16, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert {split: r["n"] for split, r in result["rec"].items()} == {"val": 1, "testA": 1}
    assert result["skipped_images"] == 0


@pytest.mark.parametrize("flag", ["--refcoco-images", "--coco-images"])
def test_rec_on_a_folder_without_refcoco_images_names_the_flag(tiny_model, tiny_dpt, coco,
                                                               capsys, flag):
    folder = coco["root"] / "val2017"
    extra = ["--coco-captions", coco["captions"]] if flag == "--coco-images" else []
    assert dpt("evaluate-disc", "--dpt", tiny_dpt, "--model", tiny_model, "--n-itm", 0,
               "--n-rec", 4, "--refcoco-refs", coco["refs"], "--refcoco-instances",
               coco["instances"], "--refcoco-splits", "val,testA", flag, folder, *extra) == 2
    err = capsys.readouterr().err
    assert err == (f"dpt evaluate-disc: error: {flag} {folder}: 0 of the 2 images the RefCOCO "
                   "refs of split testA, val name are in it (it is empty); expected COCO "
                   "train2014 images, named COCO_train2014_000000XXXXXX.jpg as the refs' "
                   "instances.json names them, or the same ids under COCO 2017 names "
                   "000000XXXXXX.jpg (train2017 holds every train2014 image; val2017 none of "
                   "RefCOCO's)\n")


def test_itm_on_a_folder_without_the_captioned_images_is_an_error(tiny_model, tiny_dpt, coco,
                                                                  capsys):
    assert dpt("evaluate-disc", "--dpt", tiny_dpt, "--model", tiny_model, "--n-itm", 4,
               "--n-rec", 0, "--coco-captions", coco["captions"], "--coco-images",
               coco["root"] / "val2017") == 2
    assert capsys.readouterr().err.startswith(
        f"dpt evaluate-disc: error: --coco-images {coco['root'] / 'val2017'}: 0 of the 3 "
        "images captions_train2014.json's captions name are in it (it is empty)")


def test_probe_trains_from_2017_captions_and_2014_named_refcoco(tiny_model, coco, tmp_path,
                                                                capsys):
    args = ["probe", "--model", tiny_model, "--block", "up0", "--d-model", 32,
            "--ground-queries", 4, "--steps", 1, "--batch", 2, "--resolution", 16,
            "--coco-captions", coco["captions"], "--refcoco-refs", coco["refs"],
            "--refcoco-instances", coco["instances"]]
    assert dpt(*args, "--coco-images", coco["root"] / "train2017",
               "--run-dir", tmp_path / "run") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["skipped_images"] == 0
    assert dpt(*args, "--coco-images", coco["root"] / "val2017",
               "--run-dir", tmp_path / "bad") == 2
    assert capsys.readouterr().err.startswith(
        f"dpt probe: error: --coco-images {coco['root'] / 'val2017'}: 0 of the 3 images")
    assert not (tmp_path / "bad").exists()


def test_probe_refuses_refs_on_none_of_the_captioned_images(tiny_model, coco, tmp_path,
                                                            capsys):
    images = [{**image, "id": image["id"] + 1000} for image in IMAGES_2017]  # other ids
    captions = write_coco_captions(tmp_path, images=images, annotations=[
        {"id": k, "image_id": image["id"], "caption": f"a photo number {k}"}
        for k, image in enumerate(images)])
    for image in images:
        (coco["root"] / "train2017" / image["file_name"]).write_bytes(b"")
    assert dpt("probe", "--model", tiny_model, "--run-dir", tmp_path / "run", "--steps", 1,
               "--coco-captions", captions, "--coco-images", coco["root"] / "train2017",
               "--refcoco-refs", coco["refs"], "--refcoco-instances", coco["instances"]) == 2
    assert capsys.readouterr().err == (
        f"dpt probe: error: --refcoco-refs: none of the 1 train refs is on an image of "
        f"--coco-captions {captions}; RefCOCO's train refs are on COCO train2014 images "
        "(captions_train2014.json, or captions_train2017.json, which holds them all)\n")
