"""A DPT run's operations on the shipped Shapes model: the world size a resume must keep,
`--steps` changed on resume, and what log.jsonl records."""

import json
import math
import shutil

import pytest
from shapes_model.resume import assert_identical
from test_train import probe_config, run, settings

from dpt_t2i.io.bundle import default_model_path
from dpt_t2i.training import loop as loop_module
from dpt_t2i.training.schedule import cosine_lr, extended_lr


@pytest.fixture
def shipped():
    return default_model_path()


def _state(folder, step):
    return folder / f"step-{step:08d}" / "state.json"


def test_checkpoints_record_the_world_size_and_a_resume_must_keep_it(shipped, tmp_path):
    folder = tmp_path / "run"
    run(shipped, folder, probe_config(), settings(steps=2))
    state = json.loads(_state(folder, 2).read_text())
    assert (state["world_size"], state["batch"], state["grad_accum"]) == (1, 4, 1)
    state["world_size"] = 2  # as a 2-process launch writes it
    _state(folder, 2).write_text(json.dumps(state))
    with pytest.raises(ValueError) as err:
        run(shipped, folder, probe_config(), settings(steps=4))
    assert str(err.value) == (
        f"{folder} was trained on 2 process(es) and this launch has 1: a resumed run must keep "
        "the world size (each process draws its own samples); launch 2 process(es), or start "
        "over with --resume no")
    del state["world_size"]  # a checkpoint from before the world size was recorded: 1
    _state(folder, 2).write_text(json.dumps(state))
    assert run(shipped, folder, probe_config(), settings(steps=4))["steps_this_run"] == 2



def _spy_rates(monkeypatch) -> list[tuple[int, float]]:
    """Record (step, learning rate of the first group) of every optimizer step taken."""
    real, seen = loop_module._optimizer_step, []

    def spy(*args):
        seen.append((args[-1], args[2].param_groups[0]["lr"]))
        return real(*args)

    monkeypatch.setattr(loop_module, "_optimizer_step", spy)
    return seen


def test_steps_raised_on_resume_train_on_at_the_floor_deterministically(shipped, tmp_path,
                                                                        monkeypatch):
    for name in ("a", "b"):  # twice: 4 steps, then raised to 8
        run(shipped, tmp_path / name, probe_config(), settings(steps=4))
        seen = _spy_rates(monkeypatch)
        summary = run(shipped, tmp_path / name, probe_config(), settings(steps=8))
        monkeypatch.undo()
        assert summary["steps"] == 8 and summary["steps_this_run"] == 4
        assert summary["extended"] == [{"at_step": 4, "from": 4, "to": 8}]
        # the run had decayed to the floor (0.1 x 1e-3) by step 4: the added steps stay there
        assert seen == [(s, pytest.approx(1e-4)) for s in (4, 5, 6, 7)]
    assert_identical(tmp_path / "a" / "final", tmp_path / "b" / "final")
    assert_identical(tmp_path / "a" / "step-00000008", tmp_path / "b" / "step-00000008")
    state = json.loads(_state(tmp_path / "a", 8).read_text())
    assert state["steps"] == 8 and state["extended"] == summary["extended"]
    final = json.loads((tmp_path / "a" / "final" / "dpt_config.json").read_text())
    assert final["training"]["steps"] == 8 and final["training"]["extended"] == state["extended"]
    with pytest.raises(ValueError, match=f"--steps 6 is below step 8, where {tmp_path / 'a'} "
                       "resumes; give --steps >= 8, or start over with --resume no"):
        run(shipped, tmp_path / "a", probe_config(), settings(steps=6))


