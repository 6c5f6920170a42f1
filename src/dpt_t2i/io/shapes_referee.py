"""A Shapes referee folder: the image-text matcher of `model.shapes_referee`, as shipped.

    config.json          the `RefereeConfig` (vocabulary included) and, under "training",
                         what made it
    model.safetensors    the weights, fp16 (loading casts them to float32)

`dpt world train-referee` writes one; `default_shapes_referee_path()` is the one the
package ships.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..model.shapes_referee import RefereeConfig, ShapesReferee
from .checkpoint import atomic_folder

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def default_shapes_referee_path() -> Path:
    """The Shapes referee shipped inside the package (its RECIPE.md says how it was made)."""
    return Path(__file__).resolve().parents[1] / "weights" / "shapes-referee"


def save_shapes_referee(folder: Path, model: ShapesReferee, extra: dict | None = None) -> Path:
    """Write a referee folder atomically, weights in fp16.

    Args:
        folder: where it goes; replaced if it exists.
        model: the referee.
        extra: JSON-able facts recorded in config.json under "training".
    """
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        save_file({k: v.detach().half().contiguous().cpu()
                   for k, v in model.state_dict().items()}, tmp / WEIGHTS_FILE)
        data = {**model.config.to_dict(), "training": extra or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(data, indent=1))
    return folder


def read_shapes_referee_config(folder: Path) -> RefereeConfig:
    """The config of a referee folder.

    Raises:
        ValueError: one line naming the folder or file and what is wrong.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; expected a Shapes referee folder "
                         f"({CONFIG_FILE}, {WEIGHTS_FILE})")
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"{folder} is not a Shapes referee folder: it has no {CONFIG_FILE}")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({type(err).__name__}: "
                         f"{str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got a {type(data).__name__}")
    data.pop("training", None)
    try:
        return RefereeConfig.from_dict(data)
    except KeyError as err:
        raise ValueError(f"{file} lacks the key {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{file} is not a referee config: {str(err).splitlines()[0]}") from None


def load_shapes_referee(folder: Path) -> ShapesReferee:
    """The referee of a folder, float32, in eval mode with its weights frozen.

    Raises:
        ValueError: one line naming the file, when the folder is incomplete or broken or its
            weights do not fit its config.
    """
    folder = Path(folder)
    model = ShapesReferee(read_shapes_referee_config(folder))
    file = folder / WEIGHTS_FILE
    if not file.is_file():
        raise ValueError(f"{folder} is not a whole Shapes referee folder: {WEIGHTS_FILE} "
                         "is missing")
    try:
        state = load_file(file)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {file} ({str(err).splitlines()[0]}); expected a whole "
                         "safetensors file") from None
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:
        details = " ".join(line.strip() for line in str(err).splitlines())
        clipped = details if len(details) <= 300 else details[:300] + " ..."
        raise ValueError(f"cannot load {file}: {clipped}") from None
    return model.eval().requires_grad_(False)

