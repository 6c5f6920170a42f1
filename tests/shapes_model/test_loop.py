"""The shared training loop: learning-rate schedule, checkpoints, logs and resuming."""

import json

import pytest
import torch

from dpt_t2i.shapes_model.loop import run_loop
from dpt_t2i.training.schedule import cosine_lr


def test_cosine_lr_warms_up_then_decays_to_the_floor():
    assert cosine_lr(0, 1000, 1.0, warmup=100) == pytest.approx(0.01)
    assert cosine_lr(49, 1000, 1.0, warmup=100) == pytest.approx(0.5)
    assert cosine_lr(100, 1000, 1.0, warmup=100) == pytest.approx(1.0)
    assert cosine_lr(550, 1000, 2.0, warmup=100) == pytest.approx(2.0 * 0.55)  # halfway: mid
    assert cosine_lr(1000, 1000, 2.0, warmup=100) == pytest.approx(0.2)
    assert cosine_lr(5000, 1000, 2.0, warmup=100) == pytest.approx(0.2)  # stays at the floor
    values = [cosine_lr(s, 300, 1.0, warmup=10) for s in range(300)]
    assert values[:10] == sorted(values[:10]) and values[10:] == sorted(values[10:], reverse=True)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    target = torch.tensor([[1.0, -2.0, 0.5]])
    lrs: list[float] = []

    def step_fn(step: int) -> dict[str, float]:
        lrs.append(opt.param_groups[0]["lr"])
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.mse_loss(model(x), x @ target.t())
        loss.backward()
        return {"mse": loss.item(), "seen": float(step)}

    return model, opt, step_fn, lrs


def _run(run_dir, total, resume=True, every=5, stop_at=None):
    model, opt, step_fn, lrs = _setup()
    if stop_at is not None:
        inner = step_fn

        def step_fn(step):
            if step == stop_at:
                raise KeyboardInterrupt
            return inner(step)

    summary = run_loop(run_dir, total, step_fn, {"model": model}, opt, base_lr=0.1,
                       resume=resume, checkpoint_every=every, desc="test", warmup=3)
    return model, summary, lrs


def test_loop_schedules_lr_checkpoints_and_logs(tmp_path):
    model, summary, lrs = _run(tmp_path, 42, every=10)
    assert lrs == [pytest.approx(cosine_lr(s, 42, 0.1, 3)) for s in range(42)]
    assert summary["step"] == 42
    assert summary["final_losses"]["seen"] == pytest.approx(sum(range(42)) / 42)  # mean of <=100
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000040", "step-00000042"]
    state = json.loads((tmp_path / "step-00000042" / "state.json").read_text())
    assert state["step"] == 42 and state["wall_s"] >= 0
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 20, 40]
    assert set(log[0]) == {"step", "mse", "seen"} and log[1]["seen"] == 20.0


def test_resume_continues_from_the_latest_checkpoint(tmp_path, capsys):
    reference, _, _ = _run(tmp_path / "a", 12)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", 12, stop_at=8)  # checkpoint at 5, killed during step 8
    capsys.readouterr()
    model, summary, lrs = _run(tmp_path / "b", 12)
    assert f"resuming from {tmp_path / 'b' / 'step-00000005'} (step 5)\n" in \
        capsys.readouterr().err
    assert len(lrs) == 7 and lrs[0] == pytest.approx(cosine_lr(5, 12, 0.1, 3))  # steps 5..11
    assert torch.equal(model.weight, reference.weight) and torch.equal(model.bias, reference.bias)
    assert summary["final_losses"]["seen"] == pytest.approx(sum(range(5, 12)) / 7)


def test_resume_false_ignores_checkpoints_and_finished_runs_do_nothing(tmp_path):
    _run(tmp_path, 10)
    model, _, lrs = _run(tmp_path, 10, resume=False)
    assert len(lrs) == 10
    _, summary, lrs = _run(tmp_path, 10)  # already at step 10
    assert lrs == [] and summary["step"] == 10 and summary["final_losses"] == {}


def _truncate(file):
    file.write_bytes(file.read_bytes()[:-7])


DAMAGE = {  # what happens to the newest checkpoint (step 40), and what the resume says
    "model truncated": (lambda d: _truncate(d / "step-00000040" / "model.safetensors"),
                        30, "skipped step-00000040: model.safetensors is truncated"),
    "optimizer truncated": (lambda d: _truncate(d / "step-00000040" /
                                                "optimizer.optim.safetensors"),
                            30, "skipped step-00000040: optimizer.optim.safetensors is truncated"),
    "state garbage": (lambda d: (d / "step-00000040" / "state.json").write_text("{oops"),
                      30, "skipped step-00000040: state.json is not valid JSON"),
    "state missing": (lambda d: (d / "step-00000040" / "state.json").unlink(),
                      30, "skipped step-00000040: state.json is missing"),
    "latest garbage": (lambda d: (d / "latest").write_bytes(b"\x00\x01"),
                       40, "latest holds b'\\x00\\x01', not a step folder name"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_run_folder_resumes_from_the_newest_intact_checkpoint(tmp_path, capsys,
                                                                        damage):
    reference, _, _ = _run(tmp_path / "a", 45, every=10)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", 45, every=10, stop_at=42)  # checkpoints 30 and 40 kept
    harm, start, note = DAMAGE[damage]
    harm(tmp_path / "b")
    capsys.readouterr()
    model, summary, lrs = _run(tmp_path / "b", 45, every=10)
    err = capsys.readouterr().err
    assert f"resuming from {tmp_path / 'b' / f'step-{start:08d}'} (step {start}); {note}" in err
    assert len(lrs) == 45 - start
    assert torch.equal(model.weight, reference.weight) and torch.equal(model.bias, reference.bias)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 20, 40]  # step 40 logged once, by the resumed run
    assert (tmp_path / "b" / "latest").read_text() == "step-00000045"
    assert sorted(p.name for p in (tmp_path / "b").glob("step-*")) == [
        "step-00000040", "step-00000045"]


def test_a_run_folder_without_an_intact_checkpoint_is_refused_untouched(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, 45, every=10, stop_at=42)
    _truncate(tmp_path / "step-00000040" / "model.safetensors")
    (tmp_path / "step-00000030" / "state.json").write_text("[]")
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"no intact checkpoint to resume from \(step-00000040: "
                       r"model\.safetensors is truncated .*; step-00000030: state\.json has no "
                       r"integer 'step'\); nothing was deleted"):
        _run(tmp_path, 45, every=10)
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
