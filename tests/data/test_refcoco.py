"""RefCOCO: refs pickle + instances.json parsed into normalised boxes; unsafe pickles and
bad boxes refused."""

import json
import pickle
from pathlib import Path

import pytest

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


def test_reads_refs_with_boxes_normalised_to_the_image(tmp_path):
    items = read_refcoco(*write_refcoco(tmp_path), tmp_path / "train2014")
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
