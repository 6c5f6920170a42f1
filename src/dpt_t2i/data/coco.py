"""COCO captions (`captions_train2014.json`) and an image folder, read with plain `json`.

The file holds {"images": [{"id", "file_name", "width", "height", ...}], "annotations":
[{"id", "image_id", "caption"}, ...]}; each image has about five captions. Images are not
opened here: a missing or broken image file is found, counted and skipped when a sample
is drawn (`data/real.py`), so one bad file does not stop a run of 80k images.

COCO 2017 re-split the 2014 images under the same ids and other file names: 2014's
`COCO_train2014_000000581857.jpg` is 2017's `000000581857.jpg` (train2017 holds every
train2014 image; val2017 is 5k images of val2014). `locate_images` finds an image under the
name its file gives or, failing that, under the other release's name for its id, so a 2014
annotation file reads a 2017 folder and the other way round; `require_images` turns a folder
that holds none of them into an error instead of a run that skips every image.

`load_json` and `read_image_table` are shared with the RefCOCO reader, whose
`instances.json` has the same "images" list.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


@dataclass
class CocoImage:
    image_id: int
    path: Path  # image_dir / file_name; not checked to exist
    width: int  # pixels, as the annotation file says
    height: int


@dataclass
class CaptionedImage:
    image_id: int
    path: Path  # image_dir / file_name; not checked to exist
    width: int  # pixels
    height: int
    captions: list[str]  # stripped, non-empty, in file order


class MissingImages(ValueError):
    """None of the images an annotation file names is in the image folder given for it."""


def coco_names(image_id: int) -> tuple[str, str, str]:
    """The file names COCO's releases give image `image_id`: 2017's, train2014's, val2014's."""
    return (f"{image_id:012d}.jpg", f"COCO_train2014_{image_id:012d}.jpg",
            f"COCO_val2014_{image_id:012d}.jpg")


def _listing(folder: Path) -> set[str] | None:
    """The names in `folder` (one directory read, not a stat a file), or None when it is not
    a readable folder."""
    try:
        with os.scandir(folder) as entries_:
            return {entry.name for entry in entries_}
    except OSError:
        return None


def locate_images(images: Iterable[CocoImage], image_dir: Path) -> int:
    """Point each image at its file in `image_dir`: the name its annotation file gives or,
    failing that, one of `coco_names(image_id)`; an image found under neither keeps its given
    path (to be counted and skipped when read). Returns how many were found."""
    image_dir = Path(image_dir)
    names = _listing(image_dir) or set()
    found = 0
    for image in images:
        if image.path.parent == image_dir:
            present = image.path.name in names
        else:  # a file name with a sub-folder
            present = image.path.is_file()
        if not present:
            other = next((n for n in coco_names(image.image_id) if n in names), None)
            if other is not None:
                image.path, present = image_dir / other, True
        found += present
    return found


def require_images(found: int, total: int, image_dir: Path, what: str, expected: str) -> None:
    """MissingImages when `total` images were looked for in `image_dir` and none was found.

    Args:
        found / total: what `locate_images` found, of how many.
        what: whose images they are, for the message ("the RefCOCO refs of split val").
        expected: what the folder should hold, for the message.
    """
    if total and not found:
        raise MissingImages(f"{image_dir}: 0 of the {total} images {what} name are in it "
                            f"({_holds(Path(image_dir))}); expected {expected}")


def _holds(folder: Path) -> str:
    """What `folder` holds, in a few words, with the COCO release its names belong to."""
    names = _listing(folder)
    if names is None:
        return "no such folder" if not folder.exists() else "not a readable folder"
    if not names:
        return "it is empty"
    example = min((n for n in names if not n.startswith(".")), default=min(names))
    kind = next((label for pattern, label in _RELEASES if re.fullmatch(pattern, example)), "")
    return f"it holds {len(names)} files such as {example}{kind}"


_RELEASES = ((r"\d{12}\.jpg", ", COCO 2017 names of other ids"),
             (r"COCO_val2014_\d{12}\.jpg", ", COCO val2014 images"),
             (r"COCO_train2014_\d{12}\.jpg", ", COCO train2014 images of other ids"))


def load_json(path: Path, what: str) -> dict:
    """Read a JSON file whose top level is an object.

    Args:
        path: the file.
        what: what the file should be, for error messages (e.g. "COCO captions file").

    Raises:
        ValueError: the file is missing, unreadable, not JSON or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err}); expected a COCO-format "
                         "annotation file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} holds a JSON {type(data).__name__}; expected an "
                         "object with 'images' and 'annotations'")
    return data


