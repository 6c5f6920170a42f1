"""`dpt serve`: input checked before the model loads (the page: tests/test_demo*.py)."""

import re
import socket

import pytest

from dpt_t2i.app.demo import Demo
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


def _one_line(capsys, pattern):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dpt serve: error: "), err
    assert re.search(pattern, err), err


def test_a_busy_port_is_one_line_before_the_model_loads(capsys, monkeypatch):
    pytest.importorskip("gradio")
    monkeypatch.setattr(Demo, "load", _not_loaded)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    _one_line(capsys, rf"--port {port} is in use on 127.0.0.1; choose another with --port N, or "
                      "leave --port out to take the first free one from 7860$")


@pytest.mark.parametrize("host, pattern", [
    ("no-such-host.invalid", r"--host 'no-such-host.invalid' does not resolve \(.*\); expected "
                             r"an address of this machine, such as 127.0.0.1"),
    ("192.0.2.1", r"cannot serve on --host 192.0.2.1 \(.*\); expected an address of this "
                  r"machine"),  # TEST-NET-1: never this machine's
])
def test_an_unusable_host_is_one_line_before_the_model_loads(host, pattern, capsys, monkeypatch):
    pytest.importorskip("gradio")
    monkeypatch.setattr(Demo, "load", _not_loaded)
    assert main(["serve", "--host", host]) == 2
    _one_line(capsys, pattern)


def _not_loaded(*args, **kwargs):
    raise AssertionError("the model loaded before the address was checked")
