"""Image-text models in local transformers folders, loaded as referees for `dpt referee`:
BLIP-2's retrieval model (`Blip2ForImageTextRetrieval`: the image-text matching head, ITM,
and the contrastive similarity, ITC) and CLIP (`CLIPModel`).

A referee folder is what `save_pretrained` writes for the model, its tokenizer and its image
processor (a local copy of Salesforce/blip2-itm-vit-g or openai/clip-vit-large-patch14):

    config.json                model_type "blip-2" (its Q-Former taking text) or "clip"
    model.safetensors          or pytorch_model.bin, or the index of a sharded checkpoint
    tokenizer.json             or vocab.txt (BLIP-2's BERT), vocab.json + merges.txt (CLIP)
    preprocessor_config.json   the image processor: size, crop, resampling, mean and std

`check_vlm_folder` reads all of it but the weights, with a one-line ValueError naming the
folder and what is missing or wrong, so a command refuses a bad folder before any model
loads; `load_vlm_referee` then loads the weights and refuses a checkpoint that lacks some
of the model's tensors (a Blip2ForConditionalGeneration folder has no ITM head). The image
processor is kept as an `ImagePrep`, which generation/vlm_scorers.py applies in torch so
that the score keeps its gradient with respect to the image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

VLM_REFEREES = {"blip2-itm": "blip-2", "blip2-itc": "blip-2", "clip": "clip"}  # -> model_type
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# model_type -> the file sets a tokenizer folder may hold (any one, complete)
TOKENIZER_FILES = {"blip-2": (("tokenizer.json",), ("vocab.txt",)),
                   "clip": (("tokenizer.json",), ("vocab.json", "merges.txt"))}
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's filter numbers, as the processor saves them
PREP_FILE = "preprocessor_config.json"
EXPECTED = {
    "blip-2": "expected a Blip2ForImageTextRetrieval folder (its save_pretrained with the BERT "
              "tokenizer and the image processor, e.g. Salesforce/blip2-itm-vit-g)",
    "clip": "expected a CLIPModel folder (its save_pretrained with the tokenizer and the image "
            "processor, e.g. openai/clip-vit-large-patch14)"}


@dataclass(frozen=True)
class ImagePrep:
    """What the folder's image processor does to an image, for a torch re-implementation."""

    size: tuple[int, int] | None   # resize to (H, W) exactly (BLIP-2); None: see shortest_edge
    shortest_edge: int | None      # resize the shorter side to this, aspect kept (CLIP)
    crop: tuple[int, int] | None   # centre crop (H, W) after resizing (CLIP); None: no crop
    mode: str                      # "bicubic" or "bilinear": the processor's PIL filter
    scale: float                   # an 8-bit level's value: 255 x rescale_factor (1 for 1/255)
    mean: tuple[float, float, float]  # normalisation of the rescaled pixels
    std: tuple[float, float, float]


@dataclass
class CheckedFolder:
    """A referee folder that passed `check_vlm_folder`: all but the weights read."""

    path: Path
    referee: str       # a key of VLM_REFEREES
    config: Any        # Blip2Config or CLIPConfig
    tokenizer: Any     # BertTokenizer (BLIP-2's Q-Former) or CLIPTokenizer
    prep: ImagePrep


@dataclass
class VLMReferee(CheckedFolder):
    """A loaded referee: the model frozen in eval mode, in float32 (loaded on the CPU)."""

    model: Any = None  # Blip2ForImageTextRetrieval or CLIPModel


def check_vlm_folder(folder: str | Path, referee: str,
                     prompts: list[str] | None = None) -> CheckedFolder:
    """Read a referee folder but its weights; a ValueError names what is missing or wrong.

    Args:
        folder: the folder (`--referee-model`).
        referee: "blip2-itm", "blip2-itc" or "clip".
        prompts: when given, each must tokenize to ids the model embeds (a tokenizer of
            another model gives ids past the model's vocabulary).
    """
    if referee not in VLM_REFEREES:
        raise ValueError(f"unknown referee {referee!r}; expected one of "
                         f"{', '.join(VLM_REFEREES)}")
    kind = VLM_REFEREES[referee]
    folder = Path(folder).expanduser()
    where = f"--referee-model {folder}"
    if not folder.is_dir():
        raise ValueError(f"{where} is not a folder; {EXPECTED[kind]}")
    raw = _read_json(folder / "config.json", where, kind)
    if raw.get("model_type") != kind:
        raise ValueError(f"{where} holds a {raw.get('model_type')!r} model (config.json "
                         f"model_type) where --referee {referee} reads {kind!r}; "
                         f"{EXPECTED[kind]}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"{where} has no weights (none of {', '.join(WEIGHT_FILES)}); "
                         f"{EXPECTED[kind]}")
    if not any(all((folder / f).is_file() for f in group) for group in TOKENIZER_FILES[kind]):
        files = " or ".join(" + ".join(group) for group in TOKENIZER_FILES[kind])
        raise ValueError(f"{where} has no tokenizer files ({files}); {EXPECTED[kind]}")
    prep = read_image_prep(folder, where, kind)
    config, tokenizer = _config_and_tokenizer(folder, kind, where)
    if kind == "blip-2" and not config.qformer_config.use_qformer_text_input:
        raise ValueError(f"{where}: its Q-Former takes no text (config.json qformer_config."
                         f"use_qformer_text_input is not true), so it has no ITM or ITC head; "
                         f"{EXPECTED[kind]}")
    if prompts:
        _check_token_ids(tokenizer, config, kind, prompts, where)
    return CheckedFolder(folder, referee, config, tokenizer, prep)


