"""`dpt probe / tune / tune-hn-itm --validation-*`: images during training, and the flags'
errors before any training."""

import json

import pytest

from dpt_t2i.cli import main

A, B = "a red circle", "a blue square above a green triangle"


def dpt(*argv) -> int:
    return main([str(a) for a in argv])


def test_tune_writes_validation_images_at_each_checkpoint(tiny_model, tmp_path, capsys):
    common = ["--model", tiny_model, "--steps", 2, "--batch", 2, "--checkpoint-every", 1]
    assert dpt("probe", "--run-dir", tmp_path / "p", "--block", "up0", "--d-model", 32,
               "--ground-queries", 4, *common) == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{A}.\n\n{B}\n")  # a trailing period is dropped, blank lines skipped
    assert dpt("tune", "--run-dir", tmp_path / "t", "--init", tmp_path / "p" / "final",
               *common, "--validation-prompts-file", prompts, "--validation-images", 2,
               "--validation-seed", 5, "--validation-self-correct") == 0
    folders = sorted(p.name for p in (tmp_path / "t" / "validation").iterdir())
    assert folders == ["step-00000001", "step-00000002"]
    records = [json.loads(line) for line in
               (tmp_path / "t" / "validation" / folders[0] / "index.jsonl").open()]
    assert [(r["method"], r["prompt"], r["seed"], r["step"]) for r in records] == [
        (m, p, s, 1) for m in ("dpt", "dpt+sc")
        for p, s in ((A, 5), (A, 6), (B, 7), (B, 8))]
    assert {(r["steps"], r["guidance"], r["scheduler"]) for r in records} == {(25, 7.5, "ddim")}
    sc = [r for r in records if r["method"] == "dpt+sc"]
    assert {(r["eta"], r["sc_mode"], r["sc_unit"]) for r in sc} == {(0.1, "shared", "noise")}
    assert all((tmp_path / "t" / "validation" / folders[0] / r["file"]).is_file()
               for r in records)
    recorded = json.loads((tmp_path / "t" / "run_config.json").read_text())["validation"]
    assert recorded["prompts"] == [A, B] and recorded["every"] is None
    assert (recorded["images"], recorded["seed"], recorded["self_correct"]) == (2, 5, 0.1)


@pytest.mark.parametrize("flags, message", [
    (["--validation-prompt", "a red dog"], "validation prompts: word 'dog' in prompt 'a red "
     "dog' is not in the vocabulary of the Shapes model"),
    (["--validation-prompt", "circle red a"], "validation prompts: prompt 'circle red a' is "
     "not one the Shapes grammar reads"),
    (["--validation-prompt", "a red circle", "--validation-every", 0],
     "--validation-every must be >= 1 step, got 0"),
    (["--validation-prompt", "a red circle", "--validation-images", 0],
     "--validation-images must be >= 1, got 0"),
    (["--validation-images", 2], "--validation-images needs --validation-prompt TEXT or "
     "--validation-prompts-file FILE"),
    (["--validation-self-correct"], "--validation-self-correct needs --validation-prompt"),
    (["--validation-prompt", "a red circle", "--validation-self-correct", 2],
     "--validation-self-correct must be in (0, 1], a fraction of the noise level"),
    (["--validation-prompt", "a red circle", "--validation-seed", -1],
     "--validation-seed must be 0 or more, got -1"),
    (["--validation-prompt", "a red circle", "--validation-prompts-file", "p.txt"],
     "--validation-prompt or with --validation-prompts-file, not both"),
    (["--validation-prompts-file", "missing.txt"], "prompts file missing.txt does not exist"),
    (["--validation-prompt", " . "], "--validation-prompt number 1 is empty")])
def test_bad_validation_flags_stop_before_training(tmp_path, capsys, monkeypatch, flags,
                                                   message):
    monkeypatch.chdir(tmp_path)
    assert dpt("probe", "--run-dir", tmp_path / "run", "--steps", 1, *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpt probe: error: ") and message in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_hn_itm_has_no_adapter_to_self_correct_with(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        dpt("tune-hn-itm", "--run-dir", tmp_path / "run", "--validation-prompt", "a red circle",
            "--validation-self-correct")
    assert exit_.value.code == 2
    assert "unrecognized arguments: --validation-self-correct" in capsys.readouterr().err
