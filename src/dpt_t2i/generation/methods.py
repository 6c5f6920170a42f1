"""The generation methods, in one registry: how a method is named, chosen, recorded and run.

A method is what makes the images of a prompt and seed:

    base           the model alone
    attend-excite  the base model with Attend-and-Excite (a baseline; diffusers' pipeline)
    dpt            a DPT folder's LoRA fused into the U-Net (stage 2; a LoRA-only folder such
                   as `dpt tune-hn-itm`'s samples the same way)
    dpt+sc         DPT with self-correction: z_t <- z_t + eta * grad s(z_t, y) (eq. 9)
    referee        a latent optimised until a discriminative model judges it a match
                   (`generation/referee.py`; its settings are `RefereeSettings`)

`MethodSpec` is a method as a user chooses it (what `dpt generate`'s flags say, what an
image's index record says, what `dpt report` caches by); `load_method` turns it into the
modules that sample (`Method`); `sample_images` and `render` sample; `generate_folder` is
`dpt generate` as a library call. "The shipped model means the shipped DPT weights and the
Shapes referee preset" is decided here only (`shipped_dpt`, `referee_preset`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from tqdm.auto import tqdm

from ..data.prompt_text import quote
from ..data.shapes.grammar import PromptError, parse_prompt
from ..data.shapes.world import SHAPES
from ..io.bundle import (DTYPES, ModelBundle, check_device, default_model_path, load_bundle,
                         read_scheduler_config, read_vocabulary)
from ..io.dpt_folder import default_dpt_path, load_for_sampling, read_dpt_config
from ..io.folder_writer import RESUME_OR_OVERWRITE, open_folder
from ..io.image_folder import numbered_records, write_png
from ..model.latents import Noiser
from ..model.score import MatchScore
from .attend_excite import build_pipeline, sample_attend_excite, subject_words, token_indices
from .guidance import (DEFAULT_ETA, DEFAULT_MODE, DEFAULT_T_RANGE, DEFAULT_UNIT, MAX_NOISE_ETA,
                       SelfCorrection, check_mode)
from .referee import SHAPES_NOISE_SETTINGS, SHAPES_SETTINGS, RefereeSettings
from .sampling import (SCHEDULERS, check_seeds, check_steps, decode, encode_prompts,
                       image_generators, initial_latents, make_scheduler, sample, unet_model_fn)

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from ..model.config import DPTConfig
    from ..model.heads import DPTHeads
    from .sampling import ModelFn


@dataclass(frozen=True)
class MethodInfo:
    """What a method needs, for the commands, the report and the demo to check and show."""

    label: str
    dpt: bool      # a DPT folder (LoRA fused into the U-Net)
    adapter: bool  # the DPT folder's adapter (its matching score steers the images)


METHODS = {
    "base": MethodInfo("base model", dpt=False, adapter=False),
    "attend-excite": MethodInfo("Attend-and-Excite", dpt=False, adapter=False),
    "dpt": MethodInfo("DPT", dpt=True, adapter=False),
    "dpt+sc": MethodInfo("DPT + SC", dpt=True, adapter=True),
    "referee": MethodInfo("referee", dpt=True, adapter=True),
}
SAMPLED = ("base", "attend-excite", "dpt", "dpt+sc")  # the methods `sample_images` runs


@dataclass(frozen=True)
class SamplerSettings:
    """How every sampled method denoises (`dpt generate`'s defaults)."""

    steps: int = 25           # denoising steps
    guidance: float = 7.5     # classifier-free guidance scale; <= 1 turns it off
    scheduler: str = "ddim"   # a key of sampling.SCHEDULERS
    batch_size: int = 8       # images denoised together
    device: str = "cpu"       # where the model runs (a torch device name)
    dtype: str = "fp32"       # the model's weights and activations: a key of io.bundle.DTYPES

    def __post_init__(self):
        if self.steps <= 0 or self.batch_size <= 0:
            flag = "--steps" if self.steps <= 0 else "--batch-size"
            value = self.steps if self.steps <= 0 else self.batch_size
            raise ValueError(f"{flag} must be a positive whole number, got {value}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"--guidance must be a finite number >= 0, got {self.guidance}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; expected one of "
                             f"{', '.join(SCHEDULERS)}")


@dataclass(frozen=True)
class MethodSpec:
    """A method as a user chooses it; `index_fields` is what an image's record says of it."""

    name: str = "base"                  # a key of METHODS (not "referee": `dpt referee`)
    dpt: Path | None = None             # the DPT folder of dpt and dpt+sc (resolved)
    eta: float | None = None            # dpt+sc: self-correction step size (> 0)
    sc_range: tuple[float, float] = DEFAULT_T_RANGE  # dpt+sc: timesteps corrected
    sc_mode: str = DEFAULT_MODE         # dpt+sc: a key of guidance.MODES
    sc_unit: str = DEFAULT_UNIT         # dpt+sc: eta's unit, a key of guidance.UNITS
    subject_words: tuple[str, ...] | None = None  # attend-excite: None finds them

    def __post_init__(self):
        if self.name not in SAMPLED:
            raise ValueError(f"unknown sampling method {self.name!r}; expected one of "
                             f"{', '.join(SAMPLED)}")
        if METHODS[self.name].dpt != (self.dpt is not None):
            raise ValueError(f"method {self.name} {'needs' if self.dpt is None else 'takes no'} "
                             "DPT folder")
        if (self.name == "dpt+sc") != (self.eta is not None):
            raise ValueError("self-correction's eta goes with method dpt+sc, and only with it")
        check_self_correction(self.eta, self.sc_range, self.sc_mode, self.sc_unit)

    def index_fields(self) -> dict:
        """The index fields that say which method made an image."""
        if self.name in ("base", "attend-excite"):
            return {"method": self.name}
        if self.name == "dpt":
            return {"method": "dpt", "dpt": str(self.dpt)}
        fields = {"method": "dpt+sc", "dpt": str(self.dpt), "eta": self.eta,
                  "sc_range": list(self.sc_range), "sc_mode": self.sc_mode}
        if self.sc_unit != "raw":  # records written before units existed still match
            fields["sc_unit"] = self.sc_unit
        return fields


def check_self_correction(eta: float | None, sc_range: tuple[float, float], mode: str,
                          unit: str = "raw") -> None:
    """ValueError for a self-correction step that is not > 0, a timestep range that is not
    LOW <= HIGH, or an unknown mode or unit (named as `dpt generate`'s flags name them)."""
    if eta is not None and not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"--self-correct must be a finite number > 0, got {eta}")
    if eta is not None and unit == "noise" and eta > MAX_NOISE_ETA:
        raise ValueError(f"--self-correct {eta:g} with --self-correct-unit noise would move "
                         f"z_t by {eta:g} times its noise level; that unit wants a fraction "
                         f"(default {DEFAULT_ETA:g}). For the raw gradient step of eq. 9 (about "
                         "10 on the Shapes model) add --self-correct-unit raw")
    low, high = sc_range
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"--self-correct-range needs finite LOW <= HIGH, got {low} {high}")
    check_mode(mode, unit)