def test_steps_raised_in_mid_decay_continue_from_the_rate_reached(shipped, tmp_path,
                                                                   monkeypatch):
    reference, folder = tmp_path / "reference", tmp_path / "run"
    run(shipped, reference, probe_config(), settings(steps=4))
    shutil.rmtree(reference / "step-00000004")  # as if killed after step 2's checkpoint
    shutil.copytree(reference, folder)
    seen = _spy_rates(monkeypatch)
    run(shipped, reference, probe_config(), settings(steps=8))
    top = cosine_lr(2, 4, 1e-3, warmup=1)  # step 2's rate under 4 steps
    half_cosine = [1e-4 + (top - 1e-4) * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert seen == [(s, pytest.approx(lr)) for s, lr in zip(range(2, 8), half_cosine)]

    real = loop_module._optimizer_step  # the same extension, killed at step 7 and resumed

    def killed_at_7(*args):
        if args[-1] == 7:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(loop_module, "_optimizer_step", killed_at_7)
    with pytest.raises(KeyboardInterrupt):
        run(shipped, folder, probe_config(), settings(steps=8))
    monkeypatch.setattr(loop_module, "_optimizer_step", real)
    assert run(shipped, folder, probe_config(), settings(steps=8))["steps_this_run"] == 2
    assert_identical(reference / "final", folder / "final")


def test_extended_lr_inside_the_warmup_and_twice():
    inside = [{"at_step": 3, "from": 20, "to": 40}]  # resumed at step 3 of a 10-step warm-up
    assert [extended_lr(s, 40, 1.0, 10, inside) for s in range(41)] == pytest.approx(
        [cosine_lr(s, 40, 1.0, 10) for s in range(41)])
    twice = [{"at_step": 12, "from": 12, "to": 20}, {"at_step": 15, "from": 20, "to": 30}]
    first = cosine_lr(11, 12, 1.0, 2)
    assert extended_lr(11, 30, 1.0, 2, twice) == first
    at_15 = 0.1 + (cosine_lr(12, 12, 1.0, 2) - 0.1) * 0.5 * (1 + math.cos(math.pi * 3 / 8))
    assert extended_lr(15, 30, 1.0, 2, twice) == pytest.approx(at_15)
    assert extended_lr(30, 30, 1.0, 2, twice) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="the last extension ends at 30 steps, the run has 31"):
        extended_lr(0, 31, 1.0, 2, twice)


def test_log_rows_hold_losses_rates_grad_norm_and_throughput(shipped, tmp_path, monkeypatch):
    import warnings

    from accelerate import Accelerator

    from dpt_t2i.model.lora import LoraSettings

    tracked = []
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, **kw:
                        tracked.append((step, dict(values))))
    config = probe_config()
    config.lora = LoraSettings(rank=2, alpha=2.0)
    s = settings(stage="tune", steps=3, batch=2, grad_accum=2, warmup=2, lr=1e-3,
                 lora_lr=1e-4, log_with="tensorboard")
    with warnings.catch_warnings():  # tensorboard itself is not installed here
        warnings.simplefilter("ignore")
        summary = run(shipped, tmp_path / "run", config, s)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2]
    for row in rows:
        assert {"loss", "match", "loss_giou", "lr", "lora_lr", "grad_norm", "s_per_step",
                "samples_per_s"} <= set(row)
        assert row["lr"] == pytest.approx(extended_lr(row["step"], 3, 1e-3, 2))
        assert row["lora_lr"] == pytest.approx(extended_lr(row["step"], 3, 1e-4, 2))
        assert 0 < row["grad_norm"] < 1e4 and math.isfinite(row["loss"])
        # 2 samples x 2 micro-steps x 1 process a step
        assert row["samples_per_s"] * row["s_per_step"] == pytest.approx(4, rel=1e-2)
    assert rows[0]["lr"] == pytest.approx(5e-4)  # half-way through the warm-up
    assert tracked == [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in rows]
    assert set(summary["final_losses"]) == {k for k in rows[0] if k.startswith(("loss", "match"))}


@pytest.mark.parametrize("clip, max_norm", [(0.0, math.inf), (0.5, 0.5)])
def test_grad_clip_sets_the_clipping_norm_and_zero_turns_it_off(shipped, tmp_path, monkeypatch,
                                                                 clip, max_norm):
    from accelerate import Accelerator

    real, seen = Accelerator.clip_grad_norm_, []

    def spy(self, parameters, max_norm, *args, **kw):
        seen.append(max_norm)
        return real(self, parameters, max_norm, *args, **kw)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", spy)
    run(shipped, tmp_path / "run", probe_config(), settings(steps=1, grad_clip=clip))
    assert seen == [max_norm]
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[0]["grad_norm"] > (0.5 if clip else 0)  # the norm before clipping
