"""`dpt report` end to end on the shipped Shapes model, at a tiny size."""

from __future__ import annotations

import json
import shutil

import pytest

from dpt_t2i.cli import main
from dpt_t2i.io.dpt_folder import default_dpt_path


def dpt(*argv) -> int:
    return main([str(a) for a in argv])


QUICK = ["--per-family", 1, "--num-images", 1, "--n-itm", 4, "--n-itm-diffusion", 2,
         "--n-rec", 4, "--etas", "0,0.1", "--no-attend-excite", "--threads", 2,
         "--referees", "shapes-itm:sample,dpt:noise"]
REFEREE_ROWS = ["referee-shapes-itm-sample", "referee-dpt-noise"]


def _short_referee_presets(monkeypatch):
    """The report's referee rows with their presets cut to 2 iterations (the suite's time)."""
    from dataclasses import replace

    from dpt_t2i.eval import report_rows
    from dpt_t2i.generation.methods import referee_preset

    def short(model, init=None):
        preset = referee_preset(model, init)
        return replace(preset, iterations=2, referee_start=min(preset.referee_start, 1))

    monkeypatch.setattr(report_rows, "referee_preset", short)


def _tune_like(shipped, out):
    """A `dpt tune` final/ of the shipped adapter: small seeded LoRA on cross-attention."""
    import torch

    from dpt_t2i.io.bundle import default_model_path, load_bundle
    from dpt_t2i.io.dpt_folder import load_dpt, save_dpt
    from dpt_t2i.model.lora import LoraSettings, add_lora

    unet = load_bundle(default_model_path()).unet
    heads, config = load_dpt(shipped)
    config.lora = LoraSettings(rank=4, alpha=4.0, targets="cross")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in add_lora(unet, config.lora):
            p.copy_(0.02 * torch.randn(p.shape, generator=generator))
    save_dpt(out, heads, config, unet)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    shipped = default_dpt_path()
    curve = root / "tune-run"  # a tune run folder with one kept checkpoint
    _tune_like(shipped, curve / "final")
    shutil.copytree(curve / "final", curve / "step-00000010")
    sweep = root / "sweep" / "up1"
    sweep.mkdir(parents=True)
    block = {"itm": {s: {"overall": 0.6} for s in ("id", "ood")},
             "rec": {s: {"acc": 0.5} for s in ("id", "ood")}}
    (sweep / "eval.json").write_text(json.dumps(block))
    argv = ["report", "--out", root / "out", "--work", root / "work", "--probe", shipped,
            "--match-only", shipped, "--curve", curve, "--sweep", root / "sweep", *QUICK]
    with pytest.MonkeyPatch.context() as monkeypatch:
        _short_referee_presets(monkeypatch)
        assert dpt(*argv) == 0
    return root, argv


def test_report_writes_every_table_and_figure(report):
    root, _ = report
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "fig3-blocks.png", "fig4a-steps.png", "fig4b-eta.png", "fig5-grid.png",
        "report.json"]
    text = (out / "README.md").read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Table 4", "Fig. 3", "Fig. 4a", "Fig. 4b",
                    "Fig. 5"):
        assert f"## {heading}" in text
    assert "| hn_itm | not given |" in text


def test_report_numbers_are_the_folders_numbers(report):
    from dpt_t2i.eval.alignment import judge_folders, summarize

    root, _ = report
    data = json.loads((root / "out" / "report.json").read_text())
    assert list(data["generation"]) == ["base", "dpt", "dpt+sc", *REFEREE_ROWS]
    for name, folder in (("base", "base"), ("dpt+sc", "dpt-sc")):
        for split in ("ood", "id"):
            direct = summarize(judge_folders([root / "work" / "gen" / f"{folder}-{split}"]))
            row = data["generation"][name][split]
            assert row["n"] == 5 and row["overall"] == direct[split]["overall"]
            assert row["fd"] > 0
    # paired with base: the shipped folder has no LoRA, so DPT alone is the base model's images
    assert set(data["paired"]) == {"dpt", "dpt+sc", *REFEREE_ROWS}
    assert data["paired"]["dpt"]["ood"]["overall"] == {"diff": 0.0, "low": 0.0, "high": 0.0}
    sc = data["paired"]["dpt+sc"]["ood"]
    assert sc["pairs"] == 5 and sc["overall"]["low"] <= sc["overall"]["diff"] <= \
        sc["overall"]["high"]
    assert sc["overall"]["diff"] == pytest.approx(data["generation"]["dpt+sc"]["ood"]["overall"]
                                                  - data["generation"]["base"]["ood"]["overall"])
    assert "| vs base [95% CI] |" in (root / "out" / "README.md").read_text()
    # eta 0 is the DPT row's generation, eta 0.1 the DPT + SC row's
    assert data["eta_sweep"]["0"] == data["generation"]["dpt"]["ood"]
    assert data["eta_sweep"]["0.1"] == data["generation"]["dpt+sc"]["ood"]
    disc = data["discriminative"]
    assert set(disc) == {"clip", "diffusion-itm", "stage1", "stage2", "shapes-referee"}
    assert disc["shapes-referee"]["itm"]["ood"]["n"] == 4
    assert disc["stage1"]["itm"] == disc["stage2"]["itm"]  # the same folder was given twice
    evals = [disc[k]["settings"]["unet_evals_per_pair"] for k in ("clip", "diffusion-itm")]
    assert evals == [0, 10]
    assert set(data["curve"]) == {"0", "10"}
    assert data["curve"]["10"]["disc"]["itm"] == disc["stage2"]["itm"]
    assert data["curve"]["0"]["generation"] == data["generation"]["base"]["ood"]
    assert set(data["ablations"]) == {"match-only", "both", "both+sc"}
    assert set(data["cost"]) == {"base", "dpt", "dpt+sc", *REFEREE_ROWS}