def shipped_dpt(model: Path) -> Path | None:
    """The shipped DPT folder when `model` is the shipped Shapes model, else None."""
    shipped = default_dpt_path()
    if Path(model).resolve() == default_model_path().resolve() and shipped.is_dir():
        return shipped
    return None


def referee_preset(model: Path, init: str | None = None) -> RefereeSettings:
    """The referee settings a model starts from with its own referees: measured ones on the
    shipped Shapes model (from the model's sample, or from noise when `init` is "noise"),
    the reference code's elsewhere (a BLIP-2 or CLIP folder referee starts from the authors'
    instead: `referee_folder.run_preset`)."""
    if Path(model).resolve() == default_model_path().resolve():
        return SHAPES_NOISE_SETTINGS if init == "noise" else SHAPES_SETTINGS
    return RefereeSettings()


def choose_method(model: Path, base: bool = False, dpt: Path | None = None,
                  eta: float | None = None, sc_range: tuple[float, float] = DEFAULT_T_RANGE,
                  sc_mode: str = DEFAULT_MODE, sc_unit: str = DEFAULT_UNIT,
                  attend_excite: bool = False, subject_words: tuple[str, ...] | None = None,
                  self_correct: bool | None = None) -> MethodSpec:
    """The method `dpt generate`'s flags choose, with the DPT folder checked and resolved.

    Without `dpt`, the shipped model samples with its shipped DPT weights and any other
    model with none (self-correction then needs `dpt`). `self_correct` None: a DPT folder
    with LoRA samples as DPT (self-correction only with `eta`), and one without (stage 1's
    adapter alone, as shipped) with self-correction at `eta` or DEFAULT_ETA, since without
    it such a folder would sample the base model; False: no self-correction; True: with it.
    """
    if attend_excite:
        return MethodSpec("attend-excite", subject_words=subject_words)
    if base:
        return MethodSpec("base")
    folder = dpt if dpt is not None else shipped_dpt(model)
    if folder is None:
        if eta is not None or self_correct:
            raise ValueError("--self-correct needs DPT weights: pass --dpt PATH (there are no "
                             "shipped DPT weights for this model)")
        return MethodSpec("base")
    config = read_dpt_config(folder)  # a ValueError naming the folder, before the model loads
    if self_correct is None:
        self_correct = eta is not None or config.lora is None
    if not self_correct:
        if eta is not None:
            raise ValueError("--no-self-correct cannot go with --self-correct ETA")
        return MethodSpec("dpt", dpt=Path(folder).resolve())
    if eta is None and sc_unit != DEFAULT_UNIT:
        raise ValueError(f"--self-correct-unit {sc_unit} needs a step size: "
                         f"--self-correct ETA (the default {DEFAULT_ETA:g} is in unit "
                         f"{DEFAULT_UNIT})")
    eta = DEFAULT_ETA if eta is None else eta
    return MethodSpec("dpt+sc", dpt=Path(folder).resolve(), eta=eta, sc_range=tuple(sc_range),
                      sc_mode=sc_mode, sc_unit=sc_unit)


