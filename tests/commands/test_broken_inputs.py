"""Broken inputs met by the commands other than `dpt generate` (whose table is BAD in
test_generate.py): each is one line on stderr, exit status 2, and nothing written."""

import re

import pytest
from test_generate import BROKEN_DPT, broken_dpt

from dpt_t2i.cli import main

# a broken DPT folder (test_generate.broken_dpt) -> what the error must say
DPT_ERRORS = {
    "heads-truncated": r"cannot read .*heads-truncated/heads.safetensors \(Error while "
                       r"deserializing header: .*\); expected a whole safetensors file",
    "lora-truncated": r"cannot read .*lora-truncated/lora.safetensors \(Error while "
                      r"deserializing header: .*\); expected a whole safetensors file",
    "lora-missing": r"lora-missing/lora.safetensors is missing; the DPT folder's "
                    r"dpt_config.json says it holds the LoRA weights \(config 'lora'\)",
    "config-list": r"config-list/dpt_config.json is not a valid DPT config: expected a JSON "
                   r"object with block, condition, adapter and lora, got a list",
}
# command -> its arguments, ending with the flag that takes the DPT folder
COMMANDS = {
    "evaluate-disc": ["evaluate-disc", "--n-itm", "2", "--n-rec", "2", "--dpt"],
    "referee": ["referee", "--prompt", "a red circle", "--num-images", "1", "--iterations", "1",
                "--out", "{tmp}/out", "--dpt"],
    "tune": ["tune", "--steps", "1", "--run-dir", "{tmp}/run", "--init"],
}


def _one_line(capsys, code, command, pattern):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"dpt {command}: error: "), err
    assert re.search(pattern, err), err


@pytest.mark.parametrize("kind", BROKEN_DPT)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_broken_dpt_folder_is_one_line(command, kind, tiny_model, tiny_dpt, tmp_path, capsys):
    folder = broken_dpt(kind, tiny_dpt, tmp_path / kind)
    before = sorted(tmp_path.rglob("*"))
    args = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    code = main([*args, str(folder), "--model", str(tiny_model)])
    _one_line(capsys, code, command, DPT_ERRORS[kind])
    assert sorted(tmp_path.rglob("*")) == before


REFEREE_BAD = {  # case: (arguments, what the error must say); refused before the model loads
    "grammar cannot read it": (["--prompt", "circle red a"],
                               r"prompt 'circle red a' is not one the Shapes grammar reads"),
    "line break in a prompt": (["--prompt", "a red circle\nand a blue square"],
                               r"--prompt number 1 'a red circle\\nand a blue square' holds a "
                               "line break"),
    "seed past 2**63": (["--prompt", "a red circle", "--seed", str(2**64)],
                        rf"--seed {2**64} gives the run's 4 images seeds up to"),
    "init steps past the schedule": (["--prompt", "a red circle", "--init", "sample",
                                      "--init-steps", "1001"],
                                     r"--init-steps must be at most 1000 on this model"),
}


@pytest.mark.parametrize("case", list(REFEREE_BAD))
def test_referee_reads_prompts_and_seeds_as_generate_does(case, tiny_model, tmp_path, capsys):
    args, pattern = REFEREE_BAD[case]
    code = main(["referee", "--model", str(tiny_model), "--out", str(tmp_path / "out"), *args])
    _one_line(capsys, code, "referee", pattern)
    assert list(tmp_path.iterdir()) == []
