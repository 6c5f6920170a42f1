"""DPT LoRA in and out of other tools' formats.

- `export_diffusers_lora`: a DPT folder's LoRA as `pytorch_lora_weights.safetensors`, the file
  plain `StableDiffusionPipeline.load_lora_weights(folder)` reads (keys `unet.<module>.lora_A
  .weight` / `lora_B`, as diffusers' own LoRA trainers save them), with the LoRA config in the
  file's metadata so a rank/alpha other than 1:1 loads at the right scale.
- `official_lora`: the LoRA of a checkpoint in the authors' release layout (one flat
  `pytorch_model.bin`: attention-processor LoRA `unet.<block>.attn{1,2}.processor.to_{q,k,v,
  out}_lora.{down,up}.weight` on every attention layer, beside the adapter's own keys) read
  with `torch.load(weights_only=True)` and turned into this project's PEFT keys.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..model.config import DPTConfig
from ..model.features import block_channels
from ..model.lora import LoraSettings, target_modules
from ..model.official_adapter import PREFIXES as ADAPTER_PREFIXES
from ..model.official_adapter import OfficialHeads
from .checkpoint import atomic_folder
from .dpt_folder import (CONFIG_FILE, LORA_FILE, OFFICIAL_ADAPTER_FILE, read_dpt_config,
                         read_tensors)

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
# projection name in the legacy processor keys -> module name under the attention block
LEGACY_PROJECTIONS = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v",
                      "to_out_lora": "to_out.0"}
LEGACY_KEY = re.compile(r"^unet\.(?P<attn>.+\.attn[12])\.processor\."
                        r"(?P<proj>to_q_lora|to_k_lora|to_v_lora|to_out_lora)\."
                        r"(?P<side>down|up)\.weight$")


def export_diffusers_lora(dpt_folder: Path, out: Path) -> Path:
    """Write the LoRA of a stage-2 DPT folder as diffusers' LoRA file into `out`.

    Returns:
        the written `out / pytorch_lora_weights.safetensors`.

    Raises:
        ValueError: the folder has no LoRA (a stage-1 folder).
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    config = read_dpt_config(dpt_folder)
    if config.lora is None:
        raise ValueError(f"{dpt_folder} is a stage-1 DPT folder: it has no LoRA to export "
                         f"(train one with `dpt tune --init {dpt_folder}`)")
    state = convert_state_dict_to_diffusers(read_tensors(Path(dpt_folder) / LORA_FILE))
    metadata = {"r": config.lora.rank, "lora_alpha": config.lora.alpha,
                "target_modules": target_modules(config.lora.targets),
                "init_lora_weights": "gaussian"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=state,
                                              unet_lora_adapter_metadata=metadata,
                                              safe_serialization=True)
    return out / DIFFUSERS_LORA_FILE