@dataclass
class Method:
    """What samples the images: the base model, or DPT heads (LoRA fused) and self-correction."""

    heads: DPTHeads | None = None
    config: DPTConfig | None = None
    eta: float = 0.0                               # self-correction off at 0
    t_range: tuple[float, float] = DEFAULT_T_RANGE  # timesteps on which to correct
    mode: str = DEFAULT_MODE
    unit: str = DEFAULT_UNIT
    subjects: dict[str, list[int]] | None = None   # Attend-and-Excite: prompt -> token indices
    early_exit: bool = True  # the score stops the U-Net at the adapter's block (False: cost bench)

    def model_fn(self, bundle: ModelBundle, prompts: list[str]) -> ModelFn | None:
        """The batch's noise prediction: None (the plain U-Net) unless self-correcting."""
        if self.heads is None or self.eta == 0:
            return None
        noiser = Noiser(bundle.scheduler_config)
        if self.mode == "x0" and noiser.prediction_type != "epsilon":
            raise ValueError(f"--self-correct-mode x0 reads the U-Net's output as the noise; "
                             f"this model predicts {noiser.prediction_type} (use carry or shared)")
        score = MatchScore(bundle, self.heads, self.config, early_exit=self.early_exit)
        return SelfCorrection(unet_model_fn(bundle), score, score.texts(prompts), self.eta,
                              self.t_range, self.mode, self.unit, noiser.alphas_cumprod)


def load_method(bundle: ModelBundle, spec: MethodSpec, prompts: list[str]) -> Method:
    """The modules that sample `spec` on `bundle` (a DPT folder's LoRA is fused into its
    U-Net); ValueError for a prompt Attend-and-Excite cannot read or a DPT folder that does
    not fit."""
    if spec.name == "attend-excite":
        return Method(subjects=subject_indices(bundle, prompts, spec.subject_words))
    if spec.dpt is None:
        return Method()
    heads, config = load_for_sampling(spec.dpt, bundle.unet)
    if heads is not None:  # the heads read float32 features on the model's device
        heads.to(bundle.device)
    if spec.eta is not None and heads is None:
        raise ValueError(f"--self-correct needs an adapter to score with; {spec.dpt} holds "
                         f"LoRA only")
    return Method(heads=heads, config=config, eta=spec.eta or 0.0, t_range=spec.sc_range,
                  mode=spec.sc_mode, unit=spec.sc_unit)