def load_vlm_referee(checked: CheckedFolder) -> VLMReferee:
    """Load the weights of a checked folder; refuse a checkpoint missing some of them."""
    from transformers import Blip2ForImageTextRetrieval, CLIPModel

    kind = VLM_REFEREES[checked.referee]
    cls = Blip2ForImageTextRetrieval if kind == "blip-2" else CLIPModel
    where = f"--referee-model {checked.path}"
    try:
        model, info = cls.from_pretrained(checked.path, local_files_only=True,
                                          dtype=torch.float32, output_loading_info=True)
    except Exception as err:  # noqa: BLE001 - torn files raise OSError, SafetensorError, ...
        raise ValueError(f"cannot load the weights of {where} ({_one_line(err)}); "
                         f"{EXPECTED[kind]}") from None
    for problem in ("missing_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(problem) or ())
        if keys:
            what = "lack" if problem == "missing_keys" else "mis-shape"
            raise ValueError(f"{where}: its weights {what} {len(keys)} of {cls.__name__}'s "
                             f"tensors ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                             f"; {EXPECTED[kind]}")
    model.eval().requires_grad_(False)
    return VLMReferee(checked.path, checked.referee, checked.config, checked.tokenizer,
                      checked.prep, model=model)


def read_image_prep(folder: Path, where: str, kind: str) -> ImagePrep:
    """The ImagePrep of a folder's preprocessor_config.json (BlipImageProcessor or
    CLIPImageProcessor keys)."""
    raw = _read_json(folder / PREP_FILE, where, kind, "the image processor's size, mean, std")
    size, shortest, crop = None, None, None
    try:
        if raw.get("do_resize", True):
            given = raw["size"]
            if isinstance(given, int) or "shortest_edge" in given:
                shortest = int(given if isinstance(given, int) else given["shortest_edge"])
            else:
                size = (int(given["height"]), int(given["width"]))
        if raw.get("do_center_crop", False):
            given = raw["crop_size"]
            crop = (int(given), int(given)) if isinstance(given, int) else \
                (int(given["height"]), int(given["width"]))
        mode = RESAMPLE.get(int(raw.get("resample", 3)))
        scale = 255 * float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) \
            else 255.0
        normalise = raw.get("do_normalize", True)
        mean = tuple(float(v) for v in raw["image_mean"]) if normalise else (0.0, 0.0, 0.0)
        std = tuple(float(v) for v in raw["image_std"]) if normalise else (1.0, 1.0, 1.0)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: {PREP_FILE} is not an image processor's config "
                         f"({type(err).__name__}: {_one_line(err)}); {EXPECTED[kind]}") from None
    if mode is None:
        raise ValueError(f"{where}: {PREP_FILE} resample {raw.get('resample')!r} is not "
                         f"bilinear (2) or bicubic (3); {EXPECTED[kind]}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or \
            any(v is not None and min(v) <= 0 for v in (size, crop)) or \
            (shortest is not None and shortest <= 0):
        raise ValueError(f"{where}: {PREP_FILE} needs 3 means, 3 positive stds and positive "
                         f"sizes; {EXPECTED[kind]}")
    resized = size or ((shortest, shortest) if shortest is not None else None)
    if crop is not None and resized is not None and \
            (resized[0] < crop[0] or resized[1] < crop[1]):
        raise ValueError(f"{where}: {PREP_FILE} crops {crop} from an image resized to "
                         f"{size or shortest}; {EXPECTED[kind]}")
    return ImagePrep(size, shortest, crop, mode, scale, mean, std)


def _config_and_tokenizer(folder: Path, kind: str, where: str) -> tuple[Any, Any]:
    from transformers import BertTokenizer, Blip2Config, CLIPConfig, CLIPTokenizer

    config_cls, tokenizer_cls = (Blip2Config, BertTokenizer) if kind == "blip-2" else \
        (CLIPConfig, CLIPTokenizer)
    try:
        config = config_cls.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - a wrong field raises TypeError, ValueError, ...
        raise ValueError(f"cannot read {where}/config.json ({_one_line(err)}); "
                         f"{EXPECTED[kind]}") from None
    try:
        tokenizer = tokenizer_cls.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise ValueError(f"cannot load the tokenizer of {where} ({_one_line(err)}); "
                         f"{EXPECTED[kind]}") from None
    return config, tokenizer


def _check_token_ids(tokenizer, config, kind: str, prompts: list[str], where: str) -> None:
    vocab = config.qformer_config.vocab_size if kind == "blip-2" else \
        config.text_config.vocab_size
    for prompt in dict.fromkeys(prompts):
        ids = tokenizer(prompt)["input_ids"]
        if ids and max(ids) >= vocab:
            raise ValueError(f"{where}: its tokenizer gives {prompt!r} the token id {max(ids)}, "
                             f"past the model's {vocab} embeddings (the tokenizer of another "
                             f"model?); {EXPECTED[kind]}")


def _read_json(path: Path, where: str, kind: str, holds: str = "") -> dict:
    if not path.is_file():
        what = f" ({holds})" if holds else ""
        raise ValueError(f"{where} has no {path.name}{what}; {EXPECTED[kind]}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path} ({_one_line(err)}); {EXPECTED[kind]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object; {EXPECTED[kind]}")
    return data


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
