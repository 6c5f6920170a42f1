"""A DPT folder: everything the discriminative side needs on top of a base model.

    dpt_config.json       block, text condition, adapter hyper-parameters, LoRA settings
    heads.safetensors     adapter weights and the matching temperature
    lora.safetensors      the U-Net's LoRA weights (PEFT keys), stage 2 only

A `dpt import-official` folder holds LoRA and the authors' adapter
(official_adapter.safetensors) instead of heads.safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..model.config import DPTConfig
from ..model.features import block_channels
from ..model.heads import DPTHeads
from ..model.lora import LoraWeights, add_lora, fuse_lora
from ..model.official_adapter import OfficialHeads
from .checkpoint import atomic_folder

CONFIG_FILE, HEADS_FILE, LORA_FILE = "dpt_config.json", "heads.safetensors", "lora.safetensors"
OFFICIAL_ADAPTER_FILE = "official_adapter.safetensors"  # `dpt import-official`


def save_dpt(folder: Path, heads: DPTHeads | None, config: DPTConfig,
             unet: nn.Module | None = None,
             extra: dict | None = None) -> Path:
    """Write a DPT folder atomically (a temporary folder renamed into place).

    Args:
        folder: where it goes; replaced if it exists.
        heads: the trained heads; None for a LoRA-only folder (config.adapter None).
        config: the DPT config; with `config.lora` set, `unet` must carry the LoRA adapter.
        extra: JSON-able facts recorded in dpt_config.json under "training".
    """
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        if (heads is None) != (config.adapter is None):
            raise ValueError("heads must be given exactly when config.adapter is set")
        if heads is not None:
            save_file({k: v.detach().float().contiguous().cpu()
                       for k, v in heads.state_dict().items()}, tmp / HEADS_FILE)
        if config.lora is not None:
            if unet is None:
                raise ValueError("config has LoRA settings but no U-Net was given to save from")
            save_file({k: v.contiguous().cpu() for k, v in LoraWeights(unet).state_dict().items()},
                      tmp / LORA_FILE)
        data = {**config.to_dict(), "training": extra or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(data, indent=1))
    return folder


def read_dpt_config(folder: Path) -> DPTConfig:
    """The config of a DPT folder, with the weight files it names checked to be whole (their
    headers read, no tensors), so a broken folder is named before a model loads.

    Raises:
        ValueError: naming the file, and the key or what is wrong with it.
    """
    file = Path(folder) / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"{folder} is not a DPT folder: it has no {CONFIG_FILE}")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not a valid DPT config ({type(err).__name__}: {err})") \
            from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} is not a valid DPT config: expected a JSON object with "
                         f"block, condition, adapter and lora, got a {type(data).__name__}")
    try:
        config = DPTConfig.from_dict(data)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{file} is not a valid DPT config ({type(err).__name__}: "
                         f"{_one_line(err)})") from None
    if config.adapter is not None:
        check_tensor_file(Path(folder) / HEADS_FILE, "the adapter's weights (config 'adapter')")
    if config.lora is not None:
        check_tensor_file(Path(folder) / LORA_FILE, "the LoRA weights (config 'lora')")
    return config


def check_tensor_file(file: Path, what: str) -> None:
    """ValueError naming `file` unless it is a whole safetensors file (header and length)."""
    if not file.is_file():
        raise ValueError(f"{file} is missing; the DPT folder's {CONFIG_FILE} says it holds "
                         f"{what}")
    try:
        with safe_open(file, framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise ValueError(_unreadable(file, err)) from None


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; ValueError naming the file when it is missing or broken."""
    try:
        return load_file(file)
    except (SafetensorError, OSError) as err:
        raise ValueError(_unreadable(file, err)) from None


