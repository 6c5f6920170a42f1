"""Atomic, resumable checkpoints: exact round trips, `latest`, pruning and partial folders."""

import json

import pytest
import torch

from dpt_t2i.io import checkpoint
from dpt_t2i.io.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _train_step(model, opt, step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    x, y = torch.randn(5, 4, generator=gen), torch.randn(5, 2, generator=gen)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_round_trip_restores_module_and_optimizer_exactly_and_training_continues(tmp_path):
    model, opt = _model_and_optimizer()
    for step in range(3):
        _train_step(model, opt, step)
    path = save_checkpoint(tmp_path, 3, {"model": model}, {"optimizer": opt}, {"wall_s": 1.5})
    assert path == tmp_path / "step-00000003"
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors", "optimizer.optim.safetensors", "state.json"]

    other, other_opt = _model_and_optimizer(seed=1)  # different weights, empty optimizer state
    state = load_checkpoint(path, {"model": other}, {"optimizer": other_opt})
    assert state == {"step": 3, "wall_s": 1.5}
    _assert_same_state(model.state_dict(), other.state_dict())
    saved, loaded = opt.state_dict(), other_opt.state_dict()
    assert saved["state"].keys() == loaded["state"].keys() == {0, 1, 2, 3}
    for pid in saved["state"]:
        _assert_same_state(saved["state"][pid], loaded["state"][pid])
    assert float(loaded["state"][0]["step"]) == 3.0
    # JSON turns the betas tuple into a list; every value is kept
    assert json.loads(json.dumps(saved["param_groups"])) == loaded["param_groups"]

    for step in range(3, 6):  # the next steps are bit-identical
        _train_step(model, opt, step)
        _train_step(other, other_opt, step)
    _assert_same_state(model.state_dict(), other.state_dict())


def test_optimizer_without_state_round_trips(tmp_path):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path, 0, {"model": model}, {"optimizer": opt})
    other, other_opt = _model_and_optimizer(seed=1)
    load_checkpoint(path, {"model": other}, {"optimizer": other_opt})
    assert other_opt.state_dict()["state"] == {}
    _train_step(model, opt, 0)
    _train_step(other, other_opt, 0)
    _assert_same_state(model.state_dict(), other.state_dict())


def test_latest_names_the_newest_and_old_checkpoints_are_pruned(tmp_path):
    model, opt = _model_and_optimizer()
    assert latest_checkpoint(tmp_path) is None  # no pointer yet
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"model": model}, {"optimizer": opt}, keep=2)
        assert latest_checkpoint(tmp_path) == tmp_path / f"step-{step:08d}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest", "step-00000030", "step-00000040"]
    assert (tmp_path / "latest").read_text() == "step-00000040"
    save_checkpoint(tmp_path, 50, {"model": model}, keep=3)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000030", "step-00000040", "step-00000050"]


def test_keep_zero_keeps_every_checkpoint(tmp_path):
    model, _ = _model_and_optimizer()
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"model": model}, keep=0)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000010", "step-00000020", "step-00000030"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000030"


def test_rewriting_a_step_replaces_it(tmp_path):
    model, _ = _model_and_optimizer()
    save_checkpoint(tmp_path, 5, {"model": model}, extra={"note": "first"})
    with torch.no_grad():
        model[0].weight.add_(1.0)
    save_checkpoint(tmp_path, 5, {"model": model}, extra={"note": "second"})
    other, _ = _model_and_optimizer(seed=1)
    assert load_checkpoint(latest_checkpoint(tmp_path), {"model": other})["note"] == "second"
    assert torch.equal(other[0].weight, model[0].weight)


def test_a_run_started_over_keeps_its_own_checkpoints(tmp_path):
    """Checkpoints left by an abandoned longer run never push out the new run's ones."""
    model, opt = _model_and_optimizer()
    for step in (30, 40):
        save_checkpoint(tmp_path, step, {"model": model}, {"optimizer": opt}, keep=2)
    for step in (10, 20):  # the run started over in the same folder
        save_checkpoint(tmp_path, step, {"model": model}, {"optimizer": opt}, keep=2)
        assert latest_checkpoint(tmp_path) == tmp_path / f"step-{step:08d}"
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000010", "step-00000020"]


def test_failed_save_leaves_no_partial_folder_and_latest_unchanged(tmp_path, monkeypatch):
    model, opt = _model_and_optimizer()
    save_checkpoint(tmp_path, 1, {"model": model}, {"optimizer": opt})
    real_save = checkpoint.save_file

    def crash_on_optimizer(tensors, path, metadata=None):
        if str(path).endswith(".optim.safetensors"):
            raise KeyboardInterrupt  # killed half-way through the checkpoint
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", crash_on_optimizer)
    _train_step(model, opt, 1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"model": model}, {"optimizer": opt})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000001"


def test_leftover_tmp_folder_is_ignored_and_kept_out_of_pruning(tmp_path):
    model, _ = _model_and_optimizer()
    leftover = tmp_path / ".tmp-abc123"  # a save killed before its rename
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"model": model}, keep=1)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000003"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-abc123", "latest", "step-00000003"]


def test_latest_pointing_at_an_incomplete_folder_is_no_checkpoint(tmp_path):
    model, _ = _model_and_optimizer()
    path = save_checkpoint(tmp_path, 7, {"model": model})
    (path / "state.json").unlink()
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "latest").write_text("step-00000099\n")
    assert latest_checkpoint(tmp_path) is None


def test_missing_module_file_raises_naming_it(tmp_path):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, {"model": model}, {"optimizer": opt})
    with pytest.raises(FileNotFoundError, match=r"has no ema\.safetensors"):
        load_checkpoint(path, {"model": model, "ema": model})
    with pytest.raises(FileNotFoundError, match=r"other\.optim\.safetensors"):
        load_checkpoint(path, {"model": model}, {"other": opt})
