"""Read the feature map of one named U-Net block, stopping the forward pass right after it.

Block names follow the U-Net's own order: `down0`..`down{n-1}`, `mid`, `up0`..`up{n-1}`.
A forward hook on the block stores its output and, for an early exit, raises an exception
that unwinds the rest of `UNet2DConditionModel.forward`; diffusers itself is not edited.
The stored tensor keeps its autograd graph, so a score computed from it can be
differentiated with respect to the latent (self-correction).
"""

from __future__ import annotations

import torch
from torch import nn


class _EarlyExit(Exception):
    """Raised by the tap's hook once the block's output is stored."""


def block_names(unet: nn.Module) -> list[str]:
    """The tappable blocks of a `UNet2DConditionModel`, input side first."""
    names = [f"down{i}" for i in range(len(unet.down_blocks))]
    names += ["mid"] if unet.mid_block is not None else []
    return names + [f"up{i}" for i in range(len(unet.up_blocks))]


def get_block(unet: nn.Module, name: str) -> nn.Module:
    """The module behind a block name; ValueError listing the names if it has none."""
    names = block_names(unet)
    if name not in names:
        raise ValueError(f"unknown U-Net block {name!r}; expected one of {', '.join(names)}")
    if name == "mid":
        return unet.mid_block
    blocks = unet.down_blocks if name.startswith("down") else unet.up_blocks
    return blocks[int(name.removeprefix("down").removeprefix("up"))]


def block_channels(unet: nn.Module, name: str) -> int:
    """Channels d of the feature map block `name` puts out."""
    return get_block(unet, name).resnets[-1].out_channels


def tap(unet: nn.Module, name: str, sample: torch.Tensor, timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor, early_exit: bool = True) -> torch.Tensor:
    """The feature map block `name` produces for this input.

    Args:
        unet: a diffusers `UNet2DConditionModel` (LoRA-wrapped ones too).
        name: a block name from `block_names(unet)`.
        sample: (B, C, h, w) noisy latents z_t.
        timestep: scalar or (B,) timesteps t.
        encoder_hidden_states: (B, L, D) text-encoder states the U-Net attends to.
        early_exit: stop the forward pass after the block (default); False runs it to the end.

    Returns:
        (B, d, h', w') the block's output hidden states (a down block's first output; its
        skip connections are not returned).
    """
    features, _ = _run(unet, name, sample, timestep, encoder_hidden_states, early_exit)
    return features


def tap_with_output(unet: nn.Module, name: str, sample: torch.Tensor,
                    timestep: torch.Tensor | int, encoder_hidden_states: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Block `name`'s feature map and the U-Net's own output from one full forward pass.

    Returns:
        features: (B, d, h', w') as `tap` returns them.
        output: (B, C, h, w) the U-Net's prediction (noise, for an epsilon model).
    """
    features, output = _run(unet, name, sample, timestep, encoder_hidden_states, False)
    return features, output


def _run(unet, name, sample, timestep, encoder_hidden_states, early_exit):
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs, output) -> None:
        store["features"] = output[0] if isinstance(output, tuple) else output
        if early_exit:
            raise _EarlyExit

    handle = get_block(unet, name).register_forward_hook(hook)
    output = None
    try:
        output = unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                      return_dict=False)[0]
    except _EarlyExit:
        pass
    finally:
        handle.remove()
    return store["features"], output
