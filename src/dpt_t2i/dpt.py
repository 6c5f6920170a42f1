"""A DPT model: which U-Net block is read and how, the adapter, and (after stage 2) LoRA.

A *DPT folder* holds everything the discriminative side needs on top of a base model:

    dpt_config.json       block, text condition, adapter hyper-parameters, LoRA settings
    heads.safetensors     adapter weights and the matching temperature
    lora.safetensors      the U-Net's LoRA weights (PEFT keys), stage 2 only

Text conditioning of the features the matching head reads (`condition`):
- "empty": the U-Net sees the empty prompt, so the features depend on the image alone; one
  U-Net pass scores an image against any number of texts, and the matching score cannot be
  won by reading the text back out of the conditioning.
- "caption": the U-Net sees the text being scored (as the paper's pipeline does at
  sampling time). Scoring an image against T texts then costs T U-Net passes.

and of the features the grounding head reads (`ground_condition`):
- "expression": the U-Net sees the referring expression, so its cross-attention tells the
  features which object is meant (the box must still be found in the image, so reading
  the text back wins nothing);
- "empty": the grounding head shares the matching pass's features (one U-Net pass fewer).

With `adapter.ground_text` (the default) the adapter also reads the expression's token
states in its grounding pass, whichever ground_condition is set; without it, under "empty"
only the semantic vectors can tell two objects of one image apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import AdapterConfig, build_adapter
from .checkpoint import atomic_folder
from .features import block_channels, tap
from .lora import LoraSettings, LoraWeights, add_lora, fuse_lora
from .losses import MatchingLoss, matching_scores
from .text import encode_texts, text_mask

CONDITIONS = ("empty", "caption")
GROUND_CONDITIONS = ("expression", "empty")
CONFIG_FILE, HEADS_FILE, LORA_FILE = "dpt_config.json", "heads.safetensors", "lora.safetensors"
OFFICIAL_ADAPTER_FILE = "official_adapter.safetensors"  # `dpt import-official`


@dataclass
class DPTConfig:
    block: str = "up1"          # Shapes U-Net: the 8x8, 128-channel up block (see RECIPE)
    condition: str = "empty"    # matching features; see the module docstring
    ground_condition: str = "expression"  # grounding features; measured in docs/dpt-shapes.md
    # None: no adapter of this project's kind (a `dpt import-official` folder: LoRA, and the
    # authors' adapter in official_adapter.safetensors, which `OfficialHeads` runs)
    adapter: AdapterConfig | None = field(default_factory=AdapterConfig)
    lora: LoraSettings | None = None  # None until stage 2 adds LoRA

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, "
                             f"got {self.condition!r}")
        if self.ground_condition not in GROUND_CONDITIONS:
            raise ValueError(f"ground_condition must be one of {', '.join(GROUND_CONDITIONS)}, "
                             f"got {self.ground_condition!r}")

    def to_dict(self) -> dict:
        return {"block": self.block, "condition": self.condition,
                "ground_condition": self.ground_condition,
                "adapter": asdict(self.adapter) if self.adapter else None,
                "lora": self.lora.to_dict() if self.lora else None}

    @classmethod
    def from_dict(cls, data: dict) -> "DPTConfig":
        lora = LoraSettings(**data["lora"]) if data.get("lora") else None
        return cls(block=data["block"], condition=data["condition"],
                   ground_condition=data["ground_condition"],
                   adapter=AdapterConfig(**data["adapter"]) if data["adapter"] else None,
                   lora=lora)


class DPTHeads(nn.Module):
    """What both stages train besides LoRA: the adapter and the matching temperature."""

    def __init__(self, adapter_config: AdapterConfig):
        super().__init__()
        self.adapter = build_adapter(adapter_config)
        self.matching = MatchingLoss()

    def forward(self, features: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.adapter(features, timesteps, text_states, text_mask)

    def ground(self, features: torch.Tensor, timesteps: torch.Tensor, ref_states: torch.Tensor,
               ref_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Grounding outputs for expressions with token states (B, L, D) and mask (B, L).

        The tokens are read only when the adapter has `ground_text`.
        """
        if self.adapter.ground_text:
            return self.adapter(features, timesteps, ref_states, ref_mask)
        return self.adapter(features, timesteps)


