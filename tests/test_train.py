"""DPT stages 1 and 2 on a tiny random model: outputs, frozen parts, accumulation, resume."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from shapes_model.resume import assert_identical

from dpt_t2i.data.sources import ShapesSource, draw_samples
from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.io.dpt_folder import load_dpt
from dpt_t2i.model.adapter import AdapterConfig
from dpt_t2i.model.config import DPTConfig
from dpt_t2i.model.heads import DPTHeads
from dpt_t2i.model.lora import LoraSettings
from dpt_t2i.training import loop as loop_module
from dpt_t2i.training import objective as objective_module
from dpt_t2i.training.loop import train_dpt
from dpt_t2i.training.settings import TrainSettings

# the shipped Shapes model (8x8 latents: fast); its up0 block has 128 channels at 4x4
ADAPTER = AdapterConfig(feature_dim=128, text_dim=128, d_model=32, n_heads=2, ffn_dim=64,
                        n_match_queries=2, n_ground_queries=4, max_hw=8)


def probe_config(condition="empty", ground_condition="expression"):
    return DPTConfig(block="up0", condition=condition, ground_condition=ground_condition,
                     adapter=ADAPTER)


def settings(**kw):
    base = dict(stage="probe", steps=4, batch=4, checkpoint_every=2, warmup=1)
    return TrainSettings(**{**base, **kw})


@pytest.fixture
def shipped():
    return default_model_path()


def run(model, run_dir, config, s, **kw):
    return train_dpt(run_dir, load_bundle(model), ShapesSource(), config, s,
                     show_progress=False, **kw)


def test_probe_trains_heads_only_and_writes_a_dpt_folder(shipped, tmp_path):
    bundle = load_bundle(shipped)
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


def test_tune_trains_lora_and_heads_from_the_probe(shipped, tmp_path):
    run(shipped, tmp_path / "probe", probe_config("caption"), settings())
    init, config = load_dpt(tmp_path / "probe" / "final")
    config.lora = LoraSettings(rank=2, alpha=2.0)
    summary = run(shipped, tmp_path / "tune", config,
                  settings(stage="tune", steps=3, mse_weight=1.0), init_heads=init)
    assert summary["final_losses"]["mse"] > 0
    lora = load_file(tmp_path / "tune" / "final" / "lora.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())
    tuned, _ = load_dpt(tmp_path / "tune" / "final")
    a, b = init.state_dict(), tuned.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("condition, ground_condition, passes", [
    ("empty", "empty", 1), ("empty", "expression", 2), ("caption", "expression", 2)])
def test_feature_passes_follow_the_conditions(shipped, tmp_path, monkeypatch, condition,
                                              ground_condition, passes):
    seen = []
    real = objective_module.unet_features

    def spy(unet, config, latents, t, states):
        seen.append(states.detach().clone())
        return real(unet, config, latents, t, states)

    monkeypatch.setattr(objective_module, "unet_features", spy)
    run(shipped, tmp_path / "run", probe_config(condition, ground_condition),
        settings(steps=1))
    assert len(seen) == passes
    empty_first = torch.allclose(seen[0], seen[0][:1].expand_as(seen[0]))
    assert empty_first == (condition == "empty")  # one empty prompt for every sample
    if passes == 2:
        assert not torch.allclose(seen[1], seen[1][:1].expand_as(seen[1]))  # expressions


@pytest.mark.parametrize("ground_condition", ["expression", "empty"])
def test_text_reading_parts_of_the_adapter_train(shipped, tmp_path, ground_condition):
    from dataclasses import replace

    config = probe_config(ground_condition=ground_condition)
    config.adapter = replace(ADAPTER, ground_text=True, match_text="tokens")
    run(shipped, tmp_path / "run", config, settings(steps=2, checkpoint_every=5))
    heads = load_file(tmp_path / "run" / "final" / "heads.safetensors")
    assert heads["adapter.text_head.out.weight"].abs().sum() > 0  # zero at the start
    torch.manual_seed(0)
    fresh = DPTHeads(config.adapter).state_dict()
    assert not torch.equal(fresh["adapter.text_proj.weight"], heads["adapter.text_proj.weight"])


def test_gradient_accumulation_takes_one_update_per_step(shipped, tmp_path):
    run(shipped, tmp_path / "run", probe_config(), settings(steps=2, batch=2, grad_accum=3))
    optim = load_file(tmp_path / "run" / "step-00000002" / "optimizer.optim.safetensors")
    steps = {float(v) for k, v in optim.items() if k.endswith(".step")}
    assert steps == {2.0}


@pytest.mark.parametrize("stage", ["probe", "tune"])
def test_killed_run_resumes_to_identical_weights(shipped, tmp_path, monkeypatch, capsys, stage):
    config = probe_config()
    if stage == "tune":
        config.lora = LoraSettings(rank=2, alpha=2.0, targets="all")
    s = settings(stage=stage, steps=4)
    run(shipped, tmp_path / "reference", config, s)

    real_step = loop_module._optimizer_step
    taken = []

    def killed_at_3(*args):
        step = args[-1]
        if step == 3:
            raise KeyboardInterrupt
        taken.append(step)
        return real_step(*args)

    monkeypatch.setattr(loop_module, "_optimizer_step", killed_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(shipped, tmp_path / "run", config, s)
    assert taken == [0, 1, 2] and (tmp_path / "run" / "latest").read_text() == "step-00000002"
    monkeypatch.setattr(loop_module, "_optimizer_step", real_step)
    capsys.readouterr()
    summary = run(shipped, tmp_path / "run", config, s)
    assert summary["steps_this_run"] == 2
    assert _resume_lines(capsys) == [
        f"resuming from {tmp_path / 'run' / 'step-00000002'} (step 2)"]
    assert_identical(tmp_path / "reference" / "final", tmp_path / "run" / "final")
    assert_identical(tmp_path / "reference" / "step-00000004", tmp_path / "run" / "step-00000004")


def _resume_lines(capsys) -> list[str]:
    """The lines a run wrote to stderr about where it resumed (between loading bars)."""
    return [line for line in capsys.readouterr().err.splitlines() if "resum" in line]


@pytest.mark.parametrize("damaged", ["heads.safetensors", "optimizer.optim.safetensors"])
def test_a_truncated_newest_checkpoint_resumes_from_the_previous_one(shipped, tmp_path, capsys,
                                                                     damaged):
    config, s = probe_config(), settings(steps=4)  # checkpoints at steps 2 and 4
    reference, folder = tmp_path / "reference", tmp_path / "run"
    run(shipped, reference, config, s)
    shutil.copytree(reference, folder)
    shutil.rmtree(folder / "final")
    file = folder / "step-00000004" / damaged
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])  # a kill mid-copy, say
    capsys.readouterr()
    summary = run(shipped, folder, config, s)
    assert summary["steps_this_run"] == 2
    (line,) = _resume_lines(capsys)
    assert line.startswith(f"resuming from {folder / 'step-00000002'} (step 2); skipped "
                           f"step-00000004: {damaged} is truncated (")
    assert_identical(reference / "final", folder / "final")
    assert_identical(reference / "step-00000004", folder / "step-00000004")
    logged = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 3]  # step 3 once: the resumed run's


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


def test_settings_check_rates_weights_and_the_schedule_length():
    with pytest.raises(ValueError, match="lora_lr must be a finite number >= 0, got nan"):
        TrainSettings(lora_lr=float("nan"))
    with pytest.raises(ValueError, match="hn_clip must be a finite number >= 0, got -1"):
        TrainSettings(hn_clip=-1.0)
    with pytest.raises(ValueError, match="need 0 <= t_min < t_max <= 1000, got 0 and 1001"):
        TrainSettings(t_max=1001)


def test_stage_defaults_make_valid_settings():
    from dpt_t2i.training.settings import STAGE_DEFAULTS, STAGES

    assert set(STAGE_DEFAULTS) == set(STAGES)
    for stage, values in STAGE_DEFAULTS.items():
        assert TrainSettings(stage=stage, **values).stage == stage


def test_settings_check_the_recipe_fields():
    with pytest.raises(ValueError, match="grad_clip must be a finite number >= 0, got -1"):
        TrainSettings(grad_clip=-1.0)
    with pytest.raises(ValueError, match="warmup must be >= 0, got -2"):
        TrainSettings(warmup=-2)
    with pytest.raises(ValueError, match="n_negatives must be >= 1, got 0"):
        TrainSettings(n_negatives=0)
    with pytest.raises(ValueError, match="lr_floor must be between 0 and 1, got nan"):
        TrainSettings(lr_floor=float("nan"))
    assert TrainSettings(grad_clip=0.0, warmup=0, lr_floor=1.0).grad_clip == 0.0
