"""`dpt world train-referee`: trains, resumes, writes the fp16 folder, refuses bad flags."""

import json

from dpt_t2i.cli import main
from dpt_t2i.io.shapes_referee import load_shapes_referee

TINY = ["--width", "16", "--stem-channels", "4", "--image-layers", "1", "--text-layers", "1"]


def test_train_referee_runs_resumes_and_writes_the_folder(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "shipped"
    argv = ["world", "train-referee", "--run-dir", str(run), "--steps", "2", "--batch", "2",
            "--checkpoint-every", "1", "--threads", "1", *TINY]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["batch"] == 2 and summary["seed"] == 0
    assert (run / "latest").read_text() == "step-00000002"
    model = load_shapes_referee(out)
    assert model.config.width == 16 and model.config.text_layers == 1
    assert load_shapes_referee(run / "final").config == model.config
    # more steps continue from step 2; other model flags are refused in one line
    assert main([*argv[:4], "--steps", "3", *argv[6:]]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 3
    assert main([*argv, "--width", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings (width)" in err


def test_train_referee_refuses_bad_numbers(tmp_path, capsys):
    argv = ["world", "train-referee", "--run-dir", str(tmp_path), "--steps", "0"]
    assert main(argv) == 2
    assert "need steps >= 1" in capsys.readouterr().err
    assert main([*argv[:4], "--steps", "1", "--width", "30"]) == 2
    assert "width 30 must be a multiple of heads 4" in capsys.readouterr().err
