"""DPT stages 1 and 2 on a tiny random model: outputs, frozen parts, accumulation, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dpt_t2i import train as train_module
from dpt_t2i.adapter import AdapterConfig
from dpt_t2i.bundle import load_bundle
from dpt_t2i.dpt import DPTConfig, load_dpt
from dpt_t2i.lora import LoraSettings
from dpt_t2i.train import ShapesSource, TrainSettings, draw_samples, train_dpt

from shapes_model.resume import assert_identical

# tiny model: text width 32; block up0 has 64 channels at 32x32 for 64x64 Shapes images
ADAPTER = AdapterConfig(feature_dim=64, text_dim=32, d_model=32, n_heads=2, ffn_dim=64,
                        n_match_queries=2, n_ground_queries=4, max_hw=32)


def probe_config(condition="empty"):
    return DPTConfig(block="up0", condition=condition, adapter=ADAPTER)


def settings(**kw):
    base = dict(stage="probe", steps=4, batch=4, checkpoint_every=2, warmup=1)
    return TrainSettings(**{**base, **kw})


def run(tiny_model, run_dir, config, s, **kw):
    return train_dpt(run_dir, load_bundle(tiny_model), ShapesSource(), config, s,
                     show_progress=False, **kw)


def test_probe_trains_heads_only_and_writes_a_dpt_folder(tiny_model, tmp_path):
    bundle = load_bundle(tiny_model)
    before = {k: v.clone() for k, v in bundle.unet.state_dict().items()}
    summary = train_dpt(tmp_path / "run", bundle, ShapesSource(), probe_config(), settings(),
                        show_progress=False)
    assert summary["steps"] == 4 and summary["steps_this_run"] == 4
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["final_losses"].values())
    assert {"match", "loss_prob", "loss_l1", "loss_giou", "loss_contrastive", "loss"} <= set(
        summary["final_losses"])
    assert all(torch.equal(before[k], v) for k, v in bundle.unet.state_dict().items())
    heads, config = load_dpt(tmp_path / "run" / "final")
    assert config == probe_config()
    step2 = load_file(tmp_path / "run" / "step-00000004" / "heads.safetensors")
    assert any(not torch.equal(step2[k], v) for k, v in
               load_file(tmp_path / "run" / "final" / "heads.safetensors").items()) is False
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 3]


def test_tune_trains_lora_and_heads_from_the_probe(tiny_model, tmp_path):
    run(tiny_model, tmp_path / "probe", probe_config("caption"), settings())
    init, config = load_dpt(tmp_path / "probe" / "final")
    config.lora = LoraSettings(rank=2, alpha=2.0)
    summary = run(tiny_model, tmp_path / "tune", config,
                  settings(stage="tune", steps=3, mse_weight=1.0), init_heads=init)
    assert summary["final_losses"]["mse"] > 0
    lora = load_file(tmp_path / "tune" / "final" / "lora.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())
    tuned, _ = load_dpt(tmp_path / "tune" / "final")
    a, b = init.state_dict(), tuned.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_takes_one_update_per_step(tiny_model, tmp_path):
    run(tiny_model, tmp_path / "run", probe_config(), settings(steps=2, batch=2, grad_accum=3))
    optim = load_file(tmp_path / "run" / "step-00000002" / "optimizer.optim.safetensors")
    steps = {float(v) for k, v in optim.items() if k.endswith(".step")}
    assert steps == {2.0}


@pytest.mark.parametrize("stage", ["probe", "tune"])
def test_killed_run_resumes_to_identical_weights(tiny_model, tmp_path, monkeypatch, stage):
    config = probe_config()
    if stage == "tune":
        config.lora = LoraSettings(rank=2, alpha=2.0, targets="all")
    s = settings(stage=stage, steps=4)
    run(tiny_model, tmp_path / "reference", config, s)

    real_step = train_module._optimizer_step
    taken = []

    def killed_at_3(*args):
        step = args[-1]
        if step == 3:
            raise KeyboardInterrupt
        taken.append(step)
        return real_step(*args)

    monkeypatch.setattr(train_module, "_optimizer_step", killed_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model, tmp_path / "run", config, s)
    assert taken == [0, 1, 2] and (tmp_path / "run" / "latest").read_text() == "step-00000002"
    monkeypatch.setattr(train_module, "_optimizer_step", real_step)
    summary = run(tiny_model, tmp_path / "run", config, s)
    assert summary["steps_this_run"] == 2
    assert_identical(tmp_path / "reference" / "final", tmp_path / "run" / "final")
    assert_identical(tmp_path / "reference" / "step-00000004", tmp_path / "run" / "step-00000004")


def test_draw_samples_replaces_unreadable_ones():
    class Flaky:
        skipped = 0

        def sample(self, index):
            if index == 1:
                self.skipped += 1
                return None
            return index

    assert draw_samples(Flaky(), 0, 3) == [0, 1_000_004, 2]
    assert draw_samples(ShapesSource(), 5, 2)[0].caption == ShapesSource().sample(5).caption


def test_settings_are_checked():
    with pytest.raises(ValueError, match="stage must be one of"):
        TrainSettings(stage="finetune")
    with pytest.raises(ValueError, match="t_min < t_max"):
        TrainSettings(t_min=500, t_max=500)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        TrainSettings(batch=0)
