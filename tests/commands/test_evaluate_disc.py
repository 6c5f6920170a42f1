"""`dpt evaluate-disc`: the DPT weights it scores by default."""

import json

import pytest

from dpt_t2i.cli import main
from dpt_t2i.io.bundle import default_model_path
from dpt_t2i.io.dpt_folder import default_dpt_path


def dpt(*args) -> int:
    return main([str(a) for a in args])


@pytest.mark.skipif(not default_dpt_path().is_dir(), reason="the shipped DPT weights are absent")
def test_method_dpt_scores_the_shipped_weights_on_the_shipped_model(capsys):
    assert dpt("evaluate-disc", "--n-itm", 2, "--n-rec", 2, "--json") == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["method"] == "dpt"
    assert settings["dpt"] == str(default_dpt_path())
    assert settings["model"] == str(default_model_path())


def test_other_models_still_need_dpt(tiny_model, capsys):
    assert dpt("evaluate-disc", "--model", tiny_model, "--n-itm", 2) == 2
    err = capsys.readouterr().err
    assert err == "dpt evaluate-disc: error: --method dpt needs --dpt PATH (a probe or tune " \
                  "run's final/)\n"


@pytest.mark.parametrize("device,message", [
    ("banana", "--device 'banana' is not a torch device name"),
    ("cuda:99", "--device cuda:99: this machine has"),
])
def test_a_device_that_is_not_here_is_one_line(device, message, capsys):
    assert dpt("evaluate-disc", "--n-itm", 2, "--device", device) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_zero_shot_methods_take_no_default_dpt(monkeypatch, capsys):
    seen = []

    def stop(settings, *args, **kwargs):
        seen.append(settings)
        raise ValueError("stopped before loading")

    monkeypatch.setattr("dpt_t2i.commands.evaluate_disc.run_discriminative", stop)
    assert dpt("evaluate-disc", "--method", "diffusion-itm", "--n-itm", 2) == 2
    assert dpt("evaluate-disc", "--method", "clip", "--n-itm", 2) == 2
    assert [(s.method, s.dpt) for s in seen] == [("diffusion-itm", None), ("clip", None)]
    assert capsys.readouterr().err.count("stopped before loading") == 2


def test_device_reaches_the_model_and_the_adapter(monkeypatch, capsys):
    from dpt_t2i.eval import disc_run

    seen = {}
    real_bundle, real_scorer = disc_run.load_bundle, disc_run.DiscriminativeScorer

    def load_bundle(path, device="cpu", *args, **kwargs):
        seen["model"] = device
        return real_bundle(path, device, *args, **kwargs)

    def scorer(bundle, heads, *args, **kwargs):
        seen["heads"] = {p.device.type for p in heads.parameters()}
        return real_scorer(bundle, heads, *args, **kwargs)

    monkeypatch.setattr(disc_run, "load_bundle", load_bundle)
    monkeypatch.setattr(disc_run, "DiscriminativeScorer", scorer)
    assert dpt("evaluate-disc", "--n-itm", 2, "--n-rec", 2, "--device", "cpu", "--json") == 0
    assert json.loads(capsys.readouterr().out)["itm"]["ood"]["n"] == 2
    assert seen == {"model": "cpu", "heads": {"cpu"}}
