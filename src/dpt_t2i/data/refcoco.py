"""RefCOCO, RefCOCO+ and RefCOCOg (Yu et al. 2016; Mao et al. 2016) as boxed expressions.

Each data set is a folder holding `refs(unc).p` (RefCOCOg: `refs(umd).p` or `refs(google).p`)
and `instances.json`. The refs file is a Python pickle of a list of dicts:
    {"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent", "raw", "tokens",
     "sent_id"}, ...], "category_id", "file_name", ...}
and `instances.json` is in the COCO instances format, whose annotation `bbox` is
[x, y, w, h] in pixels. The expression used is each sentence's "sent" (lower-cased and
tokenised by the data set's authors), the form REC papers train and evaluate on.

RefCOCO's images are COCO train2014's (`COCO_train2014_000000581857.jpg`, as its
`instances.json` names them); a COCO 2017 folder serves as well, read by image id
(`000000581857.jpg`: train2017 holds every train2014 image). A folder holding none of the
refs' images is an error naming it, what it holds and what it should
(`coco.require_images`), not an evaluation that skips every image.

The pickle is read by an unpickler that refuses every global: the real files hold only
lists, dicts, strings and numbers, and a pickle naming a global (a function or class) could
run code when loaded. Files pickled by Python 2 are read with the latin-1 fallback that
Python's own docs give for them.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

from .coco import entries, field, load_json, locate_images, read_image_table, require_images

BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (COCO boxes are float-rounded)


@dataclass
class RefItem:
    ref_id: int
    image_id: int
    path: Path  # in image_dir: the file_name instances.json gives, or its COCO 2017 name
    split: str  # "train", "val", "testA", "testB" or "test", as the refs file says
    sentences: list[str]  # the expressions for this object, stripped, non-empty
    box: tuple[float, float, float, float]  # the referred object, cxcywh in [0, 1] of the image
    width: int  # image size in pixels
    height: int


class ForbiddenGlobal(ValueError):
    """A pickle asked for a global (function or class); loading it could run code."""


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, strings and numbers; refuses every global by name."""

    def __init__(self, file, path: Path, **kwargs):
        super().__init__(file, **kwargs)
        self.path = path

    def find_class(self, module: str, name: str):
        raise ForbiddenGlobal(f"{self.path} asks to load the global {module}.{name}; a refs "
                              "file holds only lists, dicts, strings and numbers, so it was "
                              "refused (loading it could run code)")


