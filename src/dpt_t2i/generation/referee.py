"""Referee generation: an image made by optimising a latent until a discriminative model
judges it a match ("Referee Can Play", arXiv 2402.16305), with score distillation from the
diffusion model keeping it an image.

One iteration reads top to bottom:
1. referee (from iteration `referee_start`): decode the latent, draw `views` differentiable
   augmentations of the image (affine, perspective, colour jitter, erasing; filled with grey
   or the image's border colour, `fill`), score each against the prompt, keep the `top_k`
   lowest (the hardest views) and ascend their mean; without augmentation the latent is
   free to become an adversarial example of the referee;
2. SDS: noise the latent to a t drawn in [t_min, t_max] (`t_schedule` "random") or stepped
   from t_max down to t_min over the iterations ("anneal"), ask the U-Net (classifier-free
   guidance `guidance`) for the noise, and take w(t) (eps_hat - eps) as the gradient that
   pulls the latent toward the model's images, w(t) = 1 - alpha_bar(t) (`sds_time_weight`
   "noise-variance"), 1 ("constant", as the authors' code has it) or
   sqrt((1 - alpha_bar(t)) / alpha_bar(t)) ("x0": a step toward the denoised estimate);
3. the SDS term is weighted as a mean-reduced loss would weight it: `sds_weight` (cosine to
   `sds_weight_end`) over the latent's size; the referee's gradient is rescaled to that
   term's norm (per image) times `referee_weight`, and the two are summed; plain SGD with a
   cosine learning rate (`lr` to `lr_end`) steps;
4. an exponential moving average of the latent (decay `ema_decay`) starts at `ema_start`;
   every `ema_restart` iterations after it the latent restarts from the average.

Scorers take decoded images (B, 3, H, W) in [-1, 1] and B prompts and return (B,) scores,
so any image-text matcher plugs in (`clip_scorer`, `dpt_scorer`, and BLIP-2's and CLIP's from
local folders in `vlm_scorers.py`).

The latent starts from seeded noise (`init="noise"`, the reference code) or from the model's
own sample for that noise (`init="sample"`: `dpt generate`'s DDIM image, which the referee
then corrects). `RefereeSettings()` holds the reference code's defaults; `SHAPES_SETTINGS`
and `SHAPES_NOISE_SETTINGS` the ones measured best on the Shapes model from its sample and
from noise (docs/dpt-shapes.md, "Referee generation": from noise the reference code's
random-t score distillation gives no clean shapes there, the annealed x0-weighted one does);
`PAPER_SETTINGS` those of the authors' code for a BLIP-2 referee on SD 1.5 (docs/referees.md
lists what of that code is not reproduced).

`dpt referee` runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io.clip import clip_image_embeds, clip_text_embeds
from ..model.latents import Noiser, decode_latents, encode_latents
from ..model.score import MatchScore, MatchTexts
from .sampling import encode_prompts, image_generators, initial_latents, make_scheduler, sample

Scorer = Callable[[Tensor, list[str]], Tensor]  # (B, 3, H, W) in [-1, 1], B prompts -> (B,)


INITS = ("noise", "sample")
# w(t) = 1 - alpha_bar(t); 1; sqrt((1 - alpha_bar(t)) / alpha_bar(t)), which makes the SDS
# gradient the latent minus the model's denoised estimate of it
SDS_TIME_WEIGHTS = ("noise-variance", "constant", "x0")
T_SCHEDULES = ("random", "anneal")  # t drawn in [t_min, t_max], or stepped from t_max to t_min
FILLS = ("grey", "border")  # what a view shows outside the image and in an erased rectangle


@dataclass
class RefereeSettings:
    """The reference code's defaults (`SHAPES_SETTINGS` for the Shapes model).

    `sds_weight` weighs a mean-reduced SDS loss, so the step each latent element takes shrinks
    with the latent's size: the reference weight of 800 was set for SD's 64x64x4 latents;
    Shapes' 8x8x4 latents take 64 times larger steps at the same weight.
    """

    init: str = "noise"
    init_steps: int = 25
    init_guidance: float = 7.5
    iterations: int = 160
    lr: float = 1.0
    lr_end: float = 0.5
    views: int = 10
    top_k: int = 5
    ema_decay: float = 0.95
    ema_start: int = 40
    ema_restart: int = 60
    sds_weight: float = 800.0
    sds_weight_end: float = 400.0
    referee_weight: float = 1.0
    referee_start: int = 0  # iterations before it take the SDS step alone
    guidance: float = 30.0
    t_min: int = 50
    t_max: int = 950
    augment: bool = True
    sds: bool = True
    ema: bool = True
    sds_time_weight: str = "noise-variance"  # w(t) of the SDS gradient (SDS_TIME_WEIGHTS)
    fill: str = "grey"  # the views' fill (FILLS): grey, or the image's border colour
    t_schedule: str = "random"  # the SDS timesteps (T_SCHEDULES)

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.sds_time_weight not in SDS_TIME_WEIGHTS:
            raise ValueError(f"sds_time_weight must be one of {', '.join(SDS_TIME_WEIGHTS)}, "
                             f"got {self.sds_time_weight!r}")
        if self.t_schedule not in T_SCHEDULES:
            raise ValueError(f"t_schedule must be one of {', '.join(T_SCHEDULES)}, got "
                             f"{self.t_schedule!r}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        if self.init_steps < 1:
            raise ValueError(f"init_steps must be >= 1, got {self.init_steps}")
        if self.iterations < 1 or self.views < 1 or not 1 <= self.top_k <= self.views:
            raise ValueError(f"need iterations >= 1 and 1 <= top_k <= views, got "
                             f"{self.iterations}, {self.top_k}, {self.views}")
        if not 0 <= self.referee_start < self.iterations:
            raise ValueError(f"referee_start must be in [0, iterations), got "
                             f"{self.referee_start} of {self.iterations}")
        if not 0 <= self.t_min < self.t_max <= 1000:
            raise ValueError(f"need 0 <= t_min < t_max <= 1000, got {self.t_min}, {self.t_max}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


# measured best on the Shapes model (docs/dpt-shapes.md, "Referee generation"): correct the
# model's own sample with small, low-noise SDS steps rather than distil from noise
SHAPES_SETTINGS = RefereeSettings(init="sample", iterations=40, ema_start=10, ema_restart=15,
                                  sds_weight=12.5, sds_weight_end=6.25, guidance=7.5,
                                  t_max=500, fill="border")

# from noise on the Shapes model (docs/dpt-shapes.md, "Referee from noise"): score
# distillation annealed from t = 950 to 50 with the x0 weighting is a sampler of its own
# (each step moves the latent 80 / 256 of the way, times the learning rate, toward the
# model's denoised estimate), which the referee steers from the first iteration
SHAPES_NOISE_SETTINGS = RefereeSettings(init="noise", iterations=160, t_schedule="anneal",
                                        sds_time_weight="x0", sds_weight=80.0,
                                        sds_weight_end=80.0, guidance=7.5, ema=False,
                                        fill="border")

# the authors' code (github.com/Pepper-lll/VLMinv, generate.py's defaults: a BLIP-2 referee
# on SD 1.5 at 512 px), in this module's terms. Their SDS loss is sd_weight x sum(2 (eps_hat -
# eps) z) / (h w): w(t) = 2 for every t ("constant" here), summed over the 4 latent channels
# where this module averages them, so their 800 -> 400 is 800 x 2 x 4 = 6400 -> 3200 here.
# Their top-k keeps aug_topk = 10 of cutn = 10 views (all), and the referee's gradient takes
# blip_weight = 2 times the SDS norm. The rest matches RefereeSettings(): 160 iterations from
# noise, SGD at 1 -> 0.5, guidance 30, t in [50, 950], an EMA of decay 0.95 with restarts.
PAPER_SETTINGS = RefereeSettings(top_k=10, referee_weight=2.0, sds_weight=6400.0,
                                 sds_weight_end=3200.0, sds_time_weight="constant")


def cosine(step: int, steps: int, start: float, end: float) -> float:
    """start at step 0, end at step steps - 1, a half cosine between."""
    if steps <= 1:
        return start
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / (steps - 1)))


def border_colour(images: Tensor) -> Tensor:
    """(B, 3, 1, 1) the per-channel median of each image's outermost rows and columns: the
    background of a scene on a flat background (the Shapes world's), no graph."""
    x = images.detach()
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], -1)
    return border.median(-1).values[..., None, None]


