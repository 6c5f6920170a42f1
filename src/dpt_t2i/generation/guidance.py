"""Self-correction (eq. 9 of arXiv 2403.04321): z_t <- z_t + eta * grad_z s(z_t, y).

`SelfCorrection` wraps a sampler's `model_fn` the way k-diffusion's `cond_fn` wraps a
denoiser: it moves the model's input along the gradient of a score s(x, y) (the DPT
matching score `model.score.MatchScore`, or any callable of the same shape) before the noise
prediction. Two ways to use the moved latent:

- "carry" (the default here): the sampler continues from the corrected latent, so the
  scheduler steps from the point at which the noise was predicted;
- "predict-only" (the authors' released sampler): only the noise prediction sees the
  corrected latent; the scheduler steps from the uncorrected one.

`docs/dpt-shapes.md` measures one against the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from .sampling import ModelFn

MODES = ("carry", "predict-only")
# timesteps self-correction applies on by default, measured on the Shapes model
# (docs/dpt-shapes.md): above t = 700 the matching score is at chance; below t = 300 its
# gradient recolours finished objects instead of fixing the layout
DEFAULT_T_RANGE = (300.0, 700.0)

# s(x, t, texts) -> (B,): latents x (B, C, h, w), timestep t, and what the score reads of the
# batch's B prompts (`MatchScore.texts(prompts)` for the DPT score); len(texts) == B
Score = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class SelfCorrection:
    """A `model_fn` that moves its input by eta * grad s(x, y) before predicting noise.

    Args:
        model_fn: the noise prediction to wrap (x, t, context) -> eps.
        score: s(x, t, texts) -> (B,), e.g. a `model.score.MatchScore`.
        texts: what the score reads of the batch's B prompts (for a `MatchScore`, its
            `texts(prompts)`); its len() is B.
        eta: step size; 0 disables the correction.
        t_range: (low, high) timesteps on which to correct, inclusive; others pass through.
        mode: "carry" or "predict-only" (see the module docstring).

    A call takes the sampler's B latents (2B with classifier-free guidance: [uncond, cond]
    copies of the same B) and returns eps; in "carry" mode, on a corrected step, it returns
    (eps, delta) with the (B, C, h, w) correction it applied, for the sampler to keep.
    """

    def __init__(self, model_fn: ModelFn, score: Score, texts: Any, eta: float,
                 t_range: tuple[float, float] = DEFAULT_T_RANGE, mode: str = "carry"):
        if mode not in MODES:
            raise ValueError(f"self-correction mode must be one of {', '.join(MODES)}, "
                             f"got {mode!r}")
        self.model_fn, self.score, self.texts = model_fn, score, texts
        self.eta, self.t_range, self.mode = float(eta), t_range, mode
        self.scores: list[torch.Tensor] = []  # s(x, y) at each corrected step, (B,) each

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
        low, high = self.t_range
        if self.eta == 0 or not low <= float(t) <= high:
            return self.model_fn(x, t, context)
        B = len(self.texts)
        delta = self.eta * self.gradient(x[-B:], t)  # (B, C, h, w): one per image
        eps = self.model_fn(x + delta.repeat(x.shape[0] // B, 1, 1, 1), t, context)
        return (eps, delta) if self.mode == "carry" else eps

    def gradient(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x of s(x, y) summed over the batch (each image's own gradient), (B, C, h, w)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            s = self.score(x, t, self.texts)  # (B,)
            (grad,) = torch.autograd.grad(s.sum(), x)
        self.scores.append(s.detach())
        return grad