def subject_indices(bundle: ModelBundle, prompts: list[str],
                    words: tuple[str, ...] | None) -> dict[str, list[int]]:
    """Each prompt's Attend-and-Excite token indices: of `words`, or of the shape nouns on a
    Shapes model, or of each phrase's last word; ValueError naming a prompt without any."""
    nouns = list(words) if words is not None else None
    if nouns is None and bundle.vocabulary is not None:
        nouns = [*SHAPES, *(s + "s" for s in SHAPES)]
    out = {}
    for prompt in prompts:
        found = subject_words(prompt, nouns)
        if not found:
            raise ValueError(f"--attend-excite: prompt {quote(prompt)} has no subject word to "
                             "excite (give them with --subject-words)")
        try:
            out[prompt] = token_indices(bundle.tokenizer, prompt, found)
        except ValueError as err:
            raise ValueError(f"--attend-excite: {err}") from None
    return out


def plan_images(prompts: list[str], spec: MethodSpec, sampler: SamplerSettings, model: Path,
                num_images: int, seed: int, benchmark: list[dict] | None = None) -> list[dict]:
    """One index record per image, in run order: image k gets seed S+k and file k.png.

    `benchmark` (one dict per prompt) goes into each of the prompt's records under
    "benchmark".
    """
    settings = {"steps": sampler.steps, "guidance": sampler.guidance,
                "scheduler": sampler.scheduler, "model": str(model), **spec.index_fields()}
    if sampler.dtype != "fp32":  # other weights make other images; the device does not
        settings["dtype"] = sampler.dtype
    records = numbered_records(prompts, num_images, seed, settings)
    if benchmark is not None:
        for record in records:
            record["benchmark"] = benchmark[record["prompt_index"]]
    return records


def check_lengths(tokenizer: CLIPTokenizer, prompts: list[str]) -> None:
    """ValueError for a prompt the text encoder would truncate (start and end tokens count)."""
    limit = tokenizer.model_max_length
    for prompt in prompts:
        n = len(tokenizer.tokenize(prompt)) + 2
        if n > limit:
            raise ValueError(f"prompt {quote(prompt)} is {n} tokens long with start and end "
                             f"tokens; the model reads at most {limit}")


def check_vocabulary(prompts: list[str], vocabulary: tuple[str, ...], model: Path) -> None:
    """ValueError naming the first word of a prompt that the model's world lacks, or a prompt
    the Shapes grammar cannot read (with the grammar's message).

    A Shapes model's images are judged by parsing their prompt (`dpt evaluate`, the page's
    verdict), so a prompt the grammar cannot read is refused before any image is made.
    Words are compared in lower case, as the CLIP tokenizer lower-cases text.
    """
    known = {w.lower() for w in vocabulary}
    for prompt in prompts:
        for word in prompt.split():
            if word.lower() not in known:
                raise ValueError(f"word {quote(word)} in prompt {quote(prompt)} is not in the "
                                 f"vocabulary of the Shapes model {model}; known words: "
                                 f"{' '.join(vocabulary)}")
        try:
            parse_prompt(prompt)
        except PromptError as err:
            raise ValueError(f"prompt {quote(prompt)} is not one the Shapes grammar reads, so "
                             f"`dpt evaluate` could not judge its images: {err}") from None


@dataclass
class FolderRun:
    """`dpt generate` as a library call: what to make and where (see `generate_folder`)."""

    model: Path                       # a checked model folder
    prompts: list[str]
    out: Path
    spec: MethodSpec = field(default_factory=MethodSpec)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    num_images: int = 4               # per prompt
    seed: int = 0                     # image k of the run uses seed + k
    benchmark: list[dict] | None = None  # one dict per prompt, recorded under "benchmark"
    overwrite: bool = False
    resume: bool = False              # keep an unfinished run's images, make the rest

    def __post_init__(self):
        if self.overwrite and self.resume:
            raise ValueError(RESUME_OR_OVERWRITE)
        if self.num_images <= 0:
            raise ValueError(f"--num-images must be a positive whole number, "
                             f"got {self.num_images}")
        check_seeds(self.seed, len(self.prompts) * self.num_images)

    def plan(self) -> list[dict]:
        return plan_images(self.prompts, self.spec, self.sampler, self.model, self.num_images,
                           self.seed, self.benchmark)


