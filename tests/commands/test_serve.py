"""`dpt serve`: input checked before the model loads (the page: tests/test_demo*.py)."""

from dpt_t2i.cli import main


def test_bad_port_is_a_one_line_error(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port must be from 1 to 65535, got 70000" in capsys.readouterr().err


def test_a_folder_that_is_not_dpt_is_named(tmp_path, capsys):
    assert main(["serve", "--dpt", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a DPT folder" in capsys.readouterr().err


def test_a_missing_model_is_named(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
