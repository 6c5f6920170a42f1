"""RefCOCO: refs pickle + instances.json parsed into normalised boxes; unsafe pickles and
bad boxes refused; images found under COCO 2014 or 2017 names, a folder without them refused."""

import json
import pickle
from pathlib import Path

import pytest

from dpt_t2i.data.coco import MissingImages
from dpt_t2i.data.refcoco import ForbiddenGlobal, load_refs_pickle, read_refcoco

INSTANCES = {
    "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 30},
               {"id": 9, "file_name": "b.jpg", "width": 40, "height": 30}],
    "annotations": [{"id": 100, "image_id": 7, "bbox": [10, 5, 20, 10], "category_id": 1,
                     "area": 200.0, "iscrowd": 0},
                    {"id": 101, "image_id": 9, "bbox": [0, 0, 40, 30], "category_id": 2},
                    {"id": 102, "image_id": 7, "bbox": [-0.5, 0, 40.8, 30], "category_id": 3}],
    "categories": [{"id": 1, "name": "bus"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "x"}]}


def sentence(text: str, sent_id: int) -> dict:
    return {"sent": text, "raw": text.capitalize() + ".", "tokens": text.split(),
            "sent_id": sent_id}


def ref(ref_id, ann_id, image_id, split, sentences) -> dict:
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
            "sentences": [sentence(s, 10 * ref_id + i) for i, s in enumerate(sentences)],
            "category_id": 1, "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sent_ids": [], "ref_ids": []}


REFS = [ref(1, 100, 7, "train", ["red bus left", "the bus"]),
        ref(2, 101, 9, "testA", ["dog"]),
        ref(3, 102, 7, "train", []),  # no sentence: dropped
        ref(4, 102, 7, "val", ["whole picture"])]


def write_refcoco(folder: Path, refs=REFS, instances=INSTANCES, protocol=2) -> tuple[Path, Path]:
    refs_path, instances_path = folder / "refs(unc).p", folder / "instances.json"
    refs_path.write_bytes(pickle.dumps(refs, protocol=protocol))
    instances_path.write_text(json.dumps(instances))
    return refs_path, instances_path


