"""Self-correction (eq. 9 of arXiv 2403.04321): z_t <- z_t + eta * grad_z s(z_t, y).

`MatchScore` is the DPT matching score s(z_t, y) made differentiable in the latent: the U-Net
runs only up to the adapter's block (the early-exit tap) and the adapter's matching queries
are compared with text(y). `SelfCorrection` wraps a sampler's `model_fn` the way
k-diffusion's `cond_fn` wraps a denoiser: it moves the model's input along the score's
gradient before the noise prediction. Two ways to use the moved latent:

- "carry" (the default here): the sampler continues from the corrected latent, so the
  scheduler steps from the point at which the noise was predicted;
- "predict-only" (the authors' released sampler): only the noise prediction sees the
  corrected latent; the scheduler steps from the uncorrected one.

`docs/dpt-shapes.md` measures one against the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..model.features import tap
from ..model.losses import matching_scores

if TYPE_CHECKING:
    from ..model.config import DPTConfig
    from ..model.heads import DPTHeads
    from .sampling import ModelFn

MODES = ("carry", "predict-only")
# timesteps self-correction applies on by default, measured on the Shapes model
# (docs/dpt-shapes.md): above t = 700 the matching score is at chance; below t = 300 its
# gradient recolours finished objects instead of fixing the layout
DEFAULT_T_RANGE = (300.0, 700.0)


class MatchScore:
    """s(z_t, y) of a DPT model for B latents against their own B texts; differentiable.

    Args:
        unet: the U-Net the DPT model reads (LoRA fused or attached).
        heads: the DPT heads (`DPTHeads`, or `OfficialHeads` for the authors' adapter).
        config: the DPT config (its block).
        states: the text states the U-Net sees while the score reads it: (1, L, D) of the
            empty prompt for a model with `condition` "empty", (B, L, D) of the B prompts
            for one with "caption" (the authors' models).
        early_exit: stop the U-Net after the adapter's block (default); False runs it whole,
            as the authors' sampler does (for cost comparisons).
    """

    def __init__(self, unet: nn.Module, heads: DPTHeads, config: DPTConfig,
                 states: torch.Tensor, early_exit: bool = True):
        self.unet, self.heads, self.block = unet, heads, config.block
        self.states, self.early_exit = states, early_exit

    def __call__(self, x: torch.Tensor, t: torch.Tensor,
                 text_embeds: torch.Tensor) -> torch.Tensor:
        """Scores (B,) of latents x (B, C, h, w) at timestep t against text_embeds (B, D)."""
        B = x.shape[0]
        features = tap(self.unet, self.block, x, t, self.states.expand(B, -1, -1),
                       early_exit=self.early_exit)
        match = self.heads(features, t.reshape(-1).expand(B))["match_embeds"]  # (B, M, D)
        return torch.diagonal(matching_scores(match, text_embeds.to(match.dtype)))  # (B,)


class SelfCorrection:
    """A `model_fn` that moves its input by eta * grad s(x, y) before predicting noise.

    Args:
        model_fn: the noise prediction to wrap (x, t, context) -> eps.
        score: s(x, y), e.g. a `MatchScore`.
        text_embeds: (B, D) text(y) of the batch's B prompts.
        eta: step size; 0 disables the correction.
        t_range: (low, high) timesteps on which to correct, inclusive; others pass through.
        mode: "carry" or "predict-only" (see the module docstring).

    A call takes the sampler's B latents (2B with classifier-free guidance: [uncond, cond]
    copies of the same B) and returns eps; in "carry" mode, on a corrected step, it returns
    (eps, delta) with the (B, C, h, w) correction it applied, for the sampler to keep.
    """

    def __init__(self, model_fn: ModelFn, score: MatchScore, text_embeds: torch.Tensor,
                 eta: float, t_range: tuple[float, float] = DEFAULT_T_RANGE,
                 mode: str = "carry"):
        if mode not in MODES:
            raise ValueError(f"self-correction mode must be one of {', '.join(MODES)}, "
                             f"got {mode!r}")
        self.model_fn, self.score, self.text_embeds = model_fn, score, text_embeds
        self.eta, self.t_range, self.mode = float(eta), t_range, mode
        self.scores: list[torch.Tensor] = []  # s(x, y) at each corrected step, (B,) each

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
        low, high = self.t_range
        if self.eta == 0 or not low <= float(t) <= high:
            return self.model_fn(x, t, context)
        B = self.text_embeds.shape[0]
        delta = self.eta * self.gradient(x[-B:], t)  # (B, C, h, w): one per image
        eps = self.model_fn(x + delta.repeat(x.shape[0] // B, 1, 1, 1), t, context)
        return (eps, delta) if self.mode == "carry" else eps

    def gradient(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x of s(x, y) summed over the batch (each image's own gradient), (B, C, h, w)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            s = self.score(x, t, self.text_embeds)  # (B,)
            (grad,) = torch.autograd.grad(s.sum(), x)
        self.scores.append(s.detach())
        return grad
