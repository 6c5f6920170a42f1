"""The engine of `dpt report`: every generation and evaluation behind the paper's Tables 1-4
and Figs. 3-5, on the Shapes model, each run once and cached in a work folder.

Generations are `generation.methods.generate_folder` runs (referee rows:
`generation.referee_folder.referee_folder` runs), discriminative results
`eval.disc_run.run_discriminative` runs, with the same prompts (the Shapes benchmark lists of
both splits) and the same seeds for every method. A cached generation is reused only when its
`index.jsonl` holds exactly the records the run plans; a cached discriminative result only
when it was made with the same `DiscSettings`. So a stopped report continues where it was,
and a changed setting is recomputed rather than mixed in.

Work folder layout: `prompts-<split>.txt`, `gen/<method>-<split>/` (image folders),
`gen/<method>-<split>.eval.json` (alignment per family and Fréchet distance),
`disc/<name>.json`, `curve/step-<k>/` (DPT folders of a tune run's checkpoints), `cost.json`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..data.shapes.splits import benchmark_prompts
from ..generation.guidance import DEFAULT_ETA, MAX_NOISE_ETA
from ..generation.methods import (FolderRun, MethodSpec, SamplerSettings, choose_method,
                                  generate_folder)
from ..generation.referee_folder import RefereeRun, referee_folder
from ..io.bundle import check_model_folder, default_model_path
from ..io.dpt_folder import CONFIG_FILE, HEADS_FILE, LORA_FILE, read_dpt_config
from ..io.folder_writer import holds_run
from ..io.image_folder import INDEX
from ..io.shapes_referee import default_shapes_referee_path
from .alignment import judge_folders, summarize
from .disc_run import DiscSettings, run_discriminative
from .paired import paired_difference
from .quality import quality_by_split
from .report_rows import REFEREE_ROWS, RefereeSpec, referee_rows
from .report_tables import write_report
from .zero_shot import run_shapes_referee

SPLITS = ("ood", "id")
COST_ROUNDS = 2
@dataclass
class ReportInputs:
    """Trained folders the report compares; None leaves their rows out (named as missing)."""

    dpt: Path                          # stage 2, the DPT the methods use
    probe: Path | None = None          # stage 1: Table 3's "DPT stage 1" and Fig. 4a's step 0
    hn_itm: Path | None = None         # `dpt tune-hn-itm`'s final/
    match_only: Path | None = None     # Table 4: stage 2 with --ground-weight 0
    ground_only: Path | None = None    # Table 4: stage 2 with --match-weight 0
    curve: Path | None = None          # a tune run folder kept with --keep-checkpoints 0
    sweep: Path | None = None          # a `dpt sweep-blocks` run folder (Fig. 3)


@dataclass
class ReportSettings:
    seed: int = 1000                   # image k of a generation uses seed + k
    num_images: int = 4                # per prompt
    steps: int = 25
    eta: float = DEFAULT_ETA           # "DPT + SC": a fraction of the noise level (guidance.py)
    etas: tuple[float, ...] = (0, 0.05, 0.1, 0.2, 0.4)  # Fig. 4b
    n_itm: int = 200                   # ITM items per split (DPT and CLIP)
    n_itm_diffusion: int = 100         # ITM items per split, DiffusionITM (10 U-Net passes)
    n_rec: int = 400
    disc_seed: int = 1
    cost_images: int = 16              # images per method in the cost measurement
    attend_excite: bool = True
    grid_prompts: int = 5              # Fig. 5 rows: the first OOD prompt of each family
    per_family: int = 20               # benchmark prompts per family (fewer: a quick report)
    threads: int | None = None         # torch threads of the whole report (one process)
    referees: tuple[str, ...] = REFEREE_ROWS  # Table 1's referee rows, REFEREE:INIT
    referee_images: int | None = None  # per prompt in the referee rows (None: num_images)
    attend_excite_images: int | None = None  # per prompt in Attend-and-Excite's (likewise)
    splits: tuple[str, ...] = field(default=SPLITS)

    def __post_init__(self):
        if not self.etas or not all(math.isfinite(e) and 0 <= e <= MAX_NOISE_ETA
                                    for e in self.etas):
            raise ValueError(f"--etas must be comma-separated numbers from 0 to "
                             f"{MAX_NOISE_ETA:g} (fractions of the noise level), got "
                             f"{','.join(f'{e:g}' for e in self.etas)!r}")
        for name in ("num_images", "n_itm", "n_itm_diffusion", "n_rec", "per_family",
                     "referee_images", "attend_excite_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, "
                                 f"got {getattr(self, name)}")
        referee_rows(",".join(self.referees))
        if not (math.isfinite(self.eta) and 0 < self.eta <= MAX_NOISE_ETA):
            raise ValueError(f"--eta must be a finite number > 0 and <= {MAX_NOISE_ETA:g} "
                             f"(a fraction of the noise level), got {self.eta}")


PAIRED_KEYS = ("prompt", "seed", "split", "family", "satisfied")  # what a paired diff reads


class Work:
    """Runs and caches the report's generations and evaluations in one folder."""

    def __init__(self, folder: Path, settings: ReportSettings):
        self.folder, self.settings = Path(folder), settings
        self.model = check_model_folder(default_model_path())
        for sub in ("gen", "disc", "curve"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def prompts(self, split: str) -> Path:
        """The split's benchmark prompts, one a line (the file Fig. 5 and the cost read)."""
        path = self.folder / f"prompts-{split}.txt"
        text = "".join(p.text + "\n"
                       for p in benchmark_prompts(split, self.settings.per_family))
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        return path

    def folder_run(self, split: str, spec: MethodSpec, out: Path, num_images: int | None = None,
                   prompts: list[str] | None = None) -> FolderRun:
        """A generation of the report's seeds and steps (overwriting `out`)."""
        s = self.settings
        if prompts is None:
            prompts = self.prompts(split).read_text().splitlines()
        return FolderRun(self.model, prompts, out, spec, SamplerSettings(steps=s.steps),
                         num_images or s.num_images, s.seed, overwrite=True)

    def run_of(self, split: str, spec: MethodSpec | RefereeSpec, out: Path,
               num_images: int | None = None, prompts: list[str] | None = None
               ) -> FolderRun | RefereeRun:
        """The run of a generation method or a referee row (overwriting `out`), with
        `num_images` a prompt or the row's own count (`images_of`)."""
        num_images = num_images or self.images_of(spec)
        if isinstance(spec, MethodSpec):
            return self.folder_run(split, spec, out, num_images, prompts)
        if prompts is None:
            prompts = self.prompts(split).read_text().splitlines()
        return spec.run(self.model, prompts, out, num_images, self.settings.seed)

    def images_of(self, spec: MethodSpec | RefereeSpec) -> int:
        """Images a prompt of a row: the slow rows may draw fewer than the others."""
        s = self.settings
        if isinstance(spec, RefereeSpec):
            return s.referee_images or s.num_images
        if spec.name == "attend-excite":
            return s.attend_excite_images or s.num_images
        return s.num_images

    def generated(self, name: str, split: str, spec: MethodSpec | RefereeSpec,
                  num_images: int | None = None) -> Path:
        """The image folder of a method on a split, generated unless a matching one exists."""
        run = self.run_of(split, spec, self.folder / "gen" / f"{name}-{split}", num_images)
        if not holds_run(run.out, run.plan()):
            print(f"report: generating {name} on {split}", flush=True)
            make(run)
        return run.out

    def alignment(self, name: str, split: str, spec: MethodSpec | RefereeSpec) -> dict:
        """The judge's accuracy per family, overall, and the Fréchet distance to renders."""
        return self._judged(name, split, spec)["row"]

    def verdicts(self, name: str, split: str, spec: MethodSpec | RefereeSpec,
                 num_images: int | None = None) -> list[dict]:
        """The judge's verdict on each image (prompt, seed, split, family, satisfied), for
        paired comparisons."""
        return self._judged(name, split, spec, num_images)["verdicts"]

    def _judged(self, name: str, split: str, spec: MethodSpec | RefereeSpec,
                num_images: int | None = None) -> dict:
        """{"row": alignment's row, "verdicts": ...} of a generation, cached beside it."""
        folder = self.generated(name, split, spec, num_images)
        cache = folder.parent / f"{folder.name}.eval.json"
        index = (folder / INDEX).read_text()
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("index") == index and "verdicts" in cached:
                return cached
        verdicts = judge_folders([folder])
        row = summarize(verdicts)[split]
        row["fd"] = quality_by_split(verdicts)[split]
        slim = [{k: v[k] for k in PAIRED_KEYS} for v in verdicts]
        judged = {"index": index, "row": row, "verdicts": slim}
        cache.write_text(json.dumps(judged))
        return judged

    def disc(self, name: str, settings: DiscSettings) -> dict:
        """A discriminative evaluation with the report's seed, cached by its settings."""
        settings = replace(settings, model=self.model, seed=self.settings.disc_seed)
        key = json.loads(json.dumps(asdict(settings), default=_jsonable))
        return self._cached_disc(name, key, lambda: run_discriminative(settings))

    def referee_disc(self) -> dict:
        """The shipped Shapes referee's image-text matching on the items of the DPT rows."""
        key = {"method": "shapes-referee", "referee": str(default_shapes_referee_path()),
               "n_itm": self.settings.n_itm, "seed": self.settings.disc_seed}
        return self._cached_disc("shapes-referee", key, lambda: run_shapes_referee(
            default_shapes_referee_path(), self.settings.n_itm, self.settings.disc_seed))

    def _cached_disc(self, name: str, key: dict, compute) -> dict:
        """compute()'s result, cached in disc/<name>.json under `key`."""
        cache = self.folder / "disc" / f"{name}.json"
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("settings") == key:
                return cached["result"]
        print(f"report: discriminative evaluation {name}", flush=True)
        result = json.loads(json.dumps(compute(), default=_jsonable))
        cache.write_text(json.dumps({"settings": key, "result": result}, indent=1))
        return result

    def checkpoint_folder(self, run_dir: Path, step: int) -> Path:
        """A DPT folder of a tune run's checkpoint `step` (its config from the run's final/)."""
        source = Path(run_dir) / f"step-{step:08d}"
        out = self.folder / "curve" / f"step-{step}"
        if not out.is_dir():
            final = Path(run_dir) / "final" / CONFIG_FILE
            if not final.is_file():
                raise ValueError(f"--curve {run_dir} has no final/{CONFIG_FILE}; expected a "
                                 "finished `dpt tune` run folder")
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for file in (HEADS_FILE, LORA_FILE):
                shutil.copy2(source / file, tmp / file)
            shutil.copy2(final, tmp / CONFIG_FILE)
            tmp.rename(out)
        return out


def make(run: FolderRun | RefereeRun) -> None:
    """Generate a run's folder: sampled, or optimised against a referee. A report stopped
    while it made this run left its finished images staged (`io/folder_writer.py`): they
    are kept when that run was planned the same, and the rest are made."""
    generate = referee_folder if isinstance(run, RefereeRun) else generate_folder
    if (run.out.parent / f".{run.out.name}.partial").is_dir():
        try:
            generate(replace(run, overwrite=False, resume=True))
            return
        except ValueError:  # planned otherwise: start over it, as below
            pass
    generate(run)


def _jsonable(value):
    """Paths and tuples as JSON writes them for a cache key."""
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def curve_steps(run_dir: Path) -> list[int]:
    """The steps of a tune run's kept checkpoints, ascending."""
    steps = sorted(int(p.name[5:]) for p in Path(run_dir).glob("step-*") if p.name[5:].isdigit())
    if not steps:
        raise ValueError(f"--curve {run_dir} has no step-* checkpoints; train it with "
                         "`dpt tune ... --checkpoint-every K --keep-checkpoints 0`")
    return steps


# ---------------------------------------------------------------------------------------
# the report


def methods(inputs: ReportInputs, settings: ReportSettings, model: Path
            ) -> dict[str, MethodSpec | RefereeSpec | None]:
    """Table 1's methods and referee rows: name -> method (None: its input is missing)."""
    rows: dict[str, MethodSpec | RefereeSpec | None] = {
        "base": choose_method(model, base=True),
        "attend-excite": choose_method(model, attend_excite=True)
        if settings.attend_excite else None,
        "hn-itm": choose_method(model, dpt=inputs.hn_itm) if inputs.hn_itm else None,
        "dpt": choose_method(model, dpt=inputs.dpt, self_correct=False),
        "dpt+sc": choose_method(model, dpt=inputs.dpt, eta=settings.eta),
        # stage 1 steering alone (no LoRA), what `dpt generate` runs with the shipped weights;
        # the same folder as --dpt would repeat the DPT + SC row
        "probe+sc": choose_method(model, dpt=inputs.probe, eta=settings.eta)
        if inputs.probe and Path(inputs.probe).resolve() != Path(inputs.dpt).resolve() else None,
    }
    for row in settings.referees:
        referee, _, init = row.partition(":")
        spec = RefereeSpec(referee, init, Path(inputs.dpt))
        rows[spec.name] = spec
    return rows


def build_report(work: Work, inputs: ReportInputs, out: Path, argv: list[str]) -> dict:
    """Run (or read) everything and write the tables, plots, grid and README into `out`.

    Args:
        argv: the command line that asked for the report, for its README.
    """
    s = work.settings
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data: dict = {"settings": {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in vars(s).items()},
                  "inputs": {k: str(v) if v else None for k, v in vars(inputs).items()}}
    plan = {name: spec for name, spec in methods(inputs, s, work.model).items()
            if spec is not None}
    table1 = {}
    for name in sorted(plan, key=_slowness):  # the slow ones last
        table1[name] = {split: work.alignment(name.replace("+", "-"), split, plan[name])
                        for split in s.splits}
    data["generation"] = {name: table1[name] for name in plan}
    data["paired"] = _paired(work, plan)
    data["ablations"] = _ablations(work, inputs, table1)
    data["discriminative"] = _discriminative(work, inputs)
    data["cost"] = _cost(work, plan)
    data["eta_sweep"] = {f"{e:g}": work.alignment(_eta_name(e, s), "ood",
                                                  _eta_method(work, inputs, e))
                         for e in s.etas}
    data["curve"] = _curve(work, inputs) if inputs.curve else None
    data["blocks"] = _blocks(inputs.sweep) if inputs.sweep else None
    write_report(out, data, work, inputs, argv)
    return data


def _slowness(name: str) -> int:
    """The order Table 1's generations run in: sampling, Attend-and-Excite, the referees."""
    return 2 if name.startswith("referee-") else int(name == "attend-excite")


def _paired(work: Work, plan: dict[str, MethodSpec | RefereeSpec]) -> dict:
    """Each method's paired difference from the base model on the same prompts and seeds:
    {method: {split: {family or "overall": {"diff", "low", "high"}, "pairs", "prompts"}}}.

    Image k of a run has seed + k over all prompts, so a row drawn at another count a prompt
    (--referee-images, --attend-excite-images) starts from other noise than the base row's
    images of its prompt: it is paired with a base generation at its own count
    (`base-n<N>`)."""
    s = work.settings
    out = {}
    for name, spec in plan.items():
        if name == "base":
            continue
        n = work.images_of(spec)
        base_name = "base" if n == s.num_images else f"base-n{n}"
        out[name] = {split: paired_difference(
            work.verdicts(base_name, split, plan["base"], n),
            work.verdicts(name.replace("+", "-"), split, spec))[split] for split in s.splits}
    return out


def _eta_name(eta: float, s: ReportSettings) -> str:
    """Eta 0 is the DPT row's generation and the report's eta is DPT + SC's: reuse them."""
    return "dpt" if eta == 0 else "dpt-sc" if eta == s.eta else f"eta{eta:g}"


def _eta_method(work: Work, inputs: ReportInputs, eta: float) -> MethodSpec:
    return choose_method(work.model, dpt=inputs.dpt, eta=eta if eta > 0 else None,
                         self_correct=eta > 0)


def _ablations(work: Work, inputs: ReportInputs, table1: dict) -> dict:
    rows = {}
    for name, folder in (("match-only", inputs.match_only), ("ground-only", inputs.ground_only)):
        if folder is not None:
            spec = choose_method(work.model, dpt=folder)
            rows[name] = {"generation": {sp: work.alignment(name, sp, spec)
                                         for sp in work.settings.splits},
                          "disc": _dpt_disc(work, name, folder)}
    rows["both"] = {"generation": table1["dpt"], "disc": _dpt_disc(work, "stage2", inputs.dpt)}
    rows["both+sc"] = {"generation": table1["dpt+sc"], "disc": rows["both"]["disc"]}
    return rows


def _dpt_disc(work: Work, name: str, folder: Path) -> dict:
    s = work.settings
    return work.disc(name, DiscSettings(method="dpt", dpt=Path(folder), model=work.model,
                                        n_itm=s.n_itm, n_rec=s.n_rec))


def _discriminative(work: Work, inputs: ReportInputs) -> dict:
    s = work.settings
    zero_shot = DiscSettings(method="diffusion-itm", model=work.model,
                             n_itm=s.n_itm_diffusion, n_rec=0)
    rows = {"clip": work.disc("clip", DiscSettings(method="clip", model=work.model,
                                                   n_itm=s.n_itm, n_rec=0)),
            "diffusion-itm": work.disc("diffusion-itm", zero_shot)}
    if inputs.hn_itm:
        rows["hn-diffusion-itm"] = work.disc("hn-diffusion-itm",
                                             replace(zero_shot, dpt=Path(inputs.hn_itm)))
    if inputs.probe:
        rows["stage1"] = _dpt_disc(work, "stage1", inputs.probe)
    rows["stage2"] = _dpt_disc(work, "stage2", inputs.dpt)
    rows["shapes-referee"] = work.referee_disc()
    return rows


def _curve(work: Work, inputs: ReportInputs) -> dict:
    """Fig. 4a: OOD generation and discrimination at each kept checkpoint; step 0 is the
    base model's images (LoRA starts at zero) and stage 1's adapter (when --probe is given)."""
    points = {}
    if inputs.probe:
        points[0] = {"generation": work.alignment("base", "ood",
                                                  choose_method(work.model, base=True)),
                     "disc": _dpt_disc(work, "stage1", inputs.probe)}
    for step in curve_steps(inputs.curve):
        folder = work.checkpoint_folder(inputs.curve, step)
        points[step] = {"generation": work.alignment(f"curve{step}", "ood",
                                                     choose_method(work.model, dpt=folder)),
                        "disc": _dpt_disc(work, f"curve{step}", folder)}
    return points


def _cost(work: Work, plan: dict[str, MethodSpec | RefereeSpec]) -> dict:
    """Seconds per image of each method on the first OOD prompts, one image each.

    Each method generates n and n/4 images, in two interleaved rounds in this process; the
    cost is the difference of the faster times over the difference in images, so loading the
    model and the first run's warm-up cancel out. Cached in cost.json by its settings.
    """
    s = work.settings
    cache = work.folder / "cost.json"
    key = {"plan": {name: _cost_key(work, spec) for name, spec in plan.items()},
           "cost_images": s.cost_images, "steps": s.steps, "threads": s.threads,
           "rounds": COST_ROUNDS}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["s_per_image"]
    lines = work.prompts("ood").read_text().splitlines()
    large = min(s.cost_images, len(lines))
    counts = (max(1, large // 4), large)
    if counts[0] == counts[1]:
        raise ValueError("the cost measurement needs at least 2 OOD prompts")
    times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in counts} for name in plan}
    for _ in range(COST_ROUNDS):
        for name, spec in plan.items():
            for n in counts:
                run = work.run_of("ood", spec, work.folder / "cost" /
                                  f"{name.replace('+', '-')}-{n}", num_images=1,
                                  prompts=lines[:n])
                t0 = time.perf_counter()
                make(run)
                times[name][n].append(time.perf_counter() - t0)
    result = {name: (min(t[counts[1]]) - min(t[counts[0]])) / (counts[1] - counts[0])
              for name, t in times.items()}
    cache.write_text(json.dumps({"key": key, "s_per_image": result, "seconds": times},
                                indent=1))
    return result


def _cost_key(work: Work, spec: MethodSpec | RefereeSpec) -> dict:
    """What says which method a cost was measured for."""
    if isinstance(spec, MethodSpec):
        return spec.index_fields()
    return work.run_of("ood", spec, work.folder / "cost", num_images=1).method_fields()


def _blocks(sweep: Path) -> dict:
    """Fig. 3: each block's cached evaluation from a `dpt sweep-blocks` folder."""
    rows = {}
    for block in sorted(p.parent.name for p in Path(sweep).glob("*/eval.json")):
        rows[block] = json.loads((Path(sweep) / block / "eval.json").read_text())
    if not rows:
        raise ValueError(f"--sweep {sweep} has no <block>/eval.json; expected a "
                         "`dpt sweep-blocks` run folder")
    return rows


def check_inputs(inputs: ReportInputs) -> None:
    """ValueError naming the flag of a trained folder that is not what it should be."""
    for name in ("dpt", "probe", "hn_itm", "match_only", "ground_only"):
        folder = getattr(inputs, name)
        if folder is not None:
            try:
                read_dpt_config(folder)
            except ValueError as err:
                raise ValueError(f"--{name.replace('_', '-')}: {err}") from None
    for name in ("curve", "sweep"):
        folder = getattr(inputs, name)
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"--{name} {folder} is not a folder")