def unet_features(unet: nn.Module, config: DPTConfig, latents: torch.Tensor,
                  timesteps: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """F_t of the configured block (early exit) for noisy latents under text states (B, L, D)."""
    return tap(unet, config.block, latents, timesteps, states)


def text_embeddings(heads: DPTHeads, text_encoder: nn.Module, tokenizer,
                    texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """text(y) of the matching score (N, D), and the states the U-Net attends to (N, L, D)."""
    pooled, hidden = encode_texts(text_encoder, tokenizer, texts)
    mask = text_mask(tokenizer, texts).to(hidden.device)
    return heads.adapter.text(pooled, hidden, mask), hidden


def rec_choice(outputs: dict[str, torch.Tensor], ref_embeds: torch.Tensor,
               temperature: float = 0.07) -> torch.Tensor:
    """The query that answers each referring expression: argmax of log p_j + log softmax_j cos.

    The probability p_j says "this query holds the referred object"; the semantic vector o_j
    says which expression it answers (eq. 6). When neither the U-Net nor the adapter sees the
    expression, p_j cannot know it and the semantic term alone tells objects apart.

    Args:
        outputs: adapter outputs with `ground_logits` (B, Q) and `ground_embeds` (B, Q, D).
        ref_embeds: (B, D) text embeddings of the expressions.

    Returns:
        (B,) long query indices.
    """
    o = F.normalize(outputs["ground_embeds"], dim=-1)  # (B, Q, D)
    y = F.normalize(ref_embeds.to(o.dtype), dim=-1)  # (B, D)
    semantic = torch.einsum("bqd,bd->bq", o, y) / temperature  # (B, Q)
    score = F.logsigmoid(outputs["ground_logits"]) + semantic.log_softmax(dim=1)
    return score.argmax(dim=1)


def itm_matrix(heads: DPTHeads, features: torch.Tensor, timesteps: torch.Tensor,
               text_embeds: torch.Tensor) -> torch.Tensor:
    """(B, T) matching scores s(z_b, y_t) of B feature maps against T text embeddings."""
    return matching_scores(heads(features, timesteps)["match_embeds"], text_embeds)


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
    """The config of a DPT folder; ValueError naming the file and key when it is not one."""
    file = Path(folder) / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"{folder} is not a DPT folder: it has no {CONFIG_FILE}")
    try:
        return DPTConfig.from_dict(json.loads(file.read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not a valid DPT config ({type(err).__name__}: {err})") from err


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
        try:
            heads.load_state_dict(load_file(folder / HEADS_FILE))
        except (RuntimeError, FileNotFoundError, OSError) as err:
            raise ValueError(f"cannot load {folder / HEADS_FILE}: "
                             f"{str(err).splitlines()[0]}") from err
        heads.eval()
    if config.lora is not None and unet is not None:
        add_lora(unet, config.lora)
        LoraWeights(unet).load_state_dict(load_file(folder / LORA_FILE))
        unet.requires_grad_(False)
    return heads, config


def default_dpt_path() -> Path:
    """The DPT folder shipped for the Shapes model (trained by `dpt tune`, see its RECIPE.md)."""
    return Path(__file__).resolve().parent / "weights" / "shapes-dpt"


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
    if heads is None and (Path(folder) / OFFICIAL_ADAPTER_FILE).is_file():
        from .official_adapter import OfficialHeads

        try:
            heads = OfficialHeads.from_state_dict(load_file(Path(folder) / OFFICIAL_ADAPTER_FILE))
        except ValueError as err:
            raise ValueError(f"{Path(folder) / OFFICIAL_ADAPTER_FILE}: {err}") from None
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
                state = load_file(folder / name)
                save_file({k: v.half().contiguous() if v.is_floating_point() else v
                           for k, v in state.items()}, tmp / name)
        (tmp / CONFIG_FILE).write_text((folder / CONFIG_FILE).read_text())
    return Path(out)
