"""Atomic, resumable checkpoints: exact round trips, `latest`, pruning and partial folders."""

import json
import shutil

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
        save_checkpoint(tmp_path, step, {"model": model}, {"optimizer": opt}, keep=2,
                        run_id="abandoned")
    for step in (10, 20):  # the run started over in the same folder (a new run id)
        save_checkpoint(tmp_path, step, {"model": model}, {"optimizer": opt}, keep=2,
                        run_id="new")
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


# The fault suite: what a resume does with damaged run folders. A run folder of three
# checkpoints of run "r1" (steps 1, 2, 3); each test damages it and resumes.

def _three_checkpoints(run_dir):
    """Train 3 steps, checkpointing each; returns (model, opt, {step: weights at that step})."""
    model, opt = _model_and_optimizer()
    weights = {}
    for step in (1, 2, 3):
        _train_step(model, opt, step)
        save_checkpoint(run_dir, step, {"model": model}, {"optimizer": opt}, {"wall_s": 1.0},
                        keep=0, run_id="r1")
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return weights


def _snapshot(run_dir) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _truncate(file, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:int(len(data) * keep)])


def _resume(run_dir, **kw):
    model, opt = _model_and_optimizer(seed=5)  # other weights: loading must replace them
    return model, opt, checkpoint.resume_run(run_dir, {"model": model}, {"optimizer": opt}, **kw)


def test_resume_loads_the_latest_and_says_from_which_step(tmp_path):
    weights = _three_checkpoints(tmp_path)
    model, opt, resumed = _resume(tmp_path)
    assert resumed.step == 3 and resumed.run_id == "r1" and resumed.state["wall_s"] == 1.0
    assert resumed.message == f"resuming from {tmp_path / 'step-00000003'} (step 3)"
    _assert_same_state(weights[3], model.state_dict())
    assert float(opt.state_dict()["state"][0]["step"]) == 3.0


DAMAGE = {
    "model truncated": (lambda p: _truncate(p / "model.safetensors"),
                        "model.safetensors is truncated"),
    "model cut to 4 bytes": (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 4),
                             "model.safetensors is truncated (4 bytes)"),
    "model garbage": (lambda p: (p / "model.safetensors").write_bytes(b"\x10" + b"\x00" * 300),
                      "model.safetensors is not a safetensors file"),
    "model missing": (lambda p: (p / "model.safetensors").unlink(),
                      "model.safetensors is missing"),
    "optimizer truncated": (lambda p: _truncate(p / "optimizer.optim.safetensors", 0.9),
                            "optimizer.optim.safetensors is truncated"),
    "state garbage": (lambda p: (p / "state.json").write_text("xx{"),
                      "state.json is not valid JSON"),
    "state missing": (lambda p: (p / "state.json").unlink(), "state.json is missing"),
    "state without step": (lambda p: (p / "state.json").write_text('{"wall_s": 1}'),
                           "state.json has no integer 'step'"),
    "state of another step": (lambda p: (p / "state.json").write_text('{"step": 7}'),
                              "state.json says step 7"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    weights = _three_checkpoints(tmp_path)
    harm, reason = DAMAGE[damage]
    harm(tmp_path / "step-00000003")
    before = _snapshot(tmp_path)
    model, opt, resumed = _resume(tmp_path)
    assert resumed.step == 2 and resumed.run_id == "r1"
    assert resumed.message.startswith(f"resuming from {tmp_path / 'step-00000002'} (step 2); "
                                      f"skipped step-00000003: {reason}")
    assert "\n" not in resumed.message
    _assert_same_state(weights[2], model.state_dict())
    assert float(opt.state_dict()["state"][0]["step"]) == 2.0
    assert _snapshot(tmp_path) == before  # nothing deleted or rewritten
    with pytest.raises((ValueError, FileNotFoundError), match=reason.split(" ")[0]):
        load_checkpoint(tmp_path / "step-00000003", {"model": model}, {"optimizer": opt})


@pytest.mark.parametrize("pointer, note", [
    (b"garbage\x00\xff", "latest holds b'garbage\\x00\\xff', not a step folder name"),
    (None, "latest is missing"),
    (b"step-00000099", "latest names step-00000099, which is gone"),
])
def test_a_bad_latest_pointer_resumes_from_the_newest_intact_folder(tmp_path, pointer, note):
    weights = _three_checkpoints(tmp_path)
    _truncate(tmp_path / "step-00000003" / "optimizer.optim.safetensors")
    if pointer is None:
        (tmp_path / "latest").unlink()
    else:
        (tmp_path / "latest").write_bytes(pointer)
    before = _snapshot(tmp_path)
    model, _, resumed = _resume(tmp_path)
    assert resumed.step == 2
    assert resumed.message.startswith(
        f"resuming from {tmp_path / 'step-00000002'} (step 2); {note}: took the newest intact "
        "step folder; skipped step-00000003: optimizer.optim.safetensors is truncated")
    _assert_same_state(weights[2], model.state_dict())
    assert _snapshot(tmp_path) == before


def test_no_intact_checkpoint_refuses_and_deletes_nothing(tmp_path):
    _three_checkpoints(tmp_path)
    _truncate(tmp_path / "step-00000003" / "model.safetensors")
    (tmp_path / "step-00000002" / "state.json").unlink()
    (tmp_path / "step-00000001" / "state.json").write_text("{")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError) as err:
        _resume(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}: no intact checkpoint")
    for part in ("step-00000003: model.safetensors is truncated",
                 "step-00000002: state.json is missing",
                 "step-00000001: state.json is not valid JSON", "nothing was deleted",
                 "--resume no"):
        assert part in message
    assert _snapshot(tmp_path) == before