def _unreadable(file: Path, err: BaseException) -> str:
    return (f"cannot read {file} ({_one_line(err)}); expected a whole safetensors file: copy "
            "the DPT folder again, or write it again")


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def load_dpt(folder: Path, unet: nn.Module | None = None, lora_only_ok: bool = False
             ) -> tuple[DPTHeads | None, DPTConfig]:
    """Read a DPT folder; with `unet` given and LoRA in the folder, add and load the LoRA.

    Args:
        lora_only_ok: accept a folder without adapter (then the heads returned are None);
            otherwise such a folder is a ValueError.

    Returns:
        heads in eval mode, and the config.
    """
    folder = Path(folder)
    config = read_dpt_config(folder)
    heads = None
    if config.adapter is None and not lora_only_ok:
        raise ValueError(f"DPT folder {folder} holds LoRA only, or LoRA and the authors' "
                         f"adapter (`dpt import-official`): it samples images (`dpt generate "
                         f"--dpt`), but has no adapter of this project's to evaluate or tune")
    if config.adapter is not None:
        heads = DPTHeads(config.adapter)
        _load_state(heads, folder / HEADS_FILE)
        heads.eval()
    if config.lora is not None and unet is not None:
        add_lora(unet, config.lora)
        _load_state(LoraWeights(unet), folder / LORA_FILE)
        unet.requires_grad_(False)
    return heads, config


def _load_state(module: nn.Module, file: Path) -> None:
    """Load `file` into `module`; ValueError naming the file when it is broken or misfits."""
    state = read_tensors(file)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or misshapen keys, one a line
        details = " ".join(line.strip() for line in str(err).splitlines())
        clipped = details if len(details) <= 300 else details[:300] + " ..."
        raise ValueError(f"cannot load {file}: {clipped}") from None


def default_dpt_path() -> Path:
    """The DPT folder shipped for the Shapes model (trained by `dpt tune`, see its RECIPE.md)."""
    return Path(__file__).resolve().parents[1] / "weights" / "shapes-dpt"


def load_for_sampling(folder: Path, unet: nn.Module, fuse: bool = True
                      ) -> tuple[DPTHeads | None, DPTConfig]:
    """Put a DPT folder on a U-Net for sampling; with `fuse`, its LoRA is merged in.

    A fused U-Net costs what the base model costs per step, and the heads read it as they
    read the LoRA-wrapped one (the tap sees the same block outputs).

    Returns:
        the heads (None for a LoRA-only folder) and the config.

    Raises:
        ValueError: naming the folder when its adapter does not fit this U-Net's block.
    """
    config = read_dpt_config(folder)
    try:
        channels = block_channels(unet, config.block)
    except ValueError as err:
        raise ValueError(f"DPT folder {folder} reads block {config.block!r}: {err}") from None
    if config.adapter is not None and channels != config.adapter.feature_dim:
        raise ValueError(f"DPT folder {folder} was trained on a U-Net whose block "
                         f"{config.block} has {config.adapter.feature_dim} channels; this "
                         f"U-Net's has {channels}: the DPT weights belong to another model")
    try:
        heads, config = load_dpt(folder, unet, lora_only_ok=True)
    except KeyError as err:
        raise ValueError(f"DPT folder {folder}: {err.args[0]}") from None
    official = Path(folder) / OFFICIAL_ADAPTER_FILE
    if heads is None and official.is_file():
        state = read_tensors(official)
        try:
            heads = OfficialHeads.from_state_dict(state)
        except ValueError as err:
            raise ValueError(f"{official}: {err}") from None
        if heads.input_proj.in_channels != channels:
            raise ValueError(f"DPT folder {folder} holds the authors' adapter for a block of "
                             f"{heads.input_proj.in_channels} channels; this U-Net's "
                             f"{config.block} has {channels}: it belongs to another model")
    if config.lora is not None and fuse:
        fuse_lora(unet)
    return heads, config


def half_copy(folder: Path, out: Path) -> Path:
    """Copy a DPT folder with its tensors stored as fp16 (the shipped weights' format).

    Loading casts them back to the modules' dtype. `out` is written atomically.
    """
    folder = Path(folder)
    read_dpt_config(folder)  # a ValueError naming the folder when it is not a DPT folder
    with atomic_folder(Path(out)) as tmp:
        for name in (HEADS_FILE, LORA_FILE):
            if (folder / name).is_file():
                state = read_tensors(folder / name)
                save_file({k: v.half().contiguous() if v.is_floating_point() else v
                           for k, v in state.items()}, tmp / name)
        (tmp / CONFIG_FILE).write_text((folder / CONFIG_FILE).read_text())
    return Path(out)