def load_refs_pickle(path: str | Path) -> list[dict]:
    """Read a refs pickle without ever resolving a global.

    Args:
        path: `refs(unc).p`, `refs(umd).p`, ... (pickled by Python 2 or 3).

    Returns:
        The list of ref dicts.

    Raises:
        ForbiddenGlobal: the pickle names a global (nothing it names is imported or run).
        ValueError: the file is missing, not a pickle, or not a list of dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"refs file {path} does not exist or is not a file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read refs file {path}: {err.strerror or err}") from None
    try:
        try:
            refs = _DataOnlyUnpickler(io.BytesIO(raw), path).load()
        except UnicodeDecodeError:  # Python 2 byte strings that are not ASCII
            refs = _DataOnlyUnpickler(io.BytesIO(raw), path, encoding="latin1").load()
    except ForbiddenGlobal:
        raise
    except Exception as err:  # a broken pickle can raise almost anything
        raise ValueError(f"refs file {path} is not a readable pickle ({type(err).__name__}: "
                         f"{err}); expected the refs(unc).p / refs(umd).p of RefCOCO") from None
    if not isinstance(refs, list):
        raise ValueError(f"refs file {path} holds a {type(refs).__name__}; expected a list of "
                         "ref dicts")
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise ValueError(f"refs file {path}: entry {i} is a {type(ref).__name__}; "
                             "expected a dict")
    return refs


def _sentences(ref: dict, path: Path, where: str) -> list[str]:
    out = []
    for j, sentence in enumerate(field(ref, "sentences", list, path, where)):
        if not isinstance(sentence, dict):
            raise ValueError(f"{path}: {where} sentences[{j}] is a "
                             f"{type(sentence).__name__}; expected a dict with 'sent'")
        text = field(sentence, "sent", str, path, f"{where} sentences[{j}]").strip()
        if text:
            out.append(text)
    return out


def normalised_box(bbox: list, width: int, height: int,
                   where: str) -> tuple[float, float, float, float]:
    """A COCO [x, y, w, h] pixel box as cxcywh in [0, 1] of a `width` x `height` image.

    A box sticking out of the image by at most BOX_TOLERANCE pixels is clipped to it.

    Raises:
        ValueError: naming `where`, the box and the image size, when the box is not four
            numbers, is empty (w <= 0 or h <= 0) or lies further outside the image.
    """
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        raise ValueError(f"{where} has bbox {bbox!r}; expected [x, y, w, h] in pixels")
    x, y, w, h = (float(v) for v in bbox)
    t = BOX_TOLERANCE
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if (w <= 0 or h <= 0 or x < -t or y < -t or x + w > width + t or y + h > height + t
            or x1 <= x0 or y1 <= y0):
        raise ValueError(f"{where} has bbox [x, y, w, h] = {list(bbox)} outside its "
                         f"{width}x{height} image; expected a non-empty box inside the image")
    return ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)


def _annotation_boxes(data: dict, path: Path) -> dict[int, tuple[int, list]]:
    """Annotation id -> (image id, bbox) from an instances file."""
    out = {}
    for i, ann in enumerate(entries(data, "annotations", path)):
        where = f"annotations[{i}]" + (f" (id {ann['id']!r})" if "id" in ann else "")
        ann_id = field(ann, "id", int, path, where)
        out[ann_id] = (field(ann, "image_id", int, path, where),
                       field(ann, "bbox", list, path, where))
    return out


def read_refcoco(refs_path: str | Path, instances_path: str | Path, image_dir: str | Path,
                 splits: set[str] | None = None) -> list[RefItem]:
    """Read a RefCOCO-family data set into one `RefItem` per referred object.

    Args:
        refs_path: `refs(unc).p` or `refs(umd).p`.
        instances_path: the data set's `instances.json`.
        image_dir: the COCO image folder the instances' file names are in (`train2014/`),
            or COCO 2017's `train2017/`, whose names are read by image id.
        splits: keep only refs of these splits (e.g. {"val"}); None keeps all.

    Returns:
        Refs in file order; refs without a (non-blank) sentence are dropped. Boxes are
        cxcywh normalised by the image's width and height.

    Raises:
        ValueError: a file is unreadable or malformed (see `load_refs_pickle`, `load_json`),
            a ref's ann_id or image_id is not in the instances file, its box lies outside its
            image (naming the ref id, box and image size), or a requested split occurs in no
            ref (listing the splits present).
        MissingImages: `image_dir` holds none of the kept refs' images (0 of N found), naming
            the folder, what it holds and what RefCOCO's images are.
    """
    if isinstance(splits, str):
        raise ValueError(f"splits must be a set of split names such as {{'val'}}, got the "
                         f"string {splits!r}")
    refs_path, instances_path = Path(refs_path), Path(instances_path)
    raw_refs = load_refs_pickle(refs_path)
    data = load_json(instances_path, "instances file")
    images = read_image_table(data, instances_path, Path(image_dir))
    boxes = _annotation_boxes(data, instances_path)
    present = {field(ref, "split", str, refs_path, f"ref entry {i}")
               for i, ref in enumerate(raw_refs)}
    if splits is not None and not set(splits) <= present:
        raise ValueError(f"{refs_path} has no ref in split(s) {sorted(set(splits) - present)}; "
                         f"the splits present are {sorted(present)}")
    items = []
    for i, ref in enumerate(raw_refs):
        if splits is not None and ref["split"] not in splits:
            continue
        ref_id = field(ref, "ref_id", int, refs_path, f"ref entry {i}")
        where = f"{refs_path}: ref {ref_id}"
        ann_id = field(ref, "ann_id", int, refs_path, f"ref {ref_id}")
        image_id = field(ref, "image_id", int, refs_path, f"ref {ref_id}")
        if ann_id not in boxes:
            raise ValueError(f"{where} has ann_id {ann_id}, which is not in {instances_path}")
        ann_image, bbox = boxes[ann_id]
        if ann_image != image_id:
            raise ValueError(f"{where} has image_id {image_id}, but its annotation {ann_id} is "
                             f"on image {ann_image} in {instances_path}")
        if image_id not in images:
            raise ValueError(f"{where} has image_id {image_id}, which is not in the 'images' "
                             f"of {instances_path}")
        sentences = _sentences(ref, refs_path, f"ref {ref_id}")
        if not sentences:
            continue
        image = images[image_id]
        box = normalised_box(bbox, image.width, image.height, f"{where} (ann {ann_id})")
        items.append(RefItem(ref_id, image_id, image.path, ref["split"], sentences, box,
                             image.width, image.height))
    _locate(items, images, Path(image_dir), splits)
    return items


def _locate(items: list[RefItem], images: dict, image_dir: Path, splits: set[str] | None
            ) -> None:
    """Point the refs at their images' files in `image_dir` (`coco.locate_images`);
    MissingImages when none is there."""
    used = [images[i] for i in dict.fromkeys(item.image_id for item in items)]
    found = locate_images(used, image_dir)
    which = f" of split {', '.join(sorted(splits))}" if splits else ""
    require_images(found, len(used), image_dir, f"the RefCOCO refs{which}",
                   "COCO train2014 images, named COCO_train2014_000000XXXXXX.jpg as the refs' "
                   "instances.json names them, or the same ids under COCO 2017 names "
                   "000000XXXXXX.jpg (train2017 holds every train2014 image; val2017 none of "
                   "RefCOCO's)")
    for item in items:
        item.path = images[item.image_id].path
