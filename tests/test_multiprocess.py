"""Two CPU processes under `accelerate launch` train the weights one process trains with
`--grad-accum 2`, bit for bit, and their run folder cannot be resumed on one process.

The launch is the one docs/training.md gives for CPUs: `ACCELERATE_USE_CPU=1 accelerate
launch --multi_gpu --num_processes 2` (`--cpu --num_processes 2` starts one process). Step k of
process r draws the samples and noise of slot (k * grad_accum + micro) * world + r, so the two
processes of a step see what the two micro-steps of one process see; DDP averages the two
gradients where accumulation sums the halves.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shapes_model.resume import assert_identical

from dpt_t2i.cli import main


def _launcher_missing() -> str | None:
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        return "torch.distributed with gloo is not available"
    try:
        import accelerate.commands.launch  # noqa: F401
    except ImportError:
        return "accelerate's launcher is not installed"
    return None


def _free_port() -> int:
    """A port no other test run is using now (two launches on 29500 would meet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, argv: list, cwd, entry: list[str] | None = None
            ) -> subprocess.CompletedProcess:
    """`dpt argv` on n CPU processes (`entry`: what the launcher starts instead of `dpt`)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              *(entry or ["-m", "dpt_t2i.cli"])]
    return subprocess.run(launch + [str(a) for a in argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(_launcher_missing() is not None, reason=str(_launcher_missing()))
def test_two_processes_train_what_one_trains_with_two_micro_steps(tiny_model, tmp_path,
                                                                  capsys):
    common = ["probe", "--model", tiny_model, "--block", "up0", "--d-model", 32,
              "--ground-queries", 4, "--steps", 2, "--batch", 2, "--checkpoint-every", 1,
              "--seed", 3]
    two = _launch(2, common + ["--run-dir", tmp_path / "two"], tmp_path,
                  entry=[str(Path(__file__).parent / "ddp_teardown_entry.py")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("DPT weights:") == 1  # the main process reports
    # each process freed its DDP wrapper before the group (else it may hang at exit)
    assert two.stdout.count("DDP wrappers alive at destroy_process_group: 0") == 2, two.stdout
    assert main([str(a) for a in common + ["--run-dir", tmp_path / "one",
                                           "--grad-accum", 2]]) == 0
    for folder in ("final", "step-00000001", "step-00000002"):
        assert_identical(tmp_path / "one" / folder, tmp_path / "two" / folder)
    record = json.loads((tmp_path / "two" / "run_config.json").read_text())
    assert (record["world_size"], record["global_batch"]) == (2, 4)
    rows = {name: [json.loads(line) for line in
                   (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("one", "two")}
    for one, two_row in zip(rows["one"], rows["two"]):  # the loss of both processes' samples
        assert two_row["loss"] == pytest.approx(one["loss"], rel=1e-6)
        assert two_row["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-6)

    shutil.rmtree(tmp_path / "two" / "final")  # the 2-process run, resumed on one process
    capsys.readouterr()
    resumed = ["probe", "--model", tiny_model, "--block", "up0", "--d-model", 32,
               "--ground-queries", 4, "--steps", 3, "--batch", 2, "--seed", 3,
               "--run-dir", tmp_path / "two"]
    assert main([str(a) for a in resumed]) == 2
    assert (f"{tmp_path / 'two'} was trained on 2 process(es) and this launch has 1"
            in capsys.readouterr().err)