def test_report_referee_rows_are_dpt_referee_runs(report):
    from dpt_t2i.eval.alignment import judge_folders, summarize
    from dpt_t2i.generation.referee import SHAPES_NOISE_SETTINGS, SHAPES_SETTINGS
    from dpt_t2i.io.image_folder import read_index

    root, _ = report
    data = json.loads((root / "out" / "report.json").read_text())
    for name, referee, preset in (("referee-shapes-itm-sample", "shapes-itm", SHAPES_SETTINGS),
                                  ("referee-dpt-noise", "dpt", SHAPES_NOISE_SETTINGS)):
        for split in ("ood", "id"):
            folder = root / "work" / "gen" / f"{name}-{split}"
            records = read_index(folder)
            assert len(records) == 5 and {r["referee"] for r in records} == {referee}
            assert {(r["init"], r["iterations"], r["t_schedule"]) for r in records} == \
                {(preset.init, 2, preset.t_schedule)}
            assert ("dpt" in records[0]) == (referee == "dpt")
            direct = summarize(judge_folders([folder]))[split]
            assert data["generation"][name][split]["overall"] == direct["overall"]
        diff = data["paired"][name]["ood"]["overall"]["diff"]
        assert diff == pytest.approx(data["generation"][name]["ood"]["overall"]
                                     - data["generation"]["base"]["ood"]["overall"])
    text = (root / "out" / "README.md").read_text()
    assert "| referee: Shapes referee, from the model's sample |" in text
    assert "| referee: DPT, from noise |" in text
    assert "| Shapes referee (the referee rows' referee) |" in text