def linear(step: int, steps: int, start: float, end: float) -> float:
    """start at step 0, end at step steps - 1, linear between."""
    if steps <= 1:
        return start
    return start + (end - start) * step / (steps - 1)


def augment(images: Tensor, views: int, generator: torch.Generator,
            fill: str = "grey") -> Tensor:
    """(views * B, 3, H, W) differentiable random views of images (B, 3, H, W) in [-1, 1]:
    view v of image b is row v * B + b. Each view gets a random affine map (rotation up to
    15 degrees, scale 0.8-1.2, shift up to 10%) composed with a random perspective (corners
    moved up to 10%), colour jitter (brightness, contrast, saturation) and, with probability
    1/2, an erased rectangle (2-15% of the image). Outside the image and in the rectangle the
    view shows grey (`fill` "grey") or the image's border colour ("border", `border_colour`:
    on a flat background the view stays a scene of the world)."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    b, _, h, w = images.shape
    n = views * b
    x = images.repeat(views, 1, 1, 1)
    background = (border_colour(images) if fill == "border" else
                  torch.zeros(b, 3, 1, 1, dtype=images.dtype)).to(x).repeat(views, 1, 1, 1)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    angle = uniform(-math.pi / 12, math.pi / 12, n)
    scale = uniform(0.8, 1.2, n)
    shift = uniform(-0.1, 0.1, n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    affine = torch.zeros(n, 3, 3)
    affine[:, 0, 0], affine[:, 0, 1], affine[:, 0, 2] = cos, -sin, shift[:, 0]
    affine[:, 1, 0], affine[:, 1, 1], affine[:, 1, 2] = sin, cos, shift[:, 1]
    affine[:, 2, 2] = 1
    perspective = torch.eye(3).repeat(n, 1, 1)
    perspective[:, 2, :2] = uniform(-0.1, 0.1, n, 2)
    matrix = (affine @ perspective).to(x)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3).to(x)
    mapped = points @ matrix.transpose(1, 2)
    grid = (mapped[..., :2] / mapped[..., 2:].clamp(min=1e-3)).view(n, h, w, 2)
    # the fill outside the image: sample x - fill with zero padding, then add the fill back
    x = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros",
                      align_corners=True) + background
    mean = x.mean((1, 2, 3), keepdim=True)
    contrast, brightness = uniform(0.8, 1.2, n, 1, 1, 1), uniform(-0.2, 0.2, n, 1, 1, 1)
    x = (x - mean) * contrast.to(x) + mean + brightness.to(x)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * uniform(0.7, 1.3, n, 1, 1, 1).to(x)
    keep = torch.ones(n, 1, h, w)
    area = uniform(0.02, 0.15, n)
    erase = torch.rand(n, generator=generator) < 0.5
    for i in torch.nonzero(erase).flatten().tolist():
        eh = max(1, int(round(h * math.sqrt(float(area[i])))))
        ew = max(1, int(round(w * math.sqrt(float(area[i])))))
        top = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
        keep[i, :, top:top + eh, left:left + ew] = 0
    keep = keep.to(x)
    return (x * keep + background * (1 - keep)).clamp(-1, 1)


def referee_loss(scorer: Scorer, images: Tensor, prompts: list[str], settings: RefereeSettings,
                 generator: torch.Generator) -> Tensor:
    """(B,) minus the mean score of each image's `top_k` hardest views (or of the image)."""
    if not settings.augment:
        return -scorer(images, prompts)
    b = len(prompts)
    views = augment(images, settings.views, generator, settings.fill)
    scores = scorer(views, prompts * settings.views).view(settings.views, b)
    hardest = scores.topk(settings.top_k, dim=0, largest=False).values
    return -hardest.mean(0)