def generate_folder(run: FolderRun, bundle: ModelBundle | None = None,
                    before_load: Callable[[Path], None] | None = None) -> list[dict]:
    """Sample every image of `run` into run.out (PNGs and index.jsonl); return the records.

    Every input is checked before the model loads (`before_load` gets the resolved output
    folder then, for a caller's own checks), and the folder is taken and written as
    `io/folder_writer.py` says: one run at a time, a bad input writes nothing, the index and
    the images agree at every moment, and a killed run continues with `run.resume`.

    Args:
        run: what to make and where.
        bundle: the model already loaded from run.model (default: loaded here).
    """
    # before the model loads: diffusers would refuse too many steps only after it has
    check_steps(run.sampler.steps, read_scheduler_config(run.model) if bundle is None
                else bundle.scheduler_config)
    vocabulary = read_vocabulary(run.model) if bundle is None else bundle.vocabulary
    if vocabulary is not None:
        check_vocabulary(run.prompts, vocabulary, run.model)
    check_device(run.sampler.device)  # the dtype: SamplerSettings
    records = run.plan()
    with open_folder(run.out, records, run.sampler.batch_size, overwrite=run.overwrite,
                     resume=run.resume) as folder:
        if before_load is not None:
            before_load(folder.out)
        bundle = bundle or load_bundle(run.model, run.sampler.device,
                                       DTYPES[run.sampler.dtype])
        check_lengths(bundle.tokenizer, run.prompts)
        method = load_method(bundle, run.spec, run.prompts)
        if method.subjects is not None:
            for record in records:
                record["subject_tokens"] = method.subjects[record["prompt"]]
        todo = folder.start(records)
        render(bundle, todo, folder.stage, run.sampler, method, folder.add)
        folder.finish()
    return records


def render(bundle: ModelBundle, records: list[dict], folder: Path, sampler: SamplerSettings,
           method: Method | None = None,
           batch_done: Callable[[list[dict]], None] | None = None) -> None:
    """Sample each record's image from its prompt and seed; write it as folder / record["file"].

    Args:
        bundle: the model.
        records: from `plan_images` (or the rest of them, from a batch boundary).
        folder: where the PNGs go.
        sampler: steps, guidance, scheduler and batch size.
        method: DPT heads and self-correction (default: the bundle's U-Net as it is).
        batch_done: called with each batch's records once its PNGs are written.
    """
    with tqdm(total=len(records), unit="image", desc="generate", dynamic_ncols=True) as bar:
        for start in range(0, len(records), sampler.batch_size):
            batch = records[start:start + sampler.batch_size]
            images = sample_images(bundle, [r["prompt"] for r in batch],
                                   [r["seed"] for r in batch], sampler.steps, sampler.guidance,
                                   sampler.scheduler, method)
            for record, image in zip(batch, images):
                write_png(folder / record["file"], image)
            if batch_done is not None:
                batch_done(batch)
            bar.update(len(batch))


def sample_images(bundle: ModelBundle, prompts: list[str], seeds: list[int], steps: int,
                  guidance: float, scheduler_name: str, method: Method | None = None,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Images of B prompts, image k from the noise of seeds[k], denoised together.

    Args:
        bundle: the model.
        prompts / seeds: B of each.
        steps / guidance / scheduler_name: as `sampling.sample` takes them.
        method: DPT heads and self-correction, or Attend-and-Excite subjects (default: the
            bundle's U-Net as it is).
        progress: called with the number of denoising steps done after each step (not called
            by Attend-and-Excite, which runs diffusers' pipeline).

    Returns:
        (B, H, W, 3) uint8 images.
    """
    method = method or Method()
    scheduler = make_scheduler(scheduler_name, bundle.scheduler_config)
    generators = image_generators(seeds)
    scheduler.set_timesteps(steps)
    latents = initial_latents(seeds, bundle.latent_shape(), scheduler, generators)
    if method.subjects is not None:
        return sample_attend_excite(build_pipeline(bundle, scheduler), bundle, prompts,
                                    [method.subjects[p] for p in prompts], latents, steps,
                                    guidance)
    cond = encode_prompts(bundle, prompts)  # (B, L, D)
    uncond = encode_prompts(bundle, [""] * len(prompts)) if guidance > 1 else None
    latents = sample(bundle, cond, uncond, latents, steps, guidance, scheduler,
                     model_fn=method.model_fn(bundle, prompts), progress=progress,
                     generators=generators)
    return decode(bundle, latents)
