"""`dpt probe`, `dpt tune`, `dpt evaluate-disc` and `dpt sweep-blocks` end to end on a tiny model."""

import json

import pytest

from dpt_t2i.cli import main


def dpt(*argv) -> int:
    return main([str(a) for a in argv])


def test_probe_tune_evaluate_on_a_tiny_model(tiny_model, tmp_path, capsys):
    common = ["--model", tiny_model, "--steps", 2, "--batch", 2, "--checkpoint-every", 1]
    assert dpt("probe", "--run-dir", tmp_path / "p", "--block", "up0", "--d-model", 32,
               "--ground-queries", 4, *common) == 0
    assert (tmp_path / "p" / "final" / "dpt_config.json").is_file()
    assert dpt("tune", "--run-dir", tmp_path / "t", "--init", tmp_path / "p" / "final",
               "--lora-targets", "all", "--mse-weight", 0.5, *common) == 0
    probe = json.loads((tmp_path / "p" / "final" / "dpt_config.json").read_text())
    assert probe["condition"] == "each"  # the default: it measures better (docs)
    assert probe["training"]["settings"]["batch_negatives"] == 3
    config = json.loads((tmp_path / "t" / "final" / "dpt_config.json").read_text())
    assert config["condition"] == "each"  # stage 2 keeps stage 1's condition
    assert config["lora"] == {"rank": 4, "alpha": 4.0, "targets": "all"}
    assert config["training"]["stage"] == "tune"
    capsys.readouterr()
    assert dpt("evaluate-disc", "--dpt", tmp_path / "t" / "final", "--model", tiny_model,
               "--n-itm", 4, "--n-rec", 4, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["itm"]) == {"id", "ood"} and set(result["rec"]) == {"id", "ood"}
    assert set(result["itm"]["ood"]) == {"i2t", "t2i", "overall", "n"}
    assert result["rec"]["id"]["n"] == 4 and 0 <= result["rec"]["id"]["acc"] <= 1
    assert dpt("evaluate-disc", "--dpt", tmp_path / "t" / "final", "--model", tiny_model,
               "--n-itm", 4, "--n-rec", 0) == 0
    assert "image-text matching" in capsys.readouterr().out


def test_a_resumed_run_must_be_the_same_run(tiny_model, tmp_path, capsys):
    args = ["probe", "--run-dir", tmp_path / "p", "--model", tiny_model, "--block", "up0",
            "--d-model", 32, "--steps", 1, "--batch", 2]
    assert dpt(*args) == 0
    capsys.readouterr()
    assert dpt(*args[:-2], "--batch", 3) == 2
    assert "holds a different run (settings.batch differ)" in capsys.readouterr().err
    assert dpt(*args[:-2], "--batch", 3, "--resume", "no") == 0


def test_probe_resumes_past_damage_and_refuses_when_nothing_is_intact(tiny_model, tmp_path,
                                                                      capsys):
    run = tmp_path / "p"
    args = ["probe", "--run-dir", run, "--model", tiny_model, "--block", "up0", "--d-model", 32,
            "--steps", 2, "--batch", 2, "--checkpoint-every", 1, "--resume", "latest"]
    assert dpt(*args) == 0
    heads = run / "step-00000002" / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:-1])
    (run / "latest").write_text("step-0000000?")
    capsys.readouterr()
    assert dpt(*args) == 0  # resumes from step 1 and takes step 1 again
    assert capsys.readouterr().err.splitlines()[0] == (
        f"resuming from {run / 'step-00000001'} (step 1); latest holds b'step-0000000?', not a "
        "step folder name: took the newest intact step folder; skipped step-00000002: "
        f"heads.safetensors is truncated ({heads.stat().st_size - 1} of {heads.stat().st_size} "
        "bytes)")
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged == [0, 1]

    for step in (1, 2):  # now no checkpoint is whole
        heads = run / f"step-{step:08d}" / "heads.safetensors"
        heads.write_bytes(heads.read_bytes()[:-1])
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert dpt(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dpt probe: error: {run}: no intact checkpoint to resume from "
                          "(step-00000002: heads.safetensors is truncated")
    assert err.count("\n") == 1 and "nothing was deleted" in err and "--resume no" in err
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


