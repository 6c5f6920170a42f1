import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dpt_t2i.cli import main
from dpt_t2i.generation import methods as generate_methods
from dpt_t2i.io.folder_writer import output_lock

FAST = ["--steps", "2", "--guidance", "3.0"]


def _run(capsys, model, out, *args):
    code = main(["generate", "--model", str(model), "--out", str(out), *FAST, *args])
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def first_run(tiny_model, tmp_path_factory):
    """Two prompts, two images each, seed 5, batches of 3 (so one batch mixes prompts)."""
    out = tmp_path_factory.mktemp("gen") / "run"
    code = main(["generate", "--model", str(tiny_model), "--out", str(out), *FAST,
                 "--prompt", "a red circle", "--prompt", "two blue squares",
                 "--num-images", "2", "--seed", "5", "--batch-size", "3"])
    assert code == 0
    return out


def test_writes_images_and_index(first_run, tiny_model):
    files = sorted(p.name for p in first_run.iterdir())
    assert files == ["00000.png", "00001.png", "00002.png", "00003.png", "index.jsonl"]
    records = [json.loads(line) for line in (first_run / "index.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == files[:4]
    assert [r["seed"] for r in records] == [5, 6, 7, 8]
    assert [r["prompt"] for r in records] == ["a red circle"] * 2 + ["two blue squares"] * 2
    for r in records:
        assert (r["steps"], r["guidance"], r["scheduler"], r["method"]) == (2, 3.0, "ddim", "base")
        assert r["model"] == str(tiny_model.resolve())
    image = Image.open(first_run / "00000.png")
    assert image.size == (16, 16) and image.mode == "RGB"
    assert not any(p.name.startswith(".") for p in first_run.parent.iterdir())  # no staging left


def test_same_seed_gives_identical_files_and_other_seeds_differ(first_run, tiny_model, tmp_path,
                                                               capsys):
    code, _ = _run(capsys, tiny_model, tmp_path / "again", "--prompt", "a red circle",
                   "--prompt", "two blue squares", "--num-images", "2", "--seed", "5",
                   "--batch-size", "3")
    assert code == 0
    for name in ("00000.png", "00001.png", "00002.png", "00003.png", "index.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (first_run / name).read_bytes()
    code, _ = _run(capsys, tiny_model, tmp_path / "other", "--prompt", "a red circle",
                   "--num-images", "2", "--seed", "6")
    assert code == 0
    first = np.asarray(Image.open(first_run / "00000.png"))  # seed 5
    other = np.asarray(Image.open(tmp_path / "other" / "00000.png"))  # seed 6
    assert np.abs(first.astype(int) - other).max() > 10


def test_image_matches_plain_diffusers(first_run, tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7))
    image = pipe("two blue squares", num_inference_steps=2, guidance_scale=3.0, latents=noise,
                 output_type="np").images[0]
    expected = (image * 255).round().astype(np.uint8)
    ours = np.asarray(Image.open(first_run / "00002.png"))  # image 2 has seed 5 + 2
    assert np.abs(ours.astype(int) - expected).max() <= 2


def test_prompts_file_skips_blank_lines(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n   \na green triangle\n")
    code, _ = _run(capsys, tiny_model, tmp_path / "out", "--prompts-file", str(prompts),
                   "--num-images", "1", "--scheduler", "euler-a")
    assert code == 0
    records = [json.loads(x) for x in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a red circle", "a green triangle"]
    assert [r["seed"] for r in records] == [0, 1]


def test_prompts_are_read_as_every_command_reads_them(tiny_model, tmp_path, capsys):
    """A byte-order mark opening the file is no prompt text; a trailing period is dropped;
    capitals are the tokenizer's lower case, for the Shapes grammar too."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeffa red circle.\nTwo Blue squares .\n".encode())
    code, _ = _run(capsys, tiny_model, tmp_path / "file", "--prompts-file", str(prompts),
                   "--num-images", "1")
    assert code == 0
    code, _ = _run(capsys, tiny_model, tmp_path / "flags", "--prompt", " a red circle. ",
                   "--prompt", "Two Blue squares", "--num-images", "1")
    assert code == 0
    for run in ("file", "flags"):
        index = (tmp_path / run / "index.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in index]
        assert [r["prompt"] for r in records] == ["a red circle", "Two Blue squares"]
    assert (tmp_path / "file" / "00000.png").read_bytes() == \
        (tmp_path / "flags" / "00000.png").read_bytes()


def test_existing_run_needs_overwrite(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, tiny_model, out, "--prompt", "a red circle", "--num-images", "3")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, captured = _run(capsys, tiny_model, out, "--prompt", "a red circle", "--num-images", "1")
    assert code == 2 and "--overwrite" in captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, _ = _run(capsys, tiny_model, out, "--prompt", "a blue square", "--num-images", "1",
                   "--overwrite")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "index.jsonl"]  # stale ones gone
    assert json.loads((out / "index.jsonl").read_text())["prompt"] == "a blue square"


def test_plain_model_takes_any_words(tiny_model_plain, tmp_path, capsys):
    code, _ = _run(capsys, tiny_model_plain, tmp_path / "out", "--prompt", "a pink dog",
                   "--num-images", "1", "--guidance", "1")
    assert code == 0 and (tmp_path / "out" / "00000.png").is_file()


def test_interruption_leaves_nothing(tiny_model, tmp_path, capsys, monkeypatch):
    def interrupted(bundle, records, folder, *args):
        (folder / records[0]["file"]).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_methods, "render", interrupted)
    code, captured = _run(capsys, tiny_model, tmp_path / "out", "--prompt", "a red circle")
    assert code == 130 and "interrupted" in captured.err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ bad input

OK = ["--prompt", "a red circle"]
BAD = {  # case: (arguments, with {tmp} for the test's folder, {plain} for the tiny model
    # without Shapes vocabulary; what the error must say)
    "empty prompt": (["--prompt", "  "], "is empty"),
    "no prompt": ([], "no prompt"),
    "both prompt kinds": ([*OK, "--prompts-file", "{tmp}/empty.txt"], "not both"),
    "empty prompts file": (["--prompts-file", "{tmp}/empty.txt"], "has no prompts"),
    "missing prompts file": (["--prompts-file", "{tmp}/nope.txt"], "does not exist"),
    "unknown word": (["--prompt", "a pink circle"], "'pink'.*known words: a an and"),
    "missing model": ([*OK, "--model", "{tmp}/nowhere"], "does not exist"),
    "not a diffusers folder": ([*OK, "--model", "{tmp}/not-a-model"], "no model_index.json"),
    "model is a file": ([*OK, "--model", "{tmp}/a-file"], "is not a folder"),
    "zero images": ([*OK, "--num-images", "0"], "--num-images must be a positive"),
    "zero steps": ([*OK, "--steps", "0"], "--steps must be a positive"),
    "negative steps": ([*OK, "--steps", "-3"], "--steps must be a positive"),
    "zero batch": ([*OK, "--batch-size", "0"], "--batch-size must be a positive"),
    "unknown scheduler": ([*OK, "--scheduler", "heun"], "'heun'; expected one of ddim, pndm"),
    "unwritable out": ([*OK, "--out", "/proc/dpt-test/out"], "cannot write in /proc"),
    "out under a file": ([*OK, "--out", "{tmp}/a-file/out"], "a-file is a file"),
    "out is a file": ([*OK, "--out", "{tmp}/a-file"], "a-file is a file"),
    "too long": (["--prompt", " ".join(["a red circle"] * 6), "--model", "{plain}"],
                 "tokens long"),
    "too long for the grammar": (["--prompt", " ".join(["a red circle"] * 6)],
                                 "is not one the Shapes grammar reads.*at word 4, got 'a'"),
    "grammar cannot read it": (["--prompt", "circle red a"],
                               r"prompt 'circle red a' is not one the Shapes grammar reads, so "
                               r"`dpt evaluate` could not judge its images: expected 'a' or a "
                               r"number word at word 1, got 'circle'"),
    "line break in a prompt": (["--prompt", "a red circle\nand a blue square"],
                               r"--prompt number 1 'a red circle\\nand a blue square' holds a "
                               "line break; a prompt is one line of text"),
    "10 kB prompt, clipped": (["--prompt", "a red circle " * 800, "--model", "{plain}"],
                              r"^dpt generate: error: prompt 'a red circle (a red circle ){5}a "
                              r"'\.\.\. \(10399 characters\) is \d+ tokens long"),
    "10 kB word, clipped": (["--prompt", "a red " + "x" * 10_000],
                            r"word 'x{80}'\.\.\. \(10000 characters\) in prompt 'a red x{74}'"
                            r"\.\.\. \(10006 characters\) is not in the vocabulary"),
    "steps past the schedule": ([*OK, "--steps", "1001"],
                                r"--steps must be at most 1000 on this model \(its scheduler's "
                                r"num_train_timesteps\), got 1001"),
    "seed past 2**63": ([*OK, "--seed", str(2**64)],
                        rf"--seed {2**64} gives the run's 4 images seeds up to {2**64 + 3}; a "
                        rf"seed must be at most {2**63 - 1} \(2\*\*63 - 1\)"),
    "last seed past 2**63": ([*OK, "--seed", str(2**63 - 1), "--num-images", "2"],
                             rf"so --seed at most {2**63 - 2} here"),
    "negative seed": ([*OK, "--seed", "-1"], "--seed must be 0 or more, got -1"),
    "dpt heads truncated": ([*OK, "--dpt", "{tmp}/heads-truncated"],
                            r"cannot read .*heads-truncated/heads.safetensors \(.*\); expected a "
                            "whole safetensors file"),
    "dpt lora truncated": ([*OK, "--dpt", "{tmp}/lora-truncated"],
                           r"cannot read .*lora-truncated/lora.safetensors \(.*\); expected a "
                           "whole safetensors file"),
    "dpt lora missing": ([*OK, "--dpt", "{tmp}/lora-missing"],
                         r"lora-missing/lora.safetensors is missing; the DPT folder's "
                         r"dpt_config.json says it holds the LoRA weights"),
    "dpt config a list": ([*OK, "--dpt", "{tmp}/config-list"],
                          r"config-list/dpt_config.json is not a valid DPT config: expected a "
                          "JSON object .*, got a list"),
    "negative eta": ([*OK, "--self-correct", "-0.5"], "--self-correct must be a finite number > 0"),
    "zero eta": ([*OK, "--self-correct", "0"], "--self-correct must be a finite number > 0"),
    "nan eta": ([*OK, "--self-correct", "nan"], "--self-correct must be a finite number > 0"),
    "infinite eta": ([*OK, "--self-correct", "inf"], "--self-correct must be a finite number > 0"),
    "reversed range": ([*OK, "--self-correct", "1", "--self-correct-range", "500", "100"],
                       "finite LOW <= HIGH, got 500.0 100.0"),
    "base with dpt": ([*OK, "--base", "--dpt", "{tmp}/not-a-model"], "cannot go with --dpt"),
    "base with eta": ([*OK, "--base", "--self-correct", "1"], "cannot go with --self-correct"),
    "eta without dpt": ([*OK, "--self-correct", "1"], "needs DPT weights: pass --dpt PATH"),
    "dpt not a folder": ([*OK, "--dpt", "{tmp}/not-a-model"], "is not a DPT folder"),
    "device not a device": ([*OK, "--device", "banana"],
                            "--device 'banana' is not a torch device name"),
    "device a missing gpu": ([*OK, "--device", "cuda:99"],
                             r"--device cuda:99: this machine has \d+ CUDA device\(s\) that "
                             "torch can use"),
}


def broken_dpt(kind, tiny_dpt, folder):
    """A copy of `tiny_dpt` at `folder`, broken as `kind` says (a key of BROKEN_DPT)."""
    shutil.copytree(tiny_dpt, folder)
    if kind == "heads-truncated":  # cut inside the header
        data = (tiny_dpt / "heads.safetensors").read_bytes()
        (folder / "heads.safetensors").write_bytes(data[:500])
    elif kind == "lora-truncated":  # the header whole (8 bytes of length, then JSON), a tensor cut
        data = (tiny_dpt / "lora.safetensors").read_bytes()
        (folder / "lora.safetensors").write_bytes(data[:8 + int.from_bytes(data[:8], "little")
                                                       + 10])
    elif kind == "lora-missing":
        (folder / "lora.safetensors").unlink()
    elif kind == "config-list":
        (folder / "dpt_config.json").write_text("[]")
    return folder


BROKEN_DPT = ("heads-truncated", "lora-truncated", "lora-missing", "config-list")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, tiny_model, tiny_model_plain, tiny_dpt,
                                                  tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "a-file").write_text("x")
    args, pattern = BAD[case]
    for kind in BROKEN_DPT:
        if f"{{tmp}}/{kind}" in args:
            broken_dpt(kind, tiny_dpt, tmp_path / kind)
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "out"
    code = main(["generate", "--model", str(tiny_model), "--out", str(out), *FAST,
                 *(a.format(tmp=tmp_path, plain=tiny_model_plain) for a in args)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dpt generate: error: ")
    assert re.search(pattern, err), err
    assert not out.exists()
    assert sorted(tmp_path.rglob("*")) == before


DIVERGING = {  # case: (arguments, what the error must say)
    "guidance 1e9": (["--guidance", "1e9"],
                     r"sampling diverged at step 1 of 2 \(timestep \d+\): the latents reached "
                     r"[\d.e+]+, past 1000; lower the guidance scale \(--guidance, 1e\+09 "
                     r"here\)$"),
    "self-correct 1e30": (["--self-correct", "1e30", "--self-correct-unit", "raw",
                           "--self-correct-mode", "carry", "--self-correct-range", "0", "1000"],
                          r"sampling diverged at step 1 of 2 \(timestep \d+\): the latents are "
                          r"no longer finite numbers; lower the self-correction step size "
                          r"\(--self-correct\) or the guidance scale \(--guidance, 3 here\)$"),
}


@pytest.mark.parametrize("case", list(DIVERGING))
def test_diverging_sampling_stops_with_one_error_line(case, tiny_model, tiny_dpt, tmp_path,
                                                      capsys):
    """Latents that blow up stop the run at the step they do (they would decode to noise or
    black), with the settings to lower; the progress bar aside, one line, and nothing written."""
    args, pattern = DIVERGING[case]
    code, captured = _run(capsys, tiny_model, tmp_path / "out", *OK, "--num-images", "1",
                          "--dpt", str(tiny_dpt), *args)
    assert code == 2
    errors = [line for line in captured.err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    assert re.search(pattern, captured.err.splitlines()[-1]), captured.err
    assert captured.err.splitlines()[-1].startswith("dpt generate: error: ")
    assert list(tmp_path.iterdir()) == []


def test_console_script_bad_model_path(tmp_path):
    dpt = shutil.which("dpt")
    command = [dpt] if dpt else [sys.executable, "-m", "dpt_t2i.cli"]
    result = subprocess.run(
        [*command, "generate", "--prompt", "a red circle", "--out", str(tmp_path / "out"),
         "--model", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpt generate: error: model folder")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ DPT methods


# the tiny random adapter's gradient is small: a raw step of 50 on every step moves the image
RAW_SC = ["--self-correct", "50", "--self-correct-unit", "raw", "--self-correct-mode", "carry",
          "--self-correct-range", "0", "1000"]


@pytest.fixture(scope="module")
def dpt_runs(tiny_model, tiny_dpt, tmp_path_factory):
    """The same two images (seeds 3, 4) by base, DPT, and DPT + self-correction."""
    root = tmp_path_factory.mktemp("methods")
    common = ["generate", "--model", str(tiny_model), *FAST, "--prompt", "a red circle",
              "--num-images", "2", "--seed", "3"]
    methods = {"base": [], "dpt": ["--dpt", str(tiny_dpt)],
               "sc": ["--dpt", str(tiny_dpt), *RAW_SC],
               "sc-again": ["--dpt", str(tiny_dpt), *RAW_SC]}
    for name, extra in methods.items():
        assert main([*common, "--out", str(root / name), *extra]) == 0
    return root


def _records(folder):
    return [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]


def _pixels(folder, k=0):
    return np.asarray(Image.open(folder / f"{k:05d}.png")).astype(int)


def test_methods_are_recorded(dpt_runs, tiny_dpt):
    assert {r["method"] for r in _records(dpt_runs / "base")} == {"base"}
    dpt = _records(dpt_runs / "dpt")[0]
    assert dpt["method"] == "dpt" and dpt["dpt"] == str(tiny_dpt.resolve()) and "eta" not in dpt
    sc = _records(dpt_runs / "sc")[0]
    assert (sc["method"], sc["eta"], sc["sc_range"], sc["sc_mode"]) == \
        ("dpt+sc", 50.0, [0.0, 1000.0], "carry") and "sc_unit" not in sc  # raw: unrecorded


def test_each_method_changes_the_image_and_is_deterministic(dpt_runs):
    for k in (0, 1):
        assert np.abs(_pixels(dpt_runs / "base", k) - _pixels(dpt_runs / "dpt", k)).max() > 3
        assert np.abs(_pixels(dpt_runs / "dpt", k) - _pixels(dpt_runs / "sc", k)).max() > 3
        assert (dpt_runs / "sc" / f"{k:05d}.png").read_bytes() == \
            (dpt_runs / "sc-again" / f"{k:05d}.png").read_bytes()


def test_dpt_of_another_model_is_a_usage_error(tiny_model, tmp_path, capsys):
    from dpt_t2i.io.dpt_folder import save_dpt
    from dpt_t2i.model.adapter import AdapterConfig
    from dpt_t2i.model.config import DPTConfig
    from dpt_t2i.model.heads import DPTHeads

    adapter = AdapterConfig(feature_dim=128, text_dim=32, d_model=32, n_heads=2, ffn_dim=64)
    save_dpt(tmp_path / "dpt", DPTHeads(adapter), DPTConfig(block="up0", adapter=adapter))
    code, captured = _run(capsys, tiny_model, tmp_path / "out", *OK, "--dpt",
                          str(tmp_path / "dpt"))
    assert code == 2 and "belong to another model" in captured.err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ one writer, resume

# `dpt generate` that stops for good once image 1's PNG is written, before its index line (the
# moment a kill leaves the most to clean up): the test kills it there, so no timing is involved
STOPS_AT_IMAGE_1 = """
import sys, time
from dpt_t2i.generation import methods
written = []

def write_png(path, image, write=methods.write_png):
    write(path, image)
    written.append(path)
    while len(written) == 2:
        time.sleep(1)

methods.write_png = write_png
from dpt_t2i.cli import main
sys.exit(main(sys.argv[1:]))
"""
RESUMED = ["--prompt", "a red circle", "--prompt", "two blue squares", "--num-images", "3",
           "--batch-size", "1"]


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _one_line_error(capsys, code, pattern):
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("dpt generate: error: "), err
    assert re.search(pattern, err), err


def test_killed_run_resumes_to_the_uninterrupted_folder(tiny_model, tmp_path, capsys):
    out, stage = tmp_path / "run" / "out", tmp_path / "run" / ".out.partial"
    argv = ["generate", "--model", str(tiny_model), *FAST, *RESUMED, "--out", str(out)]
    run = subprocess.Popen([sys.executable, "-c", STOPS_AT_IMAGE_1, *argv],
                           env={**os.environ, "OMP_NUM_THREADS": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (stage / "00001.png").is_file():
            assert run.poll() is None, "the run ended before it was killed"
            time.sleep(0.05)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert not out.exists()
    assert [json.loads(x)["file"] for x in (stage / "index.jsonl").read_text().splitlines()] \
        == ["00000.png"]  # image 1 written, not indexed
    _one_line_error(capsys, main(argv), r"has an unfinished run \(1 of 6 images made, in "
                                        r".*\.out\.partial\); pass --resume to finish it, or "
                                        r"--overwrite to start over")
    _one_line_error(capsys, main([*argv, "--resume", "--steps", "3"]),
                    r"--resume: the unfinished run .* was planned with other settings "
                    r"\(00000\.png: steps 2 then, 3 now\)")
    _one_line_error(capsys, main([*argv, "--resume", "--batch-size", "2"]),
                    r"--batch-size 1 then, 2 now")
    _one_line_error(capsys, main([*argv, "--resume", "--overwrite"]),
                    r"--resume keeps .* --overwrite discards")
    assert main([*argv, "--resume"]) == 0
    whole = tmp_path / "whole"
    assert main(["generate", "--model", str(tiny_model), *FAST, *RESUMED, "--out", str(whole)]) \
        == 0
    assert _files(out) == _files(whole)  # index and every PNG, byte for byte
    assert sorted(_files(out)) == [f"{k:05d}.png" for k in range(6)] + ["index.jsonl"]
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no staging, no lock left


def test_interrupted_run_keeps_its_images_for_resume_or_overwrite(tiny_model, tmp_path, capsys,
                                                                 monkeypatch):
    written = []

    def interrupted_at_image_2(path, image, write=generate_methods.write_png):
        if len(written) == 2:
            raise KeyboardInterrupt
        write(path, image)
        written.append(path)

    out = tmp_path / "out"
    monkeypatch.setattr(generate_methods, "write_png", interrupted_at_image_2)
    assert _run(capsys, tiny_model, out, *RESUMED)[0] == 130
    monkeypatch.undo()
    stage = tmp_path / ".out.partial"
    assert sorted(_files(stage)) == ["00000.png", "00001.png", "index.jsonl", "plan.json"]
    code, _ = _run(capsys, tiny_model, out, "--prompt", "a blue square", "--num-images", "1",
                   "--overwrite")
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((out / "index.jsonl").read_text())["prompt"] == "a blue square"


def test_resume_finds_a_finished_run_finished(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, tiny_model, out, *OK, "--resume")[0] == 0  # nothing to resume: a run
    before = _files(out)
    assert _run(capsys, tiny_model, out, *OK, "--resume")[0] == 0
    assert _files(out) == before
    code, captured = _run(capsys, tiny_model, out, *OK, "--resume", "--seed", "9")
    assert code == 2 and "already holds a run" in captured.err
    assert _files(out) == before


def test_second_writer_is_refused_and_writes_nothing(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    with output_lock(out):
        code = main(["generate", "--model", str(tiny_model), "--out", str(out), *FAST, *OK])
        assert [p.name for p in tmp_path.iterdir()] == [".out.lock"]  # the holder's
    _one_line_error(capsys, code, rf"{out} is being written by another run "
                                  rf"\(pid {os.getpid()}\); wait for it to end")
    assert list(tmp_path.iterdir()) == []


def test_second_writer_of_a_geneval_layout_is_refused(tiny_model, tmp_path, capsys):
    (tmp_path / "shapes.jsonl").write_text(json.dumps(
        {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
         "prompt": "a red circle"}) + "\n")
    with output_lock(tmp_path / "layout"):
        code = main(["generate", "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                     *FAST, "--benchmark", "geneval", "--benchmark-file",
                     str(tmp_path / "shapes.jsonl"), "--geneval-out", str(tmp_path / "layout")])
    _one_line_error(capsys, code, r"layout is being written by another run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes.jsonl"]


def test_stale_staging_is_cleaned_and_a_live_process_staging_kept(tiny_model, tmp_path, capsys):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / f".out.partial-{child.pid}-0123abcd"  # left by a killed run of old
    live = tmp_path / f".out.partial-{os.getpid()}-feedbeef"
    for stage in (dead, live):
        stage.mkdir()
        (stage / "00000.png").write_bytes(b"x")
    (tmp_path / ".out.lock").write_text("12345\n")  # a killed run's lock file: not held
    assert _run(capsys, tiny_model, tmp_path / "out", *OK, "--num-images", "1")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]


def test_bf16_samples_close_to_fp32_and_records_its_dtype(first_run, tiny_model, tiny_dpt,
                                                          tmp_path, capsys):
    """--dtype loads the model in that precision (here bf16 on the CPU; fp16 on a GPU), with
    DPT's LoRA fused and self-correction reading the heads in float32."""
    code, _ = _run(capsys, tiny_model, tmp_path / "bf16", "--prompt", "a red circle",
                   "--prompt", "two blue squares", "--num-images", "2", "--seed", "5",
                   "--batch-size", "3", "--dtype", "bf16")
    assert code == 0
    records = [json.loads(x) for x in (tmp_path / "bf16" / "index.jsonl").read_text().splitlines()]
    assert all(r["dtype"] == "bf16" for r in records)
    assert "dtype" not in json.loads((first_run / "index.jsonl").read_text().splitlines()[0])
    for name in ("00000.png", "00003.png"):
        half = np.asarray(Image.open(tmp_path / "bf16" / name), dtype=float)
        full = np.asarray(Image.open(first_run / name), dtype=float)
        assert 0 < np.abs(half - full).mean() < 3  # of 255 (0.54 measured): bf16's rounding, the same picture
    code, _ = _run(capsys, tiny_model, tmp_path / "sc", "--prompt", "a red circle", "--dtype",
                   "bf16", "--dpt", str(tiny_dpt), "--self-correct", "1",
                   "--self-correct-range", "0", "1000", "--num-images", "1")
    assert code == 0
