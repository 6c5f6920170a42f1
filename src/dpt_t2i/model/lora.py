"""LoRA on the U-Net's attention through PEFT, the way diffusers' LoRA trainers do it.

`add_lora` freezes the U-Net and adds a PEFT LoRA adapter (`LoraConfig` + `add_adapter`) to
the cross-attention projections (`attn2`) or to every attention projection (`attn1` and
`attn2`); the LoRA weights are kept in fp32 whatever the U-Net's dtype. `LoraWeights` wraps
the adapter's state so checkpoints and DPT folders store it like any module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
TARGETS = {"cross": ("attn2",), "all": ("attn1", "attn2")}


@dataclass
class LoraSettings:
    rank: int = 4          # diffusers' LoRA trainers default to 4
    alpha: float = 4.0     # alpha = rank: the LoRA update enters at scale 1
    targets: str = "cross"  # "cross" (attn2 only) or "all" (attn1 + attn2)

    def __post_init__(self):
        if self.targets not in TARGETS:
            raise ValueError(f"LoRA targets must be one of {', '.join(TARGETS)}, "
                             f"got {self.targets!r}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")

    def to_dict(self) -> dict:
        return asdict(self)


def target_modules(targets: str) -> list[str]:
    """PEFT target names (matched as suffixes of module names) for `targets`."""
    return [f"{attn}.{proj}" for attn in TARGETS[targets] for proj in PROJECTIONS]


def add_lora(unet: nn.Module, settings: LoraSettings) -> list[nn.Parameter]:
    """Freeze `unet` and add a LoRA adapter; returns the trainable (fp32) LoRA parameters."""
    unet.requires_grad_(False)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, init_lora_weights="gaussian",
                        target_modules=target_modules(settings.targets))
    unet.add_adapter(config)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    if not params:
        raise ValueError(f"no attention projection of this U-Net matched the LoRA targets "
                         f"{target_modules(settings.targets)}")
    for p in params:
        p.data = p.data.float()
    return params


class LoraWeights(nn.Module):
    """The U-Net's LoRA weights seen as a module: `state_dict` / `load_state_dict` only.

    Keys are PEFT's (`down_blocks.0.attentions.0...attn2.to_q.lora_A.weight`). The U-Net is
    held outside the module tree, so wrapping it adds no parameters to anything.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self._unet = [unet]  # a list hides it from nn.Module's registration

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:  # noqa: D102
        return {k: v.detach().float() for k, v in get_peft_model_state_dict(self._unet[0]).items()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        result = set_peft_model_state_dict(self._unet[0], state_dict)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if strict and unexpected:
            raise KeyError(f"LoRA weights have keys this U-Net lacks: {sorted(unexpected)[:5]}")
        return result


def fuse_lora(unet: nn.Module) -> None:
    """Merge the U-Net's LoRA into its weights and drop the LoRA layers (in place).

    Afterwards the U-Net is a plain `UNet2DConditionModel` again: a forward pass costs what
    the base model's does, and gives the LoRA model's output up to float rounding.
    """
    if not getattr(unet, "peft_config", None):
        raise ValueError("this U-Net carries no LoRA adapter to fuse")
    unet.fuse_lora()
    unet.unload_lora()
