"""The HN-DiffusionITM baseline's objective (`dpt tune-hn-itm`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .settings import TrainSettings


class HNITMObjective(nn.Module):
    """HN-DiffusionITM (Krojer et al., NeurIPS 2023): LoRA learns to denoise well under the
    caption and badly under a hard negative of it.

    loss = e(y) - w * min(e(y_neg), c * e(y)), where e(.) is the denoising MSE of the same
    noised latent and noise under that text, and the clip at c times the (detached) positive
    error keeps the negative term from growing without bound (the authors' "hinged" loss).
    """

    def __init__(self, unet: nn.Module, settings: TrainSettings):
        super().__init__()
        self.unet, self.weight, self.clip = unet, settings.hn_weight, settings.hn_clip

    def forward(self, noisy: Tensor, t: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        states = torch.cat([inputs["caption_states"], inputs["negative_tokens"][:, 0]])
        eps = self.unet(torch.cat([noisy, noisy]), torch.cat([t, t]), states).sample.float()
        pos, neg = eps.chunk(2)
        mse = F.mse_loss(pos, inputs["target"])
        mse_neg = F.mse_loss(neg, inputs["target"])
        loss = mse - self.weight * torch.clamp(mse_neg, max=self.clip * float(mse.detach()))
        return {"mse": mse, "mse_neg": mse_neg, "loss": loss}
