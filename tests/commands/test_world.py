"""`dpt world ...`: the training stages and assembly from the command line."""

import json

import pytest

from dpt_t2i.cli import main
from dpt_t2i.shapes_model import vae as vae_module


def test_assemble_writes_the_pipeline_and_the_runs_summaries(shapes_parts, tmp_path, capsys):
    out = tmp_path / "pipeline"
    code = main(["world", "assemble", "--vae", str(shapes_parts["vae"]),
                 "--clip", str(shapes_parts["clip"]), "--unet", str(shapes_parts["unet"]),
                 "--out", str(out)])
    assert code == 0 and capsys.readouterr().out == f"wrote {out}\n"
    assert (out / "model_index.json").is_file() and (out / "shapes_world.json").is_file()
    runs = json.loads((out / "training.json").read_text())
    assert runs == {name: {"step": 0, "part": name} for name in ("vae", "clip", "unet")}


@pytest.mark.parametrize("missing", ["--vae", "--clip", "--unet"])
def test_assemble_with_a_missing_part_exits_2_with_one_line(missing, shapes_parts, tmp_path,
                                                            capsys):
    parts = {f"--{k}": str(v) for k, v in shapes_parts.items()}
    parts[missing] = str(tmp_path / "nowhere")
    argv = ["world", "assemble", *(x for kv in parts.items() for x in kv),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"dpt world: error: {missing} {tmp_path / 'nowhere'} has no config.json")
    assert not (tmp_path / "out").exists()


def test_train_vae_runs_resumes_and_prints_its_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vae_module, "latent_scale", lambda vae, seed: 0.5)
    argv = ["world", "train-vae", "--run-dir", str(tmp_path), "--steps", "2", "--batch", "2",
            "--crop-steps", "1", "--checkpoint-every", "1"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["scaling_factor"] == 0.5
    assert (tmp_path / "latest").read_text() == "step-00000002"
    assert json.loads((tmp_path / "final" / "config.json").read_text())["scaling_factor"] == 0.5
    # a second call with more steps continues from step 2
    assert main([*argv[:4], "--steps", "3", *argv[6:]]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 3
    log = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log == [0]  # step 0 logged once: the second call began at step 2