def test_a_garbage_pointer_over_two_runs_refuses(tmp_path):
    _three_checkpoints(tmp_path)
    model, opt = _model_and_optimizer()
    other = save_checkpoint(tmp_path / "other", 5, {"model": model}, {"optimizer": opt},
                            run_id="r0")
    other.rename(tmp_path / other.name)  # as a pruning cut short would leave it
    shutil.rmtree(tmp_path / "other")
    (tmp_path / "latest").write_text("?")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="cannot tell which run to continue: latest holds b'\\?'"
                       ".*different runs .*step-00000005: run r0.*nothing was deleted"):
        _resume(tmp_path)
    assert _snapshot(tmp_path) == before
    (tmp_path / "latest").write_text("step-00000003")  # the pointer settles it
    _, _, resumed = _resume(tmp_path)
    assert resumed.step == 3 and "skipped step-00000005: written by another run" in \
        resumed.message


def test_a_checkpoint_newer_than_latest_is_taken(tmp_path):
    """Killed between renaming step 3 into place and moving `latest` on: step 3 is whole."""
    weights = _three_checkpoints(tmp_path)
    (tmp_path / "latest").write_text("step-00000002")
    model, _, resumed = _resume(tmp_path)
    assert resumed.step == 3 and resumed.message.endswith(
        "(step 3); newer than step-00000002, which latest still names")
    _assert_same_state(weights[3], model.state_dict())


def test_pruning_only_removes_what_a_verified_checkpoint_makes_old(tmp_path):
    weights = _three_checkpoints(tmp_path)
    (tmp_path / "step-00000003" / "state.json").unlink()  # newer, of no known run: kept
    model, opt, resumed = _resume(tmp_path)
    assert resumed.step == 2
    save_checkpoint(tmp_path, 1, {"model": model}, {"optimizer": opt}, keep=1,
                    run_id=resumed.run_id)  # an older step rewritten: nothing newer goes
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000001", "step-00000002", "step-00000003"]
    _train_step(model, opt, 3)
    save_checkpoint(tmp_path, 3, {"model": model}, {"optimizer": opt}, keep=1,
                    run_id=resumed.run_id)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003"]
    _, _, again = _resume(tmp_path)
    assert again.step == 3 and again.message.endswith("(step 3)")
    _assert_same_state(weights[3], _resume(tmp_path)[0].state_dict())


