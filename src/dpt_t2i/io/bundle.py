"""Load a text-to-image model folder (Stable Diffusion 1.x/2.x in diffusers layout).

A model is a folder that `StableDiffusionPipeline.from_pretrained` loads: `model_index.json`
beside the `vae/`, `text_encoder/`, `tokenizer/`, `unet/` and `scheduler/` subfolders. A
Shapes-world model also holds `shapes_world.json`, which lists the words it was trained on.
The bundle keeps the scheduler as a config: schedulers carry per-run state, so each run
makes a fresh one (`sampling.make_scheduler`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.shapes.grammar import vocabulary

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

WORLD_FILE = "shapes_world.json"
# component subfolder -> the file it must hold (None: any file)
COMPONENTS = {"vae": "config.json", "text_encoder": "config.json", "tokenizer": None,
              "unet": "config.json", "scheduler": "scheduler_config.json"}
EXPECTED = ("expected a Stable Diffusion folder in diffusers layout (model_index.json with "
            "vae/, text_encoder/, tokenizer/, unet/ and scheduler/)")


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_device(device: str, flag: str = "--device") -> torch.device:
    """The torch device `device` names, checked before a model loads: ValueError naming
    `flag` for a name torch does not know or a CUDA or MPS device this machine lacks."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{flag} {device!r} is not a torch device name (cpu, cuda, cuda:1, "
                         f"mps): {err}") from None
    if where.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (where.index or 0) >= count:
            raise ValueError(f"{flag} {device}: this machine has {count} CUDA device(s) that "
                             "torch can use")
    elif where.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {device}: MPS is not available on this machine")
    elif where.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag} {device}: expected cpu, cuda[:N] or mps")
    return where


@dataclass
class ModelBundle:
    """The parts of a latent text-to-image model, loaded and frozen (eval mode, no grad)."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler_config: dict[str, Any]  # the folder's scheduler; runs build fresh schedulers from it
    path: Path
    vocabulary: tuple[str, ...] | None = None  # Shapes words, when the folder is a Shapes model

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one image's latent, as the pipeline derives it from the U-Net config."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, h, w)


def default_model_path() -> Path:
    """The Shapes-world model shipped inside the installed package."""
    return Path(__file__).resolve().parents[1] / "weights" / "shapes-t2i"


def check_model_folder(path: str | Path) -> Path:
    """Check that `path` looks like a diffusers Stable Diffusion folder; return it resolved.

    Raises:
        ValueError: one line naming the missing piece (folder, model_index.json, component).
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ValueError(f"model folder {folder} does not exist; {EXPECTED}")
    if not folder.is_dir():
        raise ValueError(f"model path {folder} is not a folder; {EXPECTED}")
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{folder} has no model_index.json; {EXPECTED}")
    try:
        json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {index} ({_one_line(err)}); {EXPECTED}") from None
    for name, required in COMPONENTS.items():
        sub = folder / name
        if not sub.is_dir() or not any(sub.iterdir()):
            raise ValueError(f"{folder} has no {name}/ component; {EXPECTED}")
        if required is not None and not (sub / required).is_file():
            raise ValueError(f"{folder} has no {name}/{required}; {EXPECTED}")
    return folder.resolve()


def read_vocabulary(folder: str | Path) -> tuple[str, ...] | None:
    """The words of a Shapes-world model (from `shapes_world.json`), or None for other models.

    A marker file without a "vocabulary" list means the world's full vocabulary.
    """
    marker = Path(folder) / WORLD_FILE
    if not marker.is_file():
        return None
    expected = 'expected {"world": "shapes", "vocabulary": [words]}'
    try:
        data = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {marker} ({_one_line(err)}); {expected}") from None
    words = data.get("vocabulary") if isinstance(data, dict) else None
    if words is None and isinstance(data, dict):
        return vocabulary()
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{marker} has no list of words; {expected}")
    return tuple(words)


def read_scheduler_config(folder: str | Path) -> dict[str, Any]:
    """The scheduler config of a checked model folder, read without loading the model."""
    file = Path(folder) / "scheduler" / "scheduler_config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {file} ({_one_line(err)}); {EXPECTED}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} is not a JSON object; {EXPECTED}")
    return config


def load_bundle(path: str | Path, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> ModelBundle:
    """Load a model folder component by component, offline.

    Args:
        path: a diffusers Stable Diffusion 1.x/2.x folder (see `check_model_folder`).
        device: where the modules go.
        dtype: the modules' parameter dtype; weights stored in another dtype (the shipped
            model stores fp16) are cast on load. Use float32 on a CPU.

    Returns:
        A ModelBundle with frozen modules in eval mode.
    """
    # Imported here: they take seconds to import, and the CLI checks its input first.
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = check_model_folder(path)
    vae = _load(AutoencoderKL, folder, "vae", torch_dtype=dtype)
    unet = _load(UNet2DConditionModel, folder, "unet", torch_dtype=dtype)
    text_encoder = _load(CLIPTextModel, folder, "text_encoder", dtype=dtype)
    tokenizer = _load(CLIPTokenizer, folder, "tokenizer")
    for module in (vae, unet, text_encoder):
        module.to(device).eval().requires_grad_(False)
    scheduler_config = read_scheduler_config(folder)
    return ModelBundle(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                       scheduler_config=scheduler_config, path=folder,
                       vocabulary=read_vocabulary(folder))


def _load(cls: type, folder: Path, subfolder: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained` on one component, with a one-line error when its files are bad."""
    try:
        return cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        message = f"cannot load {folder}/{subfolder} ({_one_line(err)}); {EXPECTED}"
        raise ValueError(message) from None


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