def touch(folder: Path, *names: str) -> Path:
    """Files of these names in `folder` (the reader only looks for them)."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_reads_refs_with_boxes_normalised_to_the_image(tmp_path):
    items = read_refcoco(*write_refcoco(tmp_path), touch(tmp_path / "train2014", "a.png",
                                                         "b.jpg"))
    assert [(r.ref_id, r.image_id, r.split, r.sentences) for r in items] == [
        (1, 7, "train", ["red bus left", "the bus"]), (2, 9, "testA", ["dog"]),
        (4, 7, "val", ["whole picture"])]
    # bbox [10, 5, 20, 10] in a 40x30 image: centre (20, 10), size (20, 10)
    assert items[0].box == pytest.approx((0.5, 1 / 3, 0.5, 1 / 3))
    assert items[0].path == tmp_path / "train2014" / "a.png"  # instances' name, not the ref's
    assert (items[0].width, items[0].height) == (40, 30)
    assert items[1].box == pytest.approx((0.5, 0.5, 1.0, 1.0))
    # sticks out by < 1 pixel on both sides: clipped to the whole image
    assert items[2].box == pytest.approx((0.5, 0.5, 1.0, 1.0))


def test_split_filter_and_unknown_split(tmp_path):
    paths = write_refcoco(tmp_path)
    touch(tmp_path, "a.png", "b.jpg")
    assert [r.ref_id for r in read_refcoco(*paths, tmp_path, splits={"val", "testA"})] == [2, 4]
    with pytest.raises(ValueError, match=r"no ref in split\(s\) \['testB'\]; the splits "
                                         r"present are \['testA', 'train', 'val'\]"):
        read_refcoco(*paths, tmp_path, splits={"val", "testB"})


def test_python2_pickle_with_non_ascii_bytes_is_read(tmp_path):
    # what Python 2 wrote for refs = [{'split': 'train', 'sent': 'caf\xe9'}] (str = bytes)
    py2 = (b"\x80\x02]q\x00}q\x01(U\x05splitq\x02U\x05trainq\x03U\x04sentq\x04U\x04caf\xe9q\x05"
           b"ua.")
    path = tmp_path / "refs(umd).p"
    path.write_bytes(py2)
    assert load_refs_pickle(path) == [{"split": "train", "sent": "caf\xe9"}]


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_pickle_naming_a_global_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1}, Exploit()], protocol=2))
    with pytest.raises(ForbiddenGlobal, match=r"refs\(unc\)\.p asks to load the global "
                                              r"(posix|os|nt)\.system"):
        load_refs_pickle(path)
    assert not (tmp_path / "pwned").exists()
    assert issubclass(ForbiddenGlobal, ValueError)


def test_broken_pickle_and_wrong_shape_are_usage_errors(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="is not a readable pickle"):
        load_refs_pickle(path)
    path.write_bytes(pickle.dumps({"ref_id": 1}))
    with pytest.raises(ValueError, match="holds a dict; expected a list"):
        load_refs_pickle(path)


def test_box_outside_its_image_names_ref_box_and_size(tmp_path):
    instances = json.loads(json.dumps(INSTANCES))
    instances["annotations"][0]["bbox"] = [30, 5, 12, 10]  # x + w = 42 > 40 + 1
    with pytest.raises(ValueError, match=r"ref 1 \(ann 100\) has bbox \[x, y, w, h\] = "
                                         r"\[30, 5, 12, 10\] outside its 40x30 image"):
        read_refcoco(*write_refcoco(tmp_path, instances=instances), tmp_path)
    instances["annotations"][0]["bbox"] = [10, 5, 0, 10]  # empty
    with pytest.raises(ValueError, match=r"ref 1 \(ann 100\) has bbox"):
        read_refcoco(*write_refcoco(tmp_path, instances=instances), tmp_path)


def test_ref_whose_annotation_is_missing_names_ref_and_ann(tmp_path):
    refs = REFS + [ref(5, 999, 7, "train", ["ghost"])]
    with pytest.raises(ValueError, match="ref 5 has ann_id 999, which is not in"):
        read_refcoco(*write_refcoco(tmp_path, refs=refs), tmp_path)
    refs = [dict(REFS[0], sentences=[{"raw": "x"}])]
    with pytest.raises(ValueError, match=r"ref 1 sentences\[0\] has no key 'sent'"):
        read_refcoco(*write_refcoco(tmp_path, refs=refs), tmp_path)


# RefCOCO's instances.json names train2014 files; COCO 2017 holds the same ids
INSTANCES_2014 = {**INSTANCES, "images": [
    {**image, "file_name": f"COCO_train2014_{image['id']:012d}.jpg"}
    for image in INSTANCES["images"]]}


@pytest.mark.parametrize("names, expected", [
    (["COCO_train2014_000000000007.jpg", "COCO_train2014_000000000009.jpg"],
     ["COCO_train2014_000000000007.jpg", "COCO_train2014_000000000009.jpg"]),
    (["000000000007.jpg", "000000000009.jpg", "000000000139.jpg"],  # a train2017 folder
     ["000000000007.jpg", "000000000009.jpg"]),
    (["COCO_train2014_000000000007.jpg", "000000000009.jpg"],
     ["COCO_train2014_000000000007.jpg", "000000000009.jpg"])])
def test_refs_find_their_images_under_2014_or_2017_names(tmp_path, names, expected):
    folder = touch(tmp_path / "images", *names)
    items = read_refcoco(*write_refcoco(tmp_path, instances=INSTANCES_2014), folder)
    by_image = {item.image_id: item.path for item in items}
    assert by_image == {7: folder / expected[0], 9: folder / expected[1]}


def test_2017_names_in_the_instances_read_a_train2014_folder(tmp_path):
    instances = {**INSTANCES, "images": [{**image, "file_name": f"{image['id']:012d}.jpg"}
                                         for image in INSTANCES["images"]]}
    folder = touch(tmp_path / "train2014", "COCO_train2014_000000000007.jpg",
                   "COCO_train2014_000000000009.jpg")
    items = read_refcoco(*write_refcoco(tmp_path, instances=instances), folder)
    assert {item.path.name for item in items} == {"COCO_train2014_000000000007.jpg",
                                                  "COCO_train2014_000000000009.jpg"}


def test_an_image_found_under_no_name_keeps_its_own_and_is_skipped_later(tmp_path):
    folder = touch(tmp_path / "train2017", "000000000009.jpg")  # image 7 is missing
    items = read_refcoco(*write_refcoco(tmp_path, instances=INSTANCES_2014), folder)
    assert {item.image_id: item.path.name for item in items} == {
        7: "COCO_train2014_000000000007.jpg", 9: "000000000009.jpg"}


@pytest.mark.parametrize("names, holds", [
    (["000000000139.jpg", "000000000285.jpg"],
     "it holds 2 files such as 000000000139.jpg, COCO 2017 names of other ids"),
    (["COCO_val2014_000000000042.jpg"], "it holds 1 files such as "
     "COCO_val2014_000000000042.jpg, COCO val2014 images"),
    ([".DS_Store", "cat.png"], "it holds 2 files such as cat.png"),
    ([], "it is empty"),
    (None, "no such folder")])
def test_a_folder_without_the_refs_images_is_an_error_naming_it(tmp_path, names, holds):
    folder = tmp_path / "val2017"
    if names is not None:
        touch(folder, *names)
    with pytest.raises(MissingImages) as err:
        read_refcoco(*write_refcoco(tmp_path, instances=INSTANCES_2014), folder)
    assert str(err.value) == (
        f"{folder}: 0 of the 2 images the RefCOCO refs name are in it ({holds}); expected COCO "
        "train2014 images, named COCO_train2014_000000XXXXXX.jpg as the refs' instances.json "
        "names them, or the same ids under COCO 2017 names 000000XXXXXX.jpg (train2017 holds "
        "every train2014 image; val2017 none of RefCOCO's)")
    assert isinstance(err.value, ValueError)


def test_only_the_kept_splits_images_are_looked_for(tmp_path):
    paths = write_refcoco(tmp_path, instances=INSTANCES_2014)
    folder = touch(tmp_path / "train2017", "000000000009.jpg")  # image 9: ref 2, split testA
    assert [r.ref_id for r in read_refcoco(*paths, folder, splits={"testA"})] == [2]
    with pytest.raises(MissingImages, match=r"0 of the 1 images the RefCOCO refs of split "
                                            r"train, val name"):
        read_refcoco(*paths, folder, splits={"train", "val"})