def test_a_checkpoint_that_does_not_read_back_never_lands_or_prunes(tmp_path, monkeypatch):
    _three_checkpoints(tmp_path)
    before = _snapshot(tmp_path)
    real_save = checkpoint.save_file

    def short_write(tensors, path, metadata=None):  # a full disk that did not say so
        real_save(tensors, path, metadata=metadata)
        _truncate(path)

    monkeypatch.setattr(checkpoint, "save_file", short_write)
    model, opt = _model_and_optimizer()
    with pytest.raises(ValueError, match=r"step-00000004 did not read back \(model\.safetensors"
                       " is truncated"):
        save_checkpoint(tmp_path, 4, {"model": model}, {"optimizer": opt}, keep=1, run_id="r1")
    assert _snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest", "step-00000001", "step-00000002", "step-00000003"]


def test_starting_over_replaces_the_old_run_once_it_has_a_checkpoint(tmp_path):
    _three_checkpoints(tmp_path)
    model, opt, fresh = _resume(tmp_path, resume=False)
    assert fresh.step == 0 and fresh.run_id not in (None, "r1")
    assert "starting over at step 0" in fresh.message and "3 checkpoint(s)" in fresh.message
    assert len(list(tmp_path.glob("step-*"))) == 3  # nothing goes before the new run has one
    save_checkpoint(tmp_path, 2, {"model": model}, {"optimizer": opt}, keep=2,
                    run_id=fresh.run_id)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000002"]
    assert json.loads((tmp_path / "step-00000002" / "state.json").read_text())["run"] == \
        fresh.run_id
    assert _resume(tmp_path)[2].run_id == fresh.run_id


def test_an_empty_run_folder_starts_a_new_run(tmp_path):
    _, _, resumed = _resume(tmp_path / "new")
    assert resumed.step == 0 and resumed.state == {} and resumed.message is None
    assert resumed.run_id and resumed.run_id != _resume(tmp_path / "new")[2].run_id


def test_checkpoints_from_before_run_ids_resume_as_their_own_run(tmp_path):
    model, opt = _model_and_optimizer()
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"model": model}, {"optimizer": opt})
    assert "run" not in json.loads((tmp_path / "step-00000002" / "state.json").read_text())
    _truncate(tmp_path / "step-00000002" / "model.safetensors")
    _, _, resumed = _resume(tmp_path)
    assert resumed.step == 1 and resumed.run_id is None
    save_checkpoint(tmp_path, 2, {"model": model}, {"optimizer": opt}, run_id=resumed.run_id)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000001", "step-00000002"]


def test_a_checkpoint_of_another_shape_is_a_value_error_naming_the_file(tmp_path):
    model, _ = _model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, {"model": model})
    with pytest.raises(ValueError, match=r"model\.safetensors does not fit this model"):
        load_checkpoint(path, {"model": torch.nn.Linear(4, 3)})


def test_trim_log_drops_the_steps_a_resumed_run_takes_again(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0, "loss": 1}\nnot json\n{"step": 10}\n{"step": 20}\n'
                   '{"step": 30}\n{"step": 4')  # the last line cut by a kill
    checkpoint.trim_log(log, 20)
    assert log.read_text() == '{"step": 0, "loss": 1}\nnot json\n{"step": 10}\n'
    checkpoint.trim_log(log, 0)
    assert log.read_text() == "not json\n"
    log.write_text('{"step": 1}\n{"step": 2}')  # a whole last line that lost its newline
    checkpoint.trim_log(log, 5)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    checkpoint.trim_log(tmp_path / "absent.jsonl", 0)
    assert not (tmp_path / "absent.jsonl").exists()