def sds_gradient(unet, noiser: Noiser, latents: Tensor, cond: Tensor, uncond: Tensor, t: Tensor,
                 guidance: float, generator: torch.Generator,
                 time_weight: str = "noise-variance") -> Tensor:
    """The score-distillation gradient w(t) (eps_hat(z_t) - eps) for latents (B, C, h, w),
    with classifier-free guidance and w(t) = 1 - alpha_bar(t) (`time_weight`
    "noise-variance"), 1 ("constant") or sqrt((1 - alpha_bar(t)) / alpha_bar(t)) ("x0": the
    gradient is then z - x0_hat, the latent minus the model's denoised estimate); no graph.
    A v-prediction U-Net's output is turned into its noise estimate,
    sqrt(abar_t) v + sqrt(1 - abar_t) z_t."""
    kind = noiser.prediction_type
    if kind not in ("epsilon", "v_prediction"):
        raise ValueError(f"score distillation needs a model that predicts the noise or the "
                         f"velocity; this one predicts {kind!r}")
    noise = noiser.noise_like(latents, generator)
    abar = noiser.alphas_cumprod.to(latents.device)[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        noisy = noiser.add(latents.detach(), t, noise)
        out = unet(torch.cat([noisy, noisy]).to(unet.dtype), torch.cat([t, t]),
                   torch.cat([uncond, cond]).to(unet.dtype)).sample.float()
    out_u, out_c = out.chunk(2)
    if kind == "v_prediction":
        out_u, out_c = (abar.sqrt() * v + (1 - abar).sqrt() * noisy.float()
                        for v in (out_u, out_c))
    eps_hat = out_u + guidance * (out_c - out_u)
    if time_weight == "constant":
        return eps_hat - noise
    if time_weight == "x0":
        return ((1 - abar) / abar).sqrt() * (eps_hat - noise)
    return (1 - abar) * (eps_hat - noise)


def sds_timesteps(settings: RefereeSettings, i: int, n: int, generator: torch.Generator
                  ) -> Tensor:
    """(n,) SDS timesteps of iteration i: drawn in [t_min, t_max) (`t_schedule` "random"), or
    one t stepped linearly from t_max at the first iteration to t_min at the last ("anneal":
    coarse layout first, detail last, as a sampler goes)."""
    if settings.t_schedule == "random":
        return torch.randint(settings.t_min, settings.t_max, (n,), generator=generator)
    t = round(linear(i, settings.iterations, settings.t_max, settings.t_min))
    return torch.full((n,), min(t, 999), dtype=torch.long)


def optimise(decode: Callable[[Tensor], Tensor], scorer: Scorer, prompts: list[str],
             latents: Tensor, settings: RefereeSettings, generator: torch.Generator,
             sds: Callable[[Tensor, int], Tensor] | None = None,
             history: list[dict] | None = None,
             progress: Callable[[int], None] | None = None) -> Tensor:
    """The optimised latents (the EMA when it is on) for B prompts from start latents.

    Args:
        decode: latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1], differentiable.
        scorer: the referee.
        sds: (latents, iteration) -> SDS gradient (B, C, h, w); None (or settings.sds off)
            optimises the referee alone.
        history: when given, gets one record per iteration (mean score, norms).
        progress: called with the number of iterations done after each one.
    """
    z = latents.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([z], lr=settings.lr)
    ema = None
    for i in range(settings.iterations):
        for group in optimizer.param_groups:
            group["lr"] = cosine(i, settings.iterations, settings.lr, settings.lr_end)
        record: dict = {"iteration": i}
        grad = torch.zeros_like(z)
        if i >= settings.referee_start:
            loss = referee_loss(scorer, decode(z), prompts, settings, generator)
            (grad,) = torch.autograd.grad(loss.sum(), z)
            record["score"] = -float(loss.mean().detach())
        if settings.sds and sds is not None:
            weight = cosine(i, settings.iterations, settings.sds_weight, settings.sds_weight_end)
            g_sds = weight * sds(z.detach(), i) / z[0].numel()
            norm_sds = g_sds.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            norm_ref = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1).clamp(min=1e-12)
            grad = settings.referee_weight * grad * (norm_sds / norm_ref) + g_sds
            record["sds_norm"] = float(norm_sds.mean())
        z.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if settings.ema and i >= settings.ema_start:
            with torch.no_grad():
                ema = z.detach().clone() if ema is None else \
                    settings.ema_decay * ema + (1 - settings.ema_decay) * z.detach()
                since = i - settings.ema_start
                if settings.ema_restart > 0 and since > 0 and since % settings.ema_restart == 0:
                    z.copy_(ema)
                    record["restart"] = True
        if history is not None:
            history.append(record)
        if progress is not None:
            progress(i + 1)
    return (ema if ema is not None else z).detach()


