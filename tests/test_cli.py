"""The command line's error contract: one line on stderr and exit status 2, never a traceback."""

import pytest

from dpt_t2i.cli import main


def test_a_value_with_line_breaks_stays_on_one_line(capsys):
    assert main(["evaluate", "no\rsuch\nfolder"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dpt evaluate: error: ")
    assert "no\\rsuch\\nfolder" in err


def test_a_path_the_file_system_refuses_is_one_line(tiny_model, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["probe", "--run-dir", str(blocker / "run"), "--model", str(tiny_model),
                 "--steps", "1", "--batch", "2", "--block", "up1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("dpt probe: error: ")
    assert str(blocker) in err
    assert blocker.read_text() == "not a folder"


def test_an_unknown_argument_is_named_by_its_command(capsys):
    """An argument no flag takes (here a negative number after an optional value, which
    argparse reads as a flag) is one line from the command it was given to."""
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--prompt", "a red circle", "--out", "x", "--self-correct", "-inf"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "dpt generate: error: unrecognized arguments: -inf"
