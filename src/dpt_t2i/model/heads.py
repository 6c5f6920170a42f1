"""The DPT heads (adapter and matching temperature), the features they see and the
referring-expression choice; the matching score that reads them is `score.MatchScore`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import AdapterConfig, build_adapter
from .config import DPTConfig
from .features import tap
from .losses import MatchingLoss


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
                  timesteps: torch.Tensor, states: torch.Tensor,
                  early_exit: bool = True) -> torch.Tensor:
    """F_t (B, d, h', w') of the configured block for noisy latents (B, C, h, w) at timesteps
    under text states (B, L, D); `early_exit` False runs the U-Net to its end."""
    return tap(unet, config.block, latents, timesteps, states, early_exit=early_exit)


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
