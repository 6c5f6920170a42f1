"""Self-correction (eq. 9 of arXiv 2403.04321): z_t <- z_t + eta * grad_z s(z_t, y).

`SelfCorrection` wraps a sampler's `model_fn` the way k-diffusion's `cond_fn` wraps a
denoiser: it moves the model's input along the gradient of a score s(x, y) (the DPT
matching score `model.score.MatchScore`, or any callable of the same shape). Four modes:

- "carry": the score is read on the noisy latent z_t, the whole latent
  (both classifier-free guidance copies) moves, and the sampler continues from the corrected
  latent, so the scheduler steps from the point at which the noise was predicted;
- "predict-only" (the authors' released sampler, `txt2img.py`): the gradient moves the
  conditional copy only; the unconditional prediction stays at the uncorrected latent, and
  the scheduler steps from the uncorrected one;
- "x0": the score is read on the sampler's own prediction of the clean latent,
  x0 = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) from the conditional prediction, noised
  back to READ_T with that same eps (where the score sees well: ITM is near chance at
  t = 700 on z_t itself), and the correction moves that x0 estimate. No second noise
  prediction: the sampler's one pass at z_t serves the read and the step (the latent moves
  by sqrt(abar_t) * eta * grad, so the step's x0 moves by eta * grad with eps unchanged).
- "shared" (the default of `dpt generate`): the score is read on the guidance's own pass:
  the copy whose text condition the score's features are made under (the prompt for a "caption"/"each" DPT model, the empty
  prompt for an "empty" one) runs once, whole, with gradients, and gives both its noise
  prediction and s(z_t, y); the gradient flows back only through the U-Net's part below the
  adapter's block. The latent moves by eta * grad with the noise prediction of the unmoved
  latent (as in "x0"): one noise prediction a step, no extra forward pass. Needs a score
  with `with_output` (`model.score.MatchScore`).

The step size eta is in one of two units (`unit`):
- "raw": delta = eta * grad s (the paper's eq. 9; the right eta depends on the model);
- "noise": delta = eta * sqrt(1 - abar_t) * grad / rms(grad), per image: eta is the move's
  size as a fraction of the noise in z_t, whatever the model's gradient scale.

`docs/dpt-shapes.md` measures the modes and units against each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from .sampling import ModelFn

MODES = ("carry", "predict-only", "x0", "shared")
UNITS = ("raw", "noise")
READ_T = 100  # "x0" mode: the timestep the clean estimate is read at (the score's best)
# The self-correction `dpt generate` and the report run unless told otherwise, measured on
# the Shapes model's report seeds (docs/dpt-shapes.md, "Self-correction"): mode "shared" at
# 0.1 of the noise level, on 400 <= t <= 600 (5 of 25 DDIM steps), gains +0.064 [+0.027,
# +0.102] over the base model at 1.23x DPT's cost; 300..700 gains +0.071 at 1.5x. Above
# t = 700 the matching score is at chance; below t = 300 its gradient recolours finished
# objects instead of fixing the layout.
DEFAULT_MODE = "shared"
DEFAULT_UNIT = "noise"
DEFAULT_ETA = 0.1  # in DEFAULT_UNIT: a tenth of the noise in z_t
DEFAULT_T_RANGE = (400.0, 600.0)
MAX_NOISE_ETA = 1.0  # unit "noise": a larger step moves z_t further than all of its noise

# s(x, t, texts) -> (B,): latents x (B, C, h, w), timestep t, and what the score reads of the
# batch's B prompts (`MatchScore.texts(prompts)` for the DPT score); len(texts) == B
Score = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def check_mode(mode: str, unit: str) -> None:
    """ValueError for a mode or unit that is not one of MODES / UNITS."""
    if mode not in MODES:
        raise ValueError(f"self-correction mode must be one of {', '.join(MODES)}, "
                         f"got {mode!r}")
    if unit not in UNITS:
        raise ValueError(f"self-correction unit must be one of {', '.join(UNITS)}, "
                         f"got {unit!r}")


class SelfCorrection:
    """A `model_fn` that moves its input by eta * grad s(x, y) before predicting noise.

    Args:
        model_fn: the noise prediction to wrap (x, t, context) -> eps.
        score: s(x, t, texts) -> (B,), e.g. a `model.score.MatchScore`.
        texts: what the score reads of the batch's B prompts (for a `MatchScore`, its
            `texts(prompts)`); its len() is B.
        eta: step size (in `unit`); 0 disables the correction.
        t_range: (low, high) timesteps on which to correct, inclusive; others pass through.
        mode: "carry", "predict-only", "x0" or "shared" (see the module docstring).
        unit: "raw" or "noise" (see the module docstring).
        alphas_cumprod: (T,) abar_t of the model's schedule (`latents.Noiser.alphas_cumprod`);
            needed by mode "x0" and unit "noise".

    A call takes the sampler's B latents (2B with classifier-free guidance: [uncond, cond]
    copies of the same B, in model-input units: scale_model_input(z_t) =
    sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for every scheduler the sampler offers) and returns
    eps; in "carry", "x0" and "shared" modes, on a corrected step, it returns (eps, delta)
    with the (B, C, h, w) correction it applied, for the sampler to keep.
    """

    def __init__(self, model_fn: ModelFn, score: Score, texts: Any, eta: float,
                 t_range: tuple[float, float] = DEFAULT_T_RANGE, mode: str = "carry",
                 unit: str = "raw", alphas_cumprod: torch.Tensor | None = None):
        check_mode(mode, unit)
        if alphas_cumprod is None and (mode == "x0" or unit == "noise"):
            raise ValueError(f"self-correction mode {mode!r} with unit {unit!r} needs the "
                             "model's alphas_cumprod")
        if mode == "shared" and not hasattr(score, "with_output"):
            raise ValueError("self-correction mode 'shared' needs a score that reads the "
                             "sampler's own pass (a DPT MatchScore)")
        self.model_fn, self.score, self.texts = model_fn, score, texts
        self.eta, self.t_range, self.mode, self.unit = float(eta), t_range, mode, unit
        self.alphas_cumprod = alphas_cumprod
        self.scores: list[torch.Tensor] = []  # s(x, y) at each corrected step, (B,) each

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
        low, high = self.t_range
        if self.eta == 0 or not low <= float(t) <= high:
            return self.model_fn(x, t, context)
        B = len(self.texts)
        if self.mode == "shared":
            return self._shared(x, t, context)
        if self.mode == "x0":
            eps = self.model_fn(x, t, context)
            return eps, self._step(self.x0_gradient(x[-B:], eps[-B:], t), t)
        delta = self._step(self.gradient(x[-B:], t), t)  # (B, C, h, w): one per image
        if self.mode == "carry":
            return self.model_fn(x + delta.repeat(x.shape[0] // B, 1, 1, 1), t, context), delta
        moved = x.clone()  # predict-only: the conditional copy moves, the unconditional not
        moved[-B:] += delta
        return self.model_fn(moved, t, context)

    def _shared(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
        """(eps, delta) with the score read on the sampler's pass of one copy of the latents."""
        B = len(self.texts)
        copies = x.shape[0] // B  # 2 with classifier-free guidance: [uncond, cond]
        reads_prompt = self.score.config.reads_text  # a MatchScore: it has with_output
        k = copies - 1 if reads_prompt else 0  # the copy whose condition the score reads
        rows = slice(k * B, (k + 1) * B)
        if not reads_prompt and copies == 1:  # no unconditional pass to share
            grad = self.gradient(x, t)
            return self.model_fn(x, t, context), self._step(grad, t)
        with torch.enable_grad():
            z = x[rows].detach().requires_grad_(True)
            s, eps_k = self.score.with_output(z, t, self.texts, context[rows])
            (grad,) = torch.autograd.grad(s.sum(), z)
        self.scores.append(s.detach())
        eps = [eps_k.detach().to(x.dtype) if i == k else
               self.model_fn(x[i * B:(i + 1) * B], t, context[i * B:(i + 1) * B])
               for i in range(copies)]
        return torch.cat(eps), self._step(grad, t)

    def _abar(self, t) -> torch.Tensor:
        return self.alphas_cumprod[int(t)]

    def _step(self, grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """delta of a gradient (B, C, h, w) in the configured unit."""
        if self.unit == "raw":
            return self.eta * grad
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
        noise = (1 - self._abar(t)).sqrt().to(grad)
        return self.eta * noise * grad / rms.view(-1, *[1] * (grad.ndim - 1))

    def x0_gradient(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """sqrt(abar_t) grad_x0 s(z_read(x0), y): the latent move that moves the clean
        estimate x0 of x (B, C, h, w) by grad, eps (B, C, h, w) held fixed."""
        abar = self._abar(t).to(x)
        abar_read = self.alphas_cumprod[READ_T].to(x)
        with torch.enable_grad():
            x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).detach().requires_grad_(True)
            read = abar_read.sqrt() * x0 + (1 - abar_read).sqrt() * eps.detach()
            s = self.score(read, torch.tensor(READ_T, device=x.device), self.texts)
            (grad,) = torch.autograd.grad(s.sum(), x0)
        self.scores.append(s.detach())
        return abar.sqrt() * grad

    def gradient(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x of s(x, y) summed over the batch (each image's own gradient), (B, C, h, w)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            s = self.score(x, t, self.texts)  # (B,)
            (grad,) = torch.autograd.grad(s.sum(), x)
        self.scores.append(s.detach())
        return grad