def test_a_second_report_reads_the_cache(report, capsys, monkeypatch):
    root, argv = report
    _short_referee_presets(monkeypatch)  # the presets the cached referee rows were made with
    stamp = (root / "work" / "gen" / "base-ood" / "index.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert dpt(*argv) == 0
    assert "report: generating" not in capsys.readouterr().out
    assert (root / "work" / "gen" / "base-ood" / "index.jsonl").stat().st_mtime_ns == stamp


def test_a_cached_folder_made_otherwise_is_not_reused(report):
    from dataclasses import replace

    from dpt_t2i.eval.report import ReportSettings, Work
    from dpt_t2i.generation.methods import SamplerSettings, choose_method
    from dpt_t2i.io.folder_writer import holds_run

    root, _ = report
    work = Work(root / "work", ReportSettings(per_family=1, num_images=1))
    folder = root / "work" / "gen" / "base-ood"
    base = choose_method(work.model, base=True)
    run = work.folder_run("ood", base, folder)
    assert holds_run(folder, run.plan())
    assert not holds_run(folder, replace(run, sampler=SamplerSettings(guidance=5)).plan())
    assert not holds_run(folder, work.folder_run("ood", base, folder, num_images=2).plan())
    other = Work(root / "work", ReportSettings(per_family=1, num_images=1, seed=7))
    assert not holds_run(folder, other.folder_run("ood", base, folder).plan())


@pytest.mark.parametrize("extra,message", [
    (["--etas", "0,-1"], "--etas"),
    (["--eta", "0"], "--eta must be"),
    (["--eta", "10"], "<= 1 (a fraction of the noise level), got 10"),
    (["--etas", "0,5"], "--etas must be comma-separated numbers from 0 to 1"),
    (["--hn-itm", "/nonexistent"], "--hn-itm"),
    (["--per-family", "0"], "--per-family"),
    (["--referees", "shapes-itm:canvas"], "--referees takes comma-separated REFEREE:INIT"),
    (["--referees", "blip2-itm:noise"], "got 'blip2-itm:noise'"),
    (["--referee-images", "0"], "--referee-images must be >= 1, got 0"),
    (["--attend-excite-images", "0"], "--attend-excite-images must be >= 1, got 0"),
])
def test_report_input_errors(tmp_path, capsys, extra, message):
    assert dpt("report", "--out", tmp_path / "o", "--work", tmp_path / "w", *extra) == 2
    assert message in capsys.readouterr().err


def test_a_stage1_folder_other_than_dpt_gets_its_own_sc_row(tmp_path):
    from dpt_t2i.eval.report import ReportInputs, ReportSettings, methods
    from dpt_t2i.io.bundle import default_model_path

    shipped, tuned = default_dpt_path(), tmp_path / "tuned"
    _tune_like(shipped, tuned)
    model, settings = default_model_path(), ReportSettings(referees=())
    rows = methods(ReportInputs(dpt=tuned, probe=shipped), settings, model)
    probe_sc, dpt_sc = rows["probe+sc"], rows["dpt+sc"]
    assert (probe_sc.name, probe_sc.dpt, probe_sc.eta) == ("dpt+sc", shipped.resolve(),
                                                           settings.eta)
    assert (dpt_sc.dpt, dpt_sc.eta) == (tuned.resolve(), settings.eta)
    assert rows["dpt"].name == "dpt"  # the LoRA alone, without correction
    # the same folder as --dpt would repeat DPT + SC: no row
    assert methods(ReportInputs(dpt=shipped, probe=shipped), settings, model)["probe+sc"] is None
    assert methods(ReportInputs(dpt=shipped), settings, model)["probe+sc"] is None


def test_referee_rows_at_their_own_count_pair_with_base_at_that_count(tmp_path):
    from dpt_t2i.eval.report import ReportSettings, Work, _paired
    from dpt_t2i.eval.report_rows import RefereeSpec
    from dpt_t2i.eval.report_tables import _table1
    from dpt_t2i.generation.methods import choose_method

    settings = ReportSettings(per_family=2, num_images=4, referee_images=2,
                              attend_excite_images=3, splits=("ood",))
    work = Work(tmp_path / "work", settings)
    spec, base = RefereeSpec("shapes-itm", "noise"), choose_method(work.model, base=True)
    excite = choose_method(work.model, attend_excite=True)
    referee = work.run_of("ood", spec, tmp_path / "r")
    assert referee.num_images == 2 and work.run_of("ood", base, tmp_path / "b").num_images == 4
    assert work.run_of("ood", excite, tmp_path / "a").num_images == 3
    default = Work(tmp_path / "work", ReportSettings(per_family=1, num_images=3))
    assert default.run_of("ood", spec, tmp_path / "r").num_images == 3

    class Judged:  # verdicts of the planned images, all satisfied by the referee only
        asked = []

        def verdicts(self, name, split, spec, num_images=None):
            self.asked.append((name, num_images))
            run = work.run_of(split, spec, tmp_path / name, num_images)
            return [{"prompt": r["prompt"], "seed": r["seed"], "split": split,
                     "family": "object", "satisfied": name.startswith("referee")}
                    for r in run.plan()]

    judged = Judged()
    judged.settings = settings
    judged.images_of = work.images_of
    both = _paired(judged, {"base": base, "attend-excite": excite, spec.name: spec})
    assert judged.asked == [("base-n3", 3), ("attend-excite", None), ("base-n2", 2),
                            (spec.name, None)]
    paired = both[spec.name]["ood"]
    assert both["attend-excite"]["ood"]["pairs"] == 3 * len(referee.prompts)
    # every referee image pairs with a base image of the same prompt and seed
    assert paired["pairs"] == len(referee.plan()) and paired["object"]["diff"] == 1.0
    row = {"n": 1, "fd": 1.0, "overall": 0.5}
    data = {"settings": {"splits": ["ood"], "num_images": 4, "referee_images": 2, "seed": 7},
            "generation": {"base": {"ood": row}}}
    assert "Images a prompt: 4, but the referee rows 2; image k of a run has seed 7 + k" in \
        _table1(data)
    data["settings"]["attend_excite_images"] = 3
    assert "but Attend-and-Excite 3 and the referee rows 2;" in _table1(data)
    data["settings"].update(referee_images=None, attend_excite_images=4)
    assert "Images a prompt" not in _table1(data)


def test_a_stopped_generation_continues_from_its_finished_images(tmp_path, monkeypatch):
    from dpt_t2i.eval.report import ReportSettings, Work
    from dpt_t2i.generation.methods import choose_method
    from dpt_t2i.io import folder_writer
    from dpt_t2i.io.folder_writer import holds_run

    work = Work(tmp_path / "work", ReportSettings(per_family=2, num_images=1, steps=2))
    base = choose_method(work.model, base=True)
    real_add, calls = folder_writer.FolderWriter.add, []

    def add_then_stop(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the report stopped during the second batch
        real_add(self, batch)

    monkeypatch.setattr(folder_writer.FolderWriter, "add", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        work.generated("base", "ood", base)
    stage = tmp_path / "work" / "gen" / ".base-ood.partial"
    first = {p.name: p.stat().st_mtime_ns for p in stage.glob("*.png")}
    assert calls == [8, 2] and len(first) >= 8
    monkeypatch.setattr(folder_writer.FolderWriter, "add", real_add)
    out = work.generated("base", "ood", base)  # the next report
    run = work.run_of("ood", base, out)
    assert holds_run(out, run.plan()) and not stage.exists()
    kept = {name: (out / name).stat().st_mtime_ns for name in sorted(first)[:8]}
    assert kept == {name: first[name] for name in kept}  # the first batch was not made again
