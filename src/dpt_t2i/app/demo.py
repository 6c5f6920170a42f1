"""The methods side by side: one prompt and seed through base, DPT, DPT + SC and the referee.

What `dpt serve`'s page shows, as a library call with no web code, so it is tested without a
browser (the page is `demo_page.py`). `Demo` holds the model as `dpt generate` and
`dpt referee` run it: the base U-Net, and a copy with the DPT folder's LoRA fused in (the VAE
and text encoder are shared). `Demo.generate` makes one image per chosen method from the
same seed (so the same starting noise) and reads each image two ways:

- score: the DPT adapter's matching score s(z, y), read as the referee reads it
  (`referee.dpt_scorer`): the image encoded by the VAE, noised to t = 100 with noise drawn
  from one fixed seed, through the DPT U-Net up to the adapter's block; a cosine in [-1, 1],
  higher is a better match. Every method's image is read the same way, so the numbers
  compare across methods.
- verdict (Shapes models only): the judge parses the image into objects and checks the
  prompt with the world's truth rule (`data.shapes.judge`).

One generation, input checks included, runs at a time (a lock: the models and the
tokenizer are not safe to share between threads), so concurrent callers, such as two browser
tabs, each get what they would get alone.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.prompt_text import normalise_prompt
from ..data.samples import images_to_tensor
from ..data.shapes.grammar import Prompt, PromptError, parse_prompt
from ..data.shapes.judge import Verdict, judge
from ..generation.guidance import DEFAULT_ETA, MAX_NOISE_ETA
from ..generation.methods import METHODS as REGISTRY
from ..generation.methods import Method, check_lengths, check_vocabulary, sample_images
from ..generation.referee import RefereeSettings, dpt_scorer, generate
from ..generation.sampling import MAX_SEED, decode, max_steps
from ..io.bundle import ModelBundle, load_bundle
from ..io.dpt_folder import load_for_sampling

# key (of the generation registry) -> label on the page, in the page's order
METHODS = {key: REGISTRY[key].label[0].upper() + REGISTRY[key].label[1:]
           for key in ("base", "dpt", "dpt+sc", "referee")}
# example prompts of the Shapes world, by the family they test
EXAMPLES = {
    "binding": ("a red circle and a blue square", "a green triangle and a yellow circle"),
    "counting": ("three green triangles", "two purple squares"),
    "spatial": ("a yellow square above a purple circle",
                "a cyan triangle to the left of a red square"),
}
SCORE_TIMESTEP = 100  # t at which the score reads an image: the evaluation's (README)

# (done, total, what is running) after each denoising step or referee iteration
Progress = Callable[[int, int, str], None]


@dataclass
class Shown:
    """One method's image and what was read from it."""

    method: str              # a key of METHODS
    image: np.ndarray        # (H, W, 3) uint8
    seconds: float           # wall time of this method's image
    score: float | None      # s(z, y) (module docstring); None without a DPT adapter
    verdict: Verdict | None  # the Shapes judge's; None on other models or unreadable prompts


@dataclass
class Comparison:
    """The images of one prompt and seed, in METHODS order."""

    prompt: str
    seed: int
    shown: list[Shown]
    judge_note: str | None  # why there is no verdict (not a Shapes model, prompt unreadable)


