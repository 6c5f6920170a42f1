"""The engine of `dpt report`: every generation and evaluation behind the paper's Tables 1-4
and Figs. 3-5, on the Shapes model, each run once and cached in a work folder.

Everything goes through the project's own commands (`dpt generate`, `dpt evaluate-disc`)
with the same prompts (the Shapes benchmark lists of both splits) and the same seeds for
every method. A cached generation is reused only when its `index.jsonl` holds exactly the
records `dpt generate` would plan for the same arguments; a cached discriminative result
only when it was made by the same arguments. So a stopped report continues where it was,
and a changed setting is recomputed rather than mixed in.

Work folder layout: `prompts-<split>.txt`, `gen/<method>-<split>/` (image folders),
`gen/<method>-<split>.eval.json` (alignment per family and Fréchet distance),
`disc/<name>.json`, `curve/step-<k>/` (DPT folders of a tune run's checkpoints), `cost.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

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
    eta: float = 10.0                  # self-correction strength of "DPT + SC"
    etas: tuple[float, ...] = (0, 5, 10, 20, 40)  # Fig. 4b
    n_itm: int = 200                   # ITM items per split (DPT and CLIP)
    n_itm_diffusion: int = 100         # ITM items per split for DiffusionITM (10 U-Net passes each)
    n_rec: int = 400
    disc_seed: int = 1
    cost_images: int = 16              # images per method in the cost measurement
    attend_excite: bool = True
    grid_prompts: int = 5              # Fig. 5 rows: the first OOD prompt of each family
    per_family: int = 20               # benchmark prompts per family (fewer: a quick report)
    threads: int | None = None         # torch threads of the whole report (one process)
    splits: tuple[str, ...] = field(default=SPLITS)


class Work:
    """Runs and caches the report's generations and evaluations in one folder."""

    def __init__(self, folder: Path, settings: ReportSettings):
        self.folder, self.settings = Path(folder), settings
        for sub in ("gen", "disc", "curve"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def prompts(self, split: str) -> Path:
        from ..data.shapes.splits import benchmark_prompts

        path = self.folder / f"prompts-{split}.txt"
        text = "".join(p.text + "\n"
                       for p in benchmark_prompts(split, self.settings.per_family))
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        return path

    def generate_args(self, split: str, method_args: list[str], num_images: int | None = None,
                      prompts: Path | None = None) -> list[str]:
        s = self.settings
        return ["generate", "--prompts-file", str(prompts or self.prompts(split)),
                "--num-images", str(num_images or s.num_images), "--seed", str(s.seed),
                "--steps", str(s.steps), *method_args]

    def generated(self, name: str, split: str, method_args: list[str]) -> Path:
        """The image folder of a method on a split, generated unless a matching one exists."""
        folder = self.folder / "gen" / f"{name}-{split}"
        argv = self.generate_args(split, method_args)
        if not _matches_plan(folder, argv):
            print(f"report: generating {name} on {split}", flush=True)
            _dpt([*argv, "--out", str(folder), "--overwrite"])
        return folder

    def alignment(self, name: str, split: str, method_args: list[str]) -> dict:
        """The judge's accuracy per family, overall, and the Fréchet distance to renders."""
        folder = self.generated(name, split, method_args)
        cache = folder.parent / f"{folder.name}.eval.json"
        index = (folder / "index.jsonl").read_text()
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("index") == index:
                return cached["row"]
        from .alignment import judge_folders, summarize
        from .quality import quality_by_split

        verdicts = judge_folders([folder])
        row = summarize(verdicts)[split]
        row["fd"] = quality_by_split(verdicts)[split]
        cache.write_text(json.dumps({"index": index, "row": row}))
        return row

    def disc(self, name: str, argv: list[str]) -> dict:
        """`dpt evaluate-disc --json` with these arguments, cached by them."""
        cache = self.folder / "disc" / f"{name}.json"
        argv = ["evaluate-disc", *argv, "--seed", str(self.settings.disc_seed), "--json"]
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("argv") == argv:
                return cached["result"]
        print(f"report: discriminative evaluation {name}", flush=True)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            _dpt(argv)
        result = json.loads(buffer.getvalue().strip().splitlines()[-1])
        cache.write_text(json.dumps({"argv": argv, "result": result}, indent=1))
        return result

    def checkpoint_folder(self, run_dir: Path, step: int) -> Path:
        """A DPT folder of a tune run's checkpoint `step` (its config from the run's final/)."""
        from ..io.dpt_folder import CONFIG_FILE

        source = Path(run_dir) / f"step-{step:08d}"
        out = self.folder / "curve" / f"step-{step}"
        if not out.is_dir():
            final = Path(run_dir) / "final" / CONFIG_FILE
            if not final.is_file():
                raise UsageError(f"--curve {run_dir} has no final/{CONFIG_FILE}; expected a "
                                 "finished `dpt tune` run folder")
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for file in ("heads.safetensors", "lora.safetensors"):
                shutil.copy2(source / file, tmp / file)
            shutil.copy2(final, tmp / CONFIG_FILE)
            tmp.rename(out)
        return out


def curve_steps(run_dir: Path) -> list[int]:
    """The steps of a tune run's kept checkpoints, ascending."""
    steps = sorted(int(p.name[5:]) for p in Path(run_dir).glob("step-*") if p.name[5:].isdigit())
    if not steps:
        raise UsageError(f"--curve {run_dir} has no step-* checkpoints; train it with "
                         "`dpt tune ... --checkpoint-every K --keep-checkpoints 0`")
    return steps


def _dpt(argv: list[str]) -> None:
    from ..cli import main

    code = main(argv)
    if code != 0:
        raise UsageError(f"`dpt {' '.join(argv)}` failed with exit code {code}")


def _matches_plan(folder: Path, argv: list[str]) -> bool:
    """Whether folder's index holds exactly the records `dpt generate argv` plans."""
    if not (folder / "index.jsonl").is_file():
        return False
    from ..cli import build_parser
    from ..commands import generate
    from ..commands.model_args import model_folder
    from ..commands.prompt_input import read_prompt_set
    from ..io.image_folder import read_index

    args = build_parser().parse_args([*argv, "--out", str(folder)])
    prompts, benchmark = read_prompt_set(args)
    model = model_folder(args.model)
    dpt = None if args.attend_excite else generate.dpt_folder(args, model)
    planned = generate.plan_images(prompts, args, model, dpt, benchmark)
    found = read_index(folder)
    if len(found) != len(planned):
        return False
    return all(all(f.get(k) == v for k, v in p.items()) for p, f in zip(planned, found)) and \
        all((folder / f["file"]).is_file() for f in found)


# ---------------------------------------------------------------------------------------
# the report


def methods(inputs: ReportInputs, settings: ReportSettings) -> dict[str, list[str] | None]:
    """Table 1's methods: name -> `dpt generate` arguments (None: its input is missing)."""
    dpt = ["--dpt", str(inputs.dpt)]
    return {
        "base": ["--base"],
        "attend-excite": ["--attend-excite"] if settings.attend_excite else None,
        "hn-itm": ["--dpt", str(inputs.hn_itm)] if inputs.hn_itm else None,
        "dpt": dpt,
        "dpt+sc": [*dpt, "--self-correct", f"{settings.eta:g}"],
    }


LABELS = {"base": "base model", "attend-excite": "Attend-and-Excite",
          "hn-itm": "HN-DiffusionITM (LoRA)", "dpt": "DPT", "dpt+sc": "DPT + SC",
          "match-only": "matching only", "ground-only": "grounding only",
          "both": "matching + grounding", "both+sc": "matching + grounding + SC"}


def build_report(work: Work, inputs: ReportInputs, out: Path, argv: list[str]) -> dict:
    """Run (or read) everything and write the tables, plots, grid and README into `out`."""
    s = work.settings
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data: dict = {"settings": {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in vars(s).items()},
                  "inputs": {k: str(v) if v else None for k, v in vars(inputs).items()}}
    plan = {name: margs for name, margs in methods(inputs, s).items() if margs is not None}
    table1 = {}
    for name in sorted(plan, key=lambda n: n == "attend-excite"):  # the slowest one last
        table1[name] = {split: work.alignment(name.replace("+", "-"), split, plan[name])
                        for split in s.splits}
    data["generation"] = {name: table1[name] for name in plan}
    data["ablations"] = _ablations(work, inputs, table1)
    data["discriminative"] = _discriminative(work, inputs)
    data["cost"] = _cost(work, inputs)
    data["eta_sweep"] = {f"{e:g}": work.alignment(_eta_name(e, s), "ood", _eta_args(inputs, e))
                         for e in s.etas}
    data["curve"] = _curve(work, inputs) if inputs.curve else None
    data["blocks"] = _blocks(inputs.sweep) if inputs.sweep else None
    from .report_tables import write_report

    write_report(out, data, work, inputs, argv)
    return data


def _eta_name(eta: float, s: ReportSettings) -> str:
    """Eta 0 is the DPT row's generation and the report's eta is DPT + SC's: reuse them."""
    return "dpt" if eta == 0 else "dpt-sc" if eta == s.eta else f"eta{eta:g}"


def _eta_args(inputs: ReportInputs, eta: float) -> list[str]:
    return ["--dpt", str(inputs.dpt)] + (["--self-correct", f"{eta:g}"] if eta > 0 else [])


def _ablations(work: Work, inputs: ReportInputs, table1: dict) -> dict:
    rows = {}
    for name, folder in (("match-only", inputs.match_only), ("ground-only", inputs.ground_only)):
        if folder is not None:
            rows[name] = {"generation": {sp: work.alignment(name, sp, ["--dpt", str(folder)])
                                         for sp in work.settings.splits},
                          "disc": _dpt_disc(work, name, folder)}
    rows["both"] = {"generation": table1["dpt"], "disc": _dpt_disc(work, "stage2", inputs.dpt)}
    rows["both+sc"] = {"generation": table1["dpt+sc"], "disc": rows["both"]["disc"]}
    return rows


def _dpt_disc(work: Work, name: str, folder: Path) -> dict:
    s = work.settings
    return work.disc(name, ["--dpt", str(folder), "--n-itm", str(s.n_itm),
                            "--n-rec", str(s.n_rec)])


def _discriminative(work: Work, inputs: ReportInputs) -> dict:
    s = work.settings
    rows = {"clip": work.disc("clip", ["--method", "clip", "--n-itm", str(s.n_itm)]),
            "diffusion-itm": work.disc("diffusion-itm", ["--method", "diffusion-itm", "--n-itm",
                                                         str(s.n_itm_diffusion)])}
    if inputs.hn_itm:
        rows["hn-diffusion-itm"] = work.disc("hn-diffusion-itm", [
            "--method", "diffusion-itm", "--dpt", str(inputs.hn_itm), "--n-itm",
            str(s.n_itm_diffusion)])
    if inputs.probe:
        rows["stage1"] = _dpt_disc(work, "stage1", inputs.probe)
    rows["stage2"] = _dpt_disc(work, "stage2", inputs.dpt)
    return rows


def _curve(work: Work, inputs: ReportInputs) -> dict:
    """Fig. 4a: OOD generation and discrimination at each kept checkpoint; step 0 is the
    base model's images (LoRA starts at zero) and stage 1's adapter (when --probe is given)."""
    s = work.settings
    points = {}
    if inputs.probe:
        points[0] = {"generation": work.alignment("base", "ood", ["--base"]),
                     "disc": _dpt_disc(work, "stage1", inputs.probe)}
    for step in curve_steps(inputs.curve):
        folder = work.checkpoint_folder(inputs.curve, step)
        points[step] = {"generation": work.alignment(f"curve{step}", "ood",
                                                     ["--dpt", str(folder)]),
                        "disc": work.disc(f"curve{step}", [
                            "--dpt", str(folder), "--n-itm", str(s.n_itm), "--n-rec",
                            str(s.n_rec)])}
    return points


def _cost(work: Work, inputs: ReportInputs) -> dict:
    """Seconds per image of each method on the first OOD prompts, one image each.

    Each method generates n and n/4 images, in two interleaved rounds in this process; the
    cost is the difference of the faster times over the difference in images, so loading the
    model and the first run's warm-up cancel out. Cached in cost.json by its settings.
    """
    s = work.settings
    cache = work.folder / "cost.json"
    plan = {name: margs for name, margs in methods(inputs, s).items() if margs is not None}
    key = {"plan": plan, "cost_images": s.cost_images, "steps": s.steps, "threads": s.threads,
           "rounds": COST_ROUNDS}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["s_per_image"]
    lines = work.prompts("ood").read_text().splitlines(True)
    large = min(s.cost_images, len(lines))
    counts = (max(1, large // 4), large)
    if counts[0] == counts[1]:
        raise UsageError("the cost measurement needs at least 2 OOD prompts")
    files = {}
    for n in counts:
        files[n] = work.folder / f"prompts-cost-{n}.txt"
        files[n].write_text("".join(lines[:n]))
    times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in counts} for name in plan}
    for _ in range(COST_ROUNDS):
        for name, margs in plan.items():
            for n in counts:
                argv = work.generate_args("ood", margs, num_images=1, prompts=files[n])
                folder = work.folder / "cost" / f"{name.replace('+', '-')}-{n}"
                t0 = time.perf_counter()
                _dpt([*argv, "--out", str(folder), "--overwrite"])
                times[name][n].append(time.perf_counter() - t0)
    result = {name: (min(t[counts[1]]) - min(t[counts[0]])) / (counts[1] - counts[0])
              for name, t in times.items()}
    cache.write_text(json.dumps({"key": key, "s_per_image": result, "seconds": times},
                                indent=1))
    return result


def _blocks(sweep: Path) -> dict:
    """Fig. 3: each block's cached evaluation from a `dpt sweep-blocks` folder."""
    rows = {}
    for block in sorted(p.parent.name for p in Path(sweep).glob("*/eval.json")):
        rows[block] = json.loads((Path(sweep) / block / "eval.json").read_text())
    if not rows:
        raise UsageError(f"--sweep {sweep} has no <block>/eval.json; expected a "
                         "`dpt sweep-blocks` run folder")
    return rows


def inputs_from_args(args: argparse.Namespace) -> ReportInputs:
    from ..io.dpt_folder import default_dpt_path, read_dpt_config

    inputs = ReportInputs(dpt=args.dpt or default_dpt_path(), probe=args.probe,
                          hn_itm=args.hn_itm, match_only=args.match_only,
                          ground_only=args.ground_only, curve=args.curve, sweep=args.sweep)
    for flag in ("dpt", "probe", "hn_itm", "match_only", "ground_only"):
        folder = getattr(inputs, flag)
        if folder is not None:
            try:
                read_dpt_config(folder)
            except ValueError as err:
                raise UsageError(f"--{flag.replace('_', '-')}: {err}") from None
    for flag in ("curve", "sweep"):
        folder = getattr(inputs, flag)
        if folder is not None and not Path(folder).is_dir():
            raise UsageError(f"--{flag} {folder} is not a folder")
    return inputs
