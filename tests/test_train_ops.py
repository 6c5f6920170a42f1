"""A DPT run's operations on the shipped Shapes model: the world size a resume must keep,
`--steps` changed on resume, and what log.jsonl records."""

import json

import pytest
from test_train import probe_config, run, settings

from dpt_t2i.io.bundle import default_model_path


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