@pytest.mark.parametrize("argv, message", [
    (["--block", "up9"], "unknown --block 'up9'; this U-Net has down0, down1, mid, up0, up1"),
    (["--t-min", "10", "--t-max", "10"], "need 0 <= --t-min < --t-max <= 1000"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--lr", "nan"], "--lr must be a finite number >= 0"),
    (["--coco-captions", "x.json"], "give both --coco-captions and --coco-images"),
    (["--refcoco-refs", "r.p", "--refcoco-instances", "i.json"],
     "RefCOCO files need --coco-captions"),
    (["--n-heads", "5"], "--n-heads must divide --d-model 128, got 5"),
    (["--n-heads", "0"], "--n-heads must divide --d-model 128, got 0"),
    (["--ffn-dim", "0"], "--ffn-dim must be >= 1, got 0"),
    (["--match-queries", "0"], "--ground-queries and --match-queries >= 1"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    (["--dropout", "nan"], "--dropout must be in [0, 1), got nan"),
    (["--negatives", "0"], "--negatives must be >= 1, got 0"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--grad-clip", "-1"], "--grad-clip must be a finite number >= 0, got -1.0"),
    (["--grad-clip", "inf"], "--grad-clip must be a finite number >= 0, got inf"),
    (["--lr-floor", "1.5"], "--lr-floor must be between 0 and 1, got 1.5"),
])
def test_probe_input_errors(tiny_model, tmp_path, capsys, argv, message):
    assert dpt("probe", "--run-dir", tmp_path / "p", "--model", tiny_model, *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_tune_needs_a_probe_folder(tiny_model, tmp_path, capsys):
    assert dpt("tune", "--run-dir", tmp_path / "t", "--model", tiny_model,
               "--init", tmp_path) == 2
    assert "--init: " in capsys.readouterr().err
    assert dpt("evaluate-disc", "--dpt", tmp_path, "--model", tiny_model) == 2
    assert "has no dpt_config.json" in capsys.readouterr().err


def test_tune_refuses_an_adapter_of_another_model(tiny_model, tmp_path, capsys):
    assert dpt("probe", "--run-dir", tmp_path / "p", "--steps", 1, "--batch", 2) == 0  # shipped
    capsys.readouterr()
    assert dpt("tune", "--run-dir", tmp_path / "t", "--model", tiny_model,
               "--init", tmp_path / "p" / "final") == 2
    assert "was trained for another model" in capsys.readouterr().err


def test_sweep_blocks_writes_table_and_plot(tiny_model, tmp_path, capsys):
    from PIL import Image

    assert dpt("sweep-blocks", "--run-dir", tmp_path, "--model", tiny_model, "--blocks",
               "mid,up0", "--steps", 1, "--batch", 2, "--n-itm", 2, "--n-rec", 2) == 0
    table = (tmp_path / "sweep.md").read_text()
    assert "| mid |" in table and "| up0 |" in table
    assert Image.open(tmp_path / "sweep.png").size[0] > 100
    assert (tmp_path / "up0" / "eval.json").is_file()
    assert dpt("sweep-blocks", "--run-dir", tmp_path, "--model", tiny_model,
               "--blocks", "up7") == 2


def test_ground_text_flag_reaches_the_saved_adapter(tiny_model, tmp_path, capsys):
    from safetensors.torch import load_file

    common = ["--model", tiny_model, "--block", "up0", "--d-model", 32, "--steps", 1,
              "--batch", 2, "--ground-queries", 4]
    for flag, reads in (("tokens", True), ("none", False)):
        run = tmp_path / flag
        assert dpt("probe", "--run-dir", run, "--ground-text", flag, *common) == 0
        config = json.loads((run / "final" / "dpt_config.json").read_text())
        assert config["adapter"]["ground_text"] is reads
        keys = load_file(run / "final" / "heads.safetensors")
        assert ("adapter.text_proj.weight" in keys) is reads


def test_hn_itm_tuning_writes_a_lora_only_folder_that_generates(tiny_model, tmp_path, capsys):
    run = tmp_path / "hn"
    assert dpt("tune-hn-itm", "--run-dir", run, "--model", tiny_model, "--steps", 3, "--batch", 2,
               "--lora-targets", "all", "--checkpoint-every", 1, "--keep-checkpoints", 0) == 0
    assert sorted(p.name for p in run.glob("step-*")) == [
        "step-00000001", "step-00000002", "step-00000003"]
    config = json.loads((run / "final" / "dpt_config.json").read_text())
    assert config["adapter"] is None and config["lora"]["targets"] == "all"
    assert config["training"]["stage"] == "hn-itm"
    assert sorted(p.name for p in (run / "final").iterdir()) == [
        "dpt_config.json", "lora.safetensors"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"mse", "mse_neg", "loss"} <= set(log[0])
    assert dpt("generate", "--model", tiny_model, "--dpt", run / "final", "--prompt",
               "a red circle", "--num-images", 1, "--steps", 2, "--out", tmp_path / "g") == 0
    assert dpt("generate", "--model", tiny_model, "--dpt", run / "final", "--prompt",
               "a red circle", "--self-correct", "--out", tmp_path / "g2") == 2
    assert "LoRA only" in capsys.readouterr().err


def test_hn_itm_objective_is_the_clipped_hinge():
    import torch

    from dpt_t2i.training.hn_itm import HNITMObjective
    from dpt_t2i.training.settings import TrainSettings

    class FixedUNet(torch.nn.Module):
        """Predicts 0 under text state 0 and 1 under text state 1 (shape of the input)."""

        def forward(self, x, t, states):
            out = torch.zeros_like(x) + states[:, 0, 0].view(-1, 1, 1, 1)
            return type("Out", (), {"sample": out})()

    noise = torch.full((2, 4, 2, 2), 0.5)
    inputs = {"target": noise, "caption_states": torch.zeros(2, 3, 8),
              "negative_tokens": torch.ones(2, 2, 3, 8)}
    for clip, expected in ((1.0, 0.25 - 0.25), (0.5, 0.25 - 0.125), (10.0, 0.25 - 0.25)):
        losses = HNITMObjective(FixedUNet(), TrainSettings(stage="hn-itm", hn_clip=clip))(
            noise, torch.zeros(2, dtype=torch.long), inputs)
        assert float(losses["mse"]) == 0.25 and float(losses["mse_neg"]) == 0.25
        assert abs(float(losses["loss"]) - expected) < 1e-7
    inputs["negative_tokens"] = torch.full((2, 2, 3, 8), 2.0)  # error 2.25, clipped at 0.25
    losses = HNITMObjective(FixedUNet(), TrainSettings(stage="hn-itm", hn_weight=2.0))(
        noise, torch.zeros(2, dtype=torch.long), inputs)
    assert abs(float(losses["loss"]) - (0.25 - 2.0 * 0.25)) < 1e-7


def test_run_config_records_the_world_size_and_a_resume_must_keep_it(tiny_model, tmp_path,
                                                                      capsys):
    run = tmp_path / "p"
    args = ["probe", "--run-dir", run, "--model", tiny_model, "--block", "up0", "--d-model", 32,
            "--steps", 1, "--batch", 2, "--grad-accum", 3]
    assert dpt(*args) == 0
    record = json.loads((run / "run_config.json").read_text())
    assert (record["world_size"], record["global_batch"]) == (1, 6)
    assert (record["settings"]["batch"], record["settings"]["grad_accum"]) == (2, 3)
    record["world_size"] = 4
    (run / "run_config.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert dpt(*args) == 2
    err = capsys.readouterr().err
    assert err == (f"dpt probe: error: {run} was trained on 4 process(es) and this launch has "
                   "1: a resumed run must keep the world size (each process draws its own "
                   "samples); launch 4 process(es), or start over with --resume no\n")
    del record["world_size"], record["settings"]["n_negatives"]  # an older record: 1, 3
    (run / "run_config.json").write_text(json.dumps(record))
    assert dpt(*args) == 0
    assert json.loads((run / "run_config.json").read_text())["world_size"] == 1


def test_steps_can_be_raised_on_resume_and_the_change_is_recorded(tiny_model, tmp_path, capsys):
    run = tmp_path / "p"
    args = ["probe", "--run-dir", run, "--model", tiny_model, "--block", "up0", "--d-model", 32,
            "--batch", 2, "--checkpoint-every", 1]
    assert dpt(*args, "--steps", 2) == 0
    assert json.loads((run / "run_config.json").read_text())["extended"] == []
    assert dpt(*args, "--steps", 3) == 0
    record = json.loads((run / "run_config.json").read_text())
    assert record["settings"]["steps"] == 3
    assert record["extended"] == [{"at_step": 2, "from": 2, "to": 3}]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert json.loads((run / "final" / "dpt_config.json").read_text())["training"]["steps"] == 3
    capsys.readouterr()
    assert dpt(*args, "--steps", 1) == 2
    assert "--steps 1 is below step 3, where" in capsys.readouterr().err


def test_recipe_flags_reach_the_adapter_the_settings_and_the_record(tiny_model, tmp_path,
                                                                     monkeypatch):
    from safetensors.torch import load_file

    from dpt_t2i.training import feed

    negatives = []
    real = feed.encode_batch

    def spy(*args):
        latents, inputs = real(*args)
        negatives.append(inputs["negative_embeds"].shape[1])
        return latents, inputs

    monkeypatch.setattr(feed, "encode_batch", spy)
    run = tmp_path / "p"
    assert dpt("probe", "--run-dir", run, "--model", tiny_model, "--block", "up0", "--d-model",
               32, "--ground-queries", 4, "--steps", 1, "--batch", 2, "--ffn-dim", 48,
               "--n-heads", 4, "--match-queries", 3, "--dropout", 0.05, "--warmup", 5,
               "--lr-floor", 0.5, "--grad-clip", 0, "--negatives", 2) == 0
    record = json.loads((run / "run_config.json").read_text())
    adapter = record["dpt"]["adapter"]
    assert (adapter["ffn_dim"], adapter["n_heads"], adapter["n_match_queries"],
            adapter["dropout"]) == (48, 4, 3, 0.05)
    assert {k: record["settings"][k] for k in ("warmup", "lr_floor", "grad_clip",
                                               "n_negatives")} == {
        "warmup": 5, "lr_floor": 0.5, "grad_clip": 0.0, "n_negatives": 2}
    assert record["preset"] is None and negatives == [2]
    heads = load_file(run / "final" / "heads.safetensors")
    assert heads["adapter.encoder.layers.0.linear1.weight"].shape == (48, 32)
    # the defaults: 4 x d-model wide, d-model / 32 heads
    assert dpt("probe", "--run-dir", tmp_path / "q", "--model", tiny_model, "--block", "up0",
               "--d-model", 64, "--ground-queries", 4, "--steps", 1, "--batch", 2) == 0
    adapter = json.loads((tmp_path / "q" / "run_config.json").read_text())["dpt"]["adapter"]
    assert (adapter["ffn_dim"], adapter["n_heads"], adapter["n_match_queries"]) == (256, 2, 10)


def test_the_paper_preset_sets_the_recipe_and_flags_beside_it_win(tiny_model, tmp_path):
    probe = tmp_path / "p"
    assert dpt("probe", "--run-dir", probe, "--model", tiny_model, "--preset", "sd21-paper",
               "--d-model", 32, "--n-heads", 2, "--ground-queries", 4, "--batch", 2,
               "--steps", 1) == 0
    record = json.loads((probe / "run_config.json").read_text())
    adapter = record["dpt"]["adapter"]
    assert record["preset"] == "sd21-paper" and record["dpt"]["block"] == "up1"
    assert (adapter["d_model"], adapter["n_heads"], adapter["n_ground_queries"]) == (32, 2, 4)
    assert (adapter["ffn_dim"], adapter["n_match_queries"], adapter["dropout"]) == (2048, 10, 0.1)
    assert {k: record["settings"][k] for k in ("batch", "lr", "warmup", "lr_floor",
                                               "grad_clip")} == {
        "batch": 2, "lr": 1e-4, "warmup": 0, "lr_floor": 1.0, "grad_clip": 1.0}
    tune = tmp_path / "t"
    assert dpt("tune", "--run-dir", tune, "--model", tiny_model, "--init", probe / "final",
               "--preset", "sd21-paper", "--batch", 2, "--steps", 1, "--lora-lr", 3e-4) == 0
    record = json.loads((tune / "run_config.json").read_text())
    assert record["dpt"]["lora"] == {"rank": 4, "alpha": 4.0, "targets": "all"}
    assert {k: record["settings"][k] for k in ("lr", "lora_lr", "mse_weight", "lr_floor")} == {
        "lr": 1e-4, "lora_lr": 3e-4, "mse_weight": 1.0, "lr_floor": 1.0}


def test_memory_switches_are_recorded_and_may_change_on_resume(tiny_model, tmp_path):
    import torch

    probe, tune = tmp_path / "p", tmp_path / "t"
    common = ["--model", tiny_model, "--batch", 2, "--checkpoint-every", 1]
    assert dpt("probe", "--run-dir", probe, "--block", "up0", "--d-model", 32,
               "--ground-queries", 4, "--steps", 1, *common) == 0
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        assert dpt("tune", "--run-dir", tune, "--init", probe / "final", "--steps", 1,
                   "--gradient-checkpointing", "--allow-tf32", "--channels-last", *common) == 0
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    settings = json.loads((tune / "run_config.json").read_text())["settings"]
    assert (settings["gradient_checkpointing"], settings["allow_tf32"],
            settings["channels_last"]) == (True, True, True)
    assert dpt("tune", "--run-dir", tune, "--init", probe / "final", "--steps", 2, *common) == 0
    settings = json.loads((tune / "run_config.json").read_text())["settings"]
    assert settings["gradient_checkpointing"] is False and settings["steps"] == 2