def clip_scorer(model, tokenizer) -> Scorer:
    """A CLIP model's cosine similarity of image and prompt (the Shapes CLIP reads images in
    [-1, 1] at the world's size)."""
    cache: dict[str, Tensor] = {}

    def score(images: Tensor, prompts: list[str]) -> Tensor:
        missing = sorted(set(prompts) - set(cache))
        if missing:
            with torch.no_grad():
                cache.update(zip(missing, clip_text_embeds(model, tokenizer, missing)))
        text = torch.stack([cache[p] for p in prompts])
        return (clip_image_embeds(model, images) * text).sum(-1)

    return score


def dpt_scorer(bundle, heads, config, timestep: int = 100, seed: int = 0) -> Scorer:
    """DPT's matching score s(z_t, y) of images: encoded by the VAE (differentiably), noised to
    `timestep` with noise drawn from one generator seeded here (each call continues its
    stream), read by `MatchScore`."""
    match = MatchScore(bundle, heads, config)
    noiser = Noiser(bundle.scheduler_config)
    generator = torch.Generator().manual_seed(seed)
    cache: dict[str, MatchTexts] = {}  # prompt -> its row of text(y) and U-Net states

    def score(images: Tensor, prompts: list[str]) -> Tensor:
        missing = sorted(set(prompts) - set(cache))
        if missing:
            with torch.no_grad():
                texts = match.texts(missing)
            cache.update({p: texts[i:i + 1] for i, p in enumerate(missing)})
        texts = MatchTexts.cat([cache[p] for p in prompts])
        noisy = noiser(encode_latents(bundle.vae, images), timestep, generator)
        return match(noisy, timestep, texts)

    return score