def entries(data: dict, key: str, path: Path) -> list[dict]:
    """The list `data[key]`, every element an object.

    Raises:
        ValueError: naming `path` and `key` when the key is missing, not a list, or holds a
            non-object.
    """
    if key not in data:
        raise ValueError(f"{path} has no top-level key '{key}'; expected a COCO-format file "
                         f"with keys 'images' and 'annotations' (it has {sorted(data)})")
    items = data[key]
    if not isinstance(items, list):
        raise ValueError(f"{path}: '{key}' is a {type(items).__name__}; expected a list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: {key}[{i}] is a {type(item).__name__}; expected an object")
    return items


def field(entry: dict, key: str, kind: type | tuple[type, ...], path: Path, where: str):
    """`entry[key]`, checked to be of type `kind` (bool is never an int here).

    Args:
        where: the entry's place for messages, e.g. "annotations[3] (id 17)".
    """
    if key not in entry:
        raise ValueError(f"{path}: {where} has no key '{key}'")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{path}: {where} has {key}={value!r}; expected {names}")
    return value


def _where(key: str, index: int, entry: dict) -> str:
    return f"{key}[{index}]" + (f" (id {entry['id']!r})" if "id" in entry else "")


def read_image_table(data: dict, path: Path, image_dir: Path) -> dict[int, CocoImage]:
    """The "images" list of a COCO-format file, by image id, in file order.

    Args:
        data: the parsed file.
        path: the file, for messages.
        image_dir: the folder the `file_name`s are relative to.

    Raises:
        ValueError: an entry lacks id/file_name/width/height, has a non-positive size, or
            repeats an id.
    """
    table: dict[int, CocoImage] = {}
    for i, entry in enumerate(entries(data, "images", path)):
        where = _where("images", i, entry)
        image_id = field(entry, "id", int, path, where)
        file_name = field(entry, "file_name", str, path, where)
        width = field(entry, "width", int, path, where)
        height = field(entry, "height", int, path, where)
        if width <= 0 or height <= 0:
            raise ValueError(f"{path}: {where} has size {width}x{height}; expected positive "
                             "width and height in pixels")
        if image_id in table:
            raise ValueError(f"{path}: {where} repeats image id {image_id}")
        table[image_id] = CocoImage(image_id, Path(image_dir) / file_name, width, height)
    return table


def read_coco_captions(captions_json: str | Path, image_dir: str | Path,
                       require: bool = False) -> list[CaptionedImage]:
    """Read a COCO captions file into one `CaptionedImage` per image that has a caption.

    Args:
        captions_json: e.g. `annotations/captions_train2014.json`.
        image_dir: the folder of the images it names, e.g. `train2014/`; an image missing
            under its own name is looked for under its other COCO release's name
            (`locate_images`).
        require: raise MissingImages when `image_dir` holds none of the captioned images.

    Returns:
        Images in the file's order; images without a (non-blank) caption are dropped.
        Captions are stripped of surrounding white space.

    Raises:
        ValueError: the file is missing or not JSON, a top-level key or an entry's key is
            missing or of the wrong type (naming the file, key and entry), or a caption names
            an image id the file does not list.
        MissingImages: with `require`, naming the folder, what it holds and what it should.
    """
    path = Path(captions_json)
    data = load_json(path, "COCO captions file")
    images = read_image_table(data, path, Path(image_dir))
    captions: dict[int, list[str]] = {image_id: [] for image_id in images}
    for i, entry in enumerate(entries(data, "annotations", path)):
        where = _where("annotations", i, entry)
        image_id = field(entry, "image_id", int, path, where)
        caption = field(entry, "caption", str, path, where).strip()
        if image_id not in captions:
            raise ValueError(f"{path}: {where} has image_id {image_id}, which is not in "
                             "'images'")
        if caption:
            captions[image_id].append(caption)
    captioned = [im for im in images.values() if captions[im.image_id]]
    found = locate_images(captioned, Path(image_dir))
    if require:
        require_images(found, len(captioned), image_dir, f"{path.name}'s captions",
                       f"the image folder of {path.name} (COCO 2014 and 2017 file names are "
                       "both read, by image id)")
    return [CaptionedImage(im.image_id, im.path, im.width, im.height, captions[im.image_id])
            for im in captioned]