class Demo:
    """A model, optionally with DPT weights, ready to generate every method side by side.

    Args:
        bundle: the model; its U-Net samples the base method.
        dpt: a DPT folder (None: only the base method). Its LoRA is fused into a copy of the
            U-Net; the adapter scores images and steers DPT + SC and the referee.
        guidance / scheduler: the sampler's classifier-free guidance and scheduler, as in
            `dpt generate` (defaults 7.5 and ddim).
        referee: the referee's settings (default: `RefereeSettings()`, the reference code's);
            the page sets only their number of iterations.
    """

    def __init__(self, bundle: ModelBundle, dpt: Path | None = None, guidance: float = 7.5,
                 scheduler: str = "ddim", referee: RefereeSettings | None = None):
        self.bundle, self.dpt_path = bundle, dpt
        self.guidance, self.scheduler = guidance, scheduler
        self.referee = referee or RefereeSettings()
        self.dpt_bundle = self.heads = self.config = None
        if dpt is not None:
            self.dpt_bundle = replace(bundle, unet=copy.deepcopy(bundle.unet))
            self.heads, self.config = load_for_sampling(dpt, self.dpt_bundle.unet)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: Path, dpt: Path | None = None,
             referee: RefereeSettings | None = None) -> "Demo":
        """Load a (checked) model folder and, when given, a DPT folder."""
        return cls(load_bundle(model), dpt, referee=referee)

    @property
    def methods(self) -> list[str]:
        """The METHODS keys this model can run: DPT needs DPT weights, DPT + SC and the
        referee need their adapter."""
        lora = self.config is not None and self.config.lora is not None
        return [key for key in METHODS
                if (self.dpt_bundle is not None or not REGISTRY[key].dpt)
                and (self.heads is not None or not REGISTRY[key].adapter)
                and (key != "dpt" or lora)]  # without LoRA, DPT's image is the base model's

    def generate(self, prompt: str, methods: Sequence[str], seed: int = 0, steps: int = 25,
                 eta: float = DEFAULT_ETA, referee_iterations: int | None = None,
                 progress: Progress | None = None) -> Comparison:
        """One image per chosen method from the same seed, scored and judged.

        Args:
            prompt: the text (surrounding spaces and a trailing period are dropped).
            methods: keys of METHODS, a subset of `self.methods`.
            seed: the starting noise's seed (as image 0 of `dpt generate --seed S`).
            steps: denoising steps of base, DPT and DPT + SC.
            eta: self-correction step size of DPT + SC, a fraction of the noise level
                (`dpt generate --self-correct ETA`; its mode, unit and timesteps are
                `dpt generate`'s defaults).
            referee_iterations: the referee's iterations (default: `self.referee`'s).
            progress: told of each denoising step and referee iteration.

        Raises:
            ValueError: a message for the page: empty prompt, unknown word, a prompt the
                Shapes grammar cannot read, no method, a setting out of range, sampling that
                diverged.
        """
        chosen = [m for m in METHODS if m in methods]
        iterations = self.referee.iterations if referee_iterations is None \
            else referee_iterations
        with self._lock:  # the checks too: a tokenizer is not safe to share between threads
            prompt, seed, steps, iterations = self._check(prompt or "", methods, seed, steps,
                                                          eta, iterations)
            parsed, note = self._parse(prompt)
            work = {m: iterations if m == "referee" else steps for m in chosen}
            shown, done = [], 0
            for method in chosen:
                tick = _ticker(progress, done, sum(work.values()), METHODS[method], work[method])
                start = time.perf_counter()
                image = self._image(method, prompt, seed, steps, eta, iterations, tick)
                seconds = time.perf_counter() - start
                verdict = judge(parsed, image) if parsed is not None else None
                shown.append(Shown(method, image, seconds, self._score(prompt, image), verdict))
                done += work[method]
        return Comparison(prompt, seed, shown, note)

    def _check(self, prompt: str, methods: Sequence[str], seed, steps, eta: float,
               iterations) -> tuple[str, int, int, int]:
        """Raise ValueError on bad input; return the prompt as `dpt generate` reads it
        (`normalise_prompt`), and seed, steps and iterations as ints."""
        prompt = normalise_prompt(prompt, "the prompt")
        if self.bundle.vocabulary is not None:  # the words, then the Shapes grammar
            check_vocabulary([prompt], self.bundle.vocabulary, self.bundle.path)
        check_lengths(self.bundle.tokenizer, [prompt])
        if not methods:
            raise ValueError("no method chosen: tick at least one")
        for method in methods:
            if method not in self.methods:
                raise ValueError(f"method {method!r} is not available here; this model runs "
                                 f"{', '.join(METHODS[m] for m in self.methods)}")
        seed = _whole(seed, "the seed", 0, MAX_SEED)
        steps = _whole(steps, "the number of steps", 1, max_steps(self.bundle.scheduler_config))
        iterations = _whole(iterations, "the referee's iterations", 1)
        if "dpt+sc" in methods and not (isinstance(eta, (int, float)) and math.isfinite(eta)
                                        and 0 < eta <= MAX_NOISE_ETA):
            raise ValueError(f"the self-correction strength eta must be a number > 0 and <= "
                             f"{MAX_NOISE_ETA:g} (a fraction of the noise level), got {eta}")
        return prompt, seed, steps, iterations

    def _parse(self, prompt: str) -> tuple[Prompt | None, str | None]:
        """The prompt as the Shapes judge reads it, or None and why there is no verdict."""
        if self.bundle.vocabulary is None:
            return None, "no judge: this is not a Shapes model"
        try:
            return parse_prompt(prompt), None
        except PromptError as err:
            return None, f"the judge cannot read this prompt: {err}"

    def _image(self, method: str, prompt: str, seed: int, steps: int, eta: float,
               iterations: int, tick: Callable[[int], None]) -> np.ndarray:
        """(H, W, 3) uint8: the image of one method."""
        if method == "referee":
            scorer = dpt_scorer(self.dpt_bundle, self.heads, self.config)
            settings = replace(self.referee, iterations=iterations)
            latents = generate(self.dpt_bundle, scorer, [prompt], [seed], settings, tick)
            return decode(self.dpt_bundle, latents)[0]
        bundle, sampler = self.bundle, Method()
        if method != "base":
            bundle, sampler = self.dpt_bundle, Method(heads=self.heads, config=self.config)
            sampler.eta = eta if method == "dpt+sc" else 0.0
        return sample_images(bundle, [prompt], [seed], steps, self.guidance, self.scheduler,
                             sampler, progress=tick)[0]

    def _score(self, prompt: str, image: np.ndarray) -> float | None:
        """s(z, y) of one image (module docstring); None without an adapter."""
        if self.heads is None:
            return None
        # a fresh scorer: the same noise for every image, whatever was scored before
        scorer = dpt_scorer(self.dpt_bundle, self.heads, self.config, timestep=SCORE_TIMESTEP)
        with torch.no_grad():
            return float(scorer(images_to_tensor(image[None]), [prompt])[0])


def _ticker(progress: Progress | None, done: int, total: int, label: str, units: int
            ) -> Callable[[int], None]:
    """A step callback for one method that tells `progress` of the whole run's count."""
    def tick(i: int) -> None:
        if progress is not None:
            progress(done + i, total, f"{label}: {i}/{units}")

    return tick


def _whole(value, name: str, low: int, high: int | None = None) -> int:
    """`value` as an int in [low, high]; ValueError naming it otherwise."""
    bound = f">= {low}" if high is None else f"from {low} to {high}"
    try:
        whole = not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole or float(value) < low or (high is not None and float(value) > high):
        raise ValueError(f"{name} must be a whole number {bound}, got {value}")
    return int(float(value))


def describe(verdict: Verdict) -> str:
    """The judge's verdict in words: satisfied or not, and the objects it saw."""
    answer = "satisfied" if verdict.satisfied else "not satisfied"
    seen = "; ".join(f"{o.size} {o.colour} {o.shape} at ({(o.box[0] + o.box[2]) // 2}, "
                     f"{(o.box[1] + o.box[3]) // 2})" for o in verdict.objects)
    return f"{answer}; saw {seen or 'no object'}"