def generate(bundle, scorer: Scorer, prompts: list[str], seeds: list[int],
             settings: RefereeSettings, progress: Callable[[int], None] | None = None) -> Tensor:
    """The referee's latents (B, C, h, w) for B prompts: image k starts from the latent noise of
    seeds[k] (as `dpt generate` draws it; with `init="sample"`, from the DDIM sample of that
    noise, `init_steps` steps at `init_guidance`) and optimises with its SDS and augmentation
    noise seeded by seeds[0], all drawn on the CPU (the same images on any device up to
    rounding). `progress` gets the number of iterations done (the sampling of
    the start counts as none)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds")
    for module in (bundle.unet, bundle.vae, bundle.text_encoder):
        module.requires_grad_(False)
    noiser = Noiser(bundle.scheduler_config)

    def decode(z: Tensor) -> Tensor:
        return decode_latents(bundle.vae, z).float().clamp(-1, 1)

    gen = torch.Generator().manual_seed(int(seeds[0]))
    with torch.no_grad():
        cond = encode_prompts(bundle, prompts)
        uncond = encode_prompts(bundle, [""] * len(prompts))
    if settings.init == "sample":
        ddim = make_scheduler("ddim", bundle.scheduler_config)
        ddim.set_timesteps(settings.init_steps)
        z0 = sample(bundle, cond, uncond, initial_latents(seeds, bundle.latent_shape(), ddim),
                    settings.init_steps, settings.init_guidance, ddim)
    else:
        z0 = torch.stack([torch.randn(bundle.latent_shape(), generator=g)
                          for g in image_generators(seeds)]).to(cond.device)

    def sds(z: Tensor, i: int) -> Tensor:
        t = sds_timesteps(settings, i, len(z), gen).to(z.device)
        return sds_gradient(bundle.unet, noiser, z, cond, uncond, t, settings.guidance, gen,
                            settings.sds_time_weight)

    return optimise(decode, scorer, prompts, z0, settings, gen, sds=sds, progress=progress)