def read_official_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The flat state dict of an authors'-layout `pytorch_model.bin` (tensors only).

    Raises:
        ValueError: naming the file when it is missing, empty, not a checkpoint that
            `torch.load(weights_only=True)` reads, or not a flat dict of tensors.
    """
    path = Path(path)
    expected = "expected the authors' pytorch_model.bin (a PyTorch checkpoint of tensors only)"
    if not path.exists():
        raise ValueError(f"{path}: the file does not exist; {expected}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file; {expected}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; {expected}")
    # Unpickling errors have many types (EOFError, IndexError, UnpicklingError ...), and
    # torch's message advises weights_only=False, which would run any code the file holds:
    # ours says what the file should be instead.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise ValueError(f"cannot read {path} with torch.load(weights_only=True); "
                         f"{expected}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors; {expected}")
    return state


def official_lora(state: dict[str, torch.Tensor], unet: nn.Module
                  ) -> tuple[dict[str, torch.Tensor], int]:
    """PEFT LoRA weights (this project's keys) from an authors'-layout state dict.

    Args:
        state: from `read_official_checkpoint`.
        unet: the base model's U-Net; every attention layer (attn1 and attn2) must carry
            LoRA on its four projections, as the release does.

    Returns:
        (state dict with `<module>.lora_A.weight` / `lora_B.weight` keys, rank).

    Raises:
        ValueError: naming unknown keys (neither LoRA of this U-Net nor adapter), missing
            LoRA keys, or inconsistent ranks.
    """
    attention = sorted(name for name, _ in unet.named_modules()
                       if re.search(r"\.attn[12]$", name))
    expected = {f"unet.{a}.processor.{p}.{side}.weight"
                for a in attention for p in LEGACY_PROJECTIONS for side in ("down", "up")}
    lora_keys = {k for k in state if LEGACY_KEY.match(k)}
    unknown = sorted(k for k in state if k not in expected
                     and not k.startswith(ADAPTER_PREFIXES))
    if unknown:
        raise ValueError(f"{len(unknown)} keys are neither LoRA of this U-Net's attention "
                         f"layers nor the adapter's: {', '.join(unknown[:5])}"
                         + (" ..." if len(unknown) > 5 else ""))
    missing = sorted(expected - lora_keys)
    if missing:
        raise ValueError(f"{len(missing)} LoRA keys of this U-Net are missing: "
                         f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    out, ranks = {}, set()
    for key in sorted(lora_keys):
        m = LEGACY_KEY.match(key)
        module = f"{m['attn']}.{LEGACY_PROJECTIONS[m['proj']]}"
        weight = state[key].float()
        ranks.add(weight.shape[0] if m["side"] == "down" else weight.shape[1])
        out[f"{module}.{'lora_A' if m['side'] == 'down' else 'lora_B'}.weight"] = weight
    if len(ranks) != 1:
        raise ValueError(f"the LoRA layers have different ranks {sorted(ranks)}; expected one")
    return out, ranks.pop()


def import_official(checkpoint: Path, unet: nn.Module, out: Path,
                    state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write an authors'-layout checkpoint as a DPT folder at `out` (atomically).

    The LoRA becomes `lora.safetensors` (PEFT keys); the adapter's weights are kept verbatim
    in `official_adapter.safetensors` and run by `official_adapter.OfficialHeads` (matching
    only), which is checked to load them here. `dpt generate --dpt out` then samples with the
    LoRA fused and self-corrects with their score (their U-Net conditioning: the prompt).
    The folder has no adapter of this project's kind, so it cannot be tuned further.

    Args:
        state: the checkpoint's tensors when already read (`read_official_checkpoint`).

    Raises:
        ValueError: naming the checkpoint, and what in it does not fit this U-Net.
    """
    state = read_official_checkpoint(checkpoint) if state is None else state
    try:
        lora, rank = official_lora(state, unet)
        adapter = {k: v.contiguous() for k, v in state.items() if not LEGACY_KEY.match(k)}
        if adapter:
            _check_adapter(adapter, unet)
    except ValueError as err:  # the misfit, prefixed with the file it is about
        raise ValueError(f"{checkpoint}: {err}") from None
    # LoRAAttnProcessor adds up(down(x)) at scale 1, i.e. alpha = rank
    config = DPTConfig(block="up1", condition="caption", adapter=None,
                       lora=LoraSettings(rank=rank, alpha=float(rank), targets="all"))
    with atomic_folder(Path(out)) as tmp:
        save_file(lora, tmp / LORA_FILE)
        if adapter:
            save_file(adapter, tmp / OFFICIAL_ADAPTER_FILE)
        data = {**config.to_dict(), "training": {
            "imported_from": str(Path(checkpoint).resolve()), "lora_tensors": len(lora),
            "official_adapter_tensors": len(adapter)}}
        (tmp / CONFIG_FILE).write_text(json.dumps(data, indent=1))
    return Path(out)


def _check_adapter(adapter: dict[str, torch.Tensor], unet: nn.Module) -> None:
    """ValueError unless the authors' adapter loads and reads this U-Net's up1 block."""
    heads = OfficialHeads.from_state_dict(adapter)  # a ValueError naming misfit keys
    channels = block_channels(unet, "up1")
    if heads.input_proj.in_channels != channels:
        raise ValueError(f"the adapter reads {heads.input_proj.in_channels} channels; this "
                         f"U-Net's up1 block has {channels}: it belongs to another model")
