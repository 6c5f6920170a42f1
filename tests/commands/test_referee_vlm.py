"""`dpt referee` with BLIP-2 and CLIP referees from local folders, on the tiny SD model: each
writes its images with the paper's settings as the preset, and a wrong or incomplete
referee folder ends in one line and exit status 2 before the SD model loads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_vlm_referees import REFEREES, build_blip2_folder, build_clip_folder, folder_of

from dpt_t2i.cli import main

QUICK = ["--prompt", "a red circle", "--prompt", "two blue squares", "--num-images", 1,
         "--iterations", 2, "--views", 2, "--top-k", 1, "--ema-start", 0, "--ema-restart", 1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{"blip-2": a tiny BLIP-2 retrieval folder, "clip": a tiny CLIP folder}."""
    root = tmp_path_factory.mktemp("vlm")
    return {"blip-2": build_blip2_folder(root / "blip2"), "clip": build_clip_folder(root / "clip")}


def _dpt(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.mark.parametrize("referee", REFEREES)
def test_each_referee_writes_images_with_the_papers_settings(tmp_path, tiny_model_plain,
                                                              folders, referee):
    folder = folder_of(referee, folders)
    argv = ["referee", "--model", tiny_model_plain, *QUICK, "--referee", referee,
            "--referee-model", folder]
    assert _dpt(*argv, "--out", tmp_path / "a") == 0
    records = [json.loads(x) for x in (tmp_path / "a" / "index.jsonl").read_text().splitlines()]
    assert [(r["file"], r["referee"], r["referee_model"]) for r in records] == [
        ("00000.png", referee, str(folder)), ("00001.png", referee, str(folder))]
    # the paper's preset fills what the flags leave
    assert (records[0]["init"], records[0]["referee_weight"], records[0]["sds_weight"],
            records[0]["sds_weight_end"], records[0]["sds_time_weight"],
            records[0]["guidance"], records[0]["iterations"], records[0]["top_k"]) == \
        ("noise", 2.0, 6400.0, 3200.0, "constant", 30.0, 2, 1)
    image = np.asarray(Image.open(tmp_path / "a" / "00000.png"))
    assert image.shape == (16, 16, 3) and image.std() > 1  # a picture, not a flat field
    if referee == "blip2-itm":  # seeded: a second run writes the same bytes
        assert _dpt(*argv, "--out", tmp_path / "b") == 0
        for name in ("00000.png", "00001.png", "index.jsonl"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_referee_changes_the_image_and_the_flags_win(tmp_path, tiny_model_plain,
                                                         folders):
    """Referee alone (no SDS, no EMA) with a step of 0 and of 20: the image moves; named
    settings and flags override the preset."""
    base = ["referee", "--model", tiny_model_plain, "--prompt", "a red circle", "--num-images",
            1, "--iterations", 3, "--no-augment", "--no-sds", "--no-ema", "--referee",
            "blip2-itc", "--referee-model", folders["blip-2"]]
    assert _dpt(*base, "--lr", 0, "--lr-end", 0, "--out", tmp_path / "still") == 0
    assert _dpt(*base, "--lr", 20, "--lr-end", 20, "--reference-settings",
                "--sds-time-weight", "constant", "--out", tmp_path / "moved") == 0
    still = np.asarray(Image.open(tmp_path / "still" / "00000.png")).astype(float)
    moved = np.asarray(Image.open(tmp_path / "moved" / "00000.png")).astype(float)
    assert np.abs(still - moved).mean() > 1.0  # levels of 255
    record = json.loads((tmp_path / "moved" / "index.jsonl").read_text())
    assert (record["top_k"], record["sds_weight"], record["sds_time_weight"], record["lr"]) == \
        (5, 800.0, "constant", 20.0)


def _loading_refused(*args, **kwargs):
    raise AssertionError("the SD model was loaded")


def _break(tmp_path, folders, case):
    folder = tmp_path / "folder"
    shutil.copytree(folders["blip-2"], folder)
    if case == "lacking tensors":
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        save_file({k: v for k, v in tensors.items() if not k.startswith("text_projection")},
                  folder / "model.safetensors", metadata={"format": "pt"})
    else:
        (folder / case).unlink()
    return folder


@pytest.mark.parametrize("case,message", [
    ("config.json", "has no config.json"),
    ("tokenizer.json", "has no tokenizer files"),
    ("model.safetensors", "has no weights"),
    ("preprocessor_config.json", "has no preprocessor_config.json"),
    ("lacking tensors", "its weights lack 2 of Blip2ForImageTextRetrieval's tensors "
                        "(text_projection.bias, text_projection.weight)"),
])
def test_a_broken_referee_folder_exits_2_before_the_model_loads(tmp_path, capsys, monkeypatch,
                                                                 tiny_model_plain, folders,
                                                                 case, message):
    monkeypatch.setattr("dpt_t2i.generation.referee_folder.load_bundle", _loading_refused)
    folder = _break(tmp_path, folders, case)
    assert _dpt("referee", "--model", tiny_model_plain, *QUICK, "--referee", "blip2-itc",
                "--referee-model", folder, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dpt referee: error: --referee-model ")
    assert str(folder) in err and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,message", [
    (["--referee", "blip2-itm"], "--referee blip2-itm needs --referee-model PATH"),
    (["--referee", "dpt", "--referee-model", "FOLDER"], "--referee dpt reads --dpt, not "
                                                        "--referee-model"),
    (["--referee", "blip2-itc", "--referee-model", "FOLDER", "--dpt", "x"],
     "--referee blip2-itc reads no DPT folder; drop --dpt"),
    (["--referee", "clip", "--referee-model", "BLIP"], "holds a 'blip-2' model"),
    (["--referee", "blip2-itm", "--referee-model", "MISSING"], "is not a folder"),
    (["--referee", "clip", "--device", "banana"], "--device 'banana' is not a torch device"),
    (["--referee", "clip", "--device", "cuda:99"], "--device cuda:99: this machine has"),
])
def test_referee_flags_are_checked(tmp_path, capsys, monkeypatch, tiny_model_plain,
                                   folders, extra, message):
    monkeypatch.setattr("dpt_t2i.generation.referee_folder.load_bundle", _loading_refused)
    paths = {"FOLDER": folders["blip-2"], "BLIP": folders["blip-2"],
             "MISSING": tmp_path / "missing"}
    extra = [paths.get(x, x) for x in extra]
    assert _dpt("referee", "--model", tiny_model_plain, *QUICK, *extra,
                "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,message", [
    (["--paper-settings", "--reference-settings"], "not allowed with argument"),
    (["--sds-time-weight", "linear"], "invalid choice: 'linear'"),
])
def test_referee_parser_refuses(tmp_path, capsys, tiny_model_plain, folders, extra,
                                message):
    with pytest.raises(SystemExit) as exit_:
        _dpt("referee", "--model", tiny_model_plain, *QUICK, "--referee", "blip2-itm",
             "--referee-model", folders["blip-2"], *extra, "--out", tmp_path / "out")
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_model_and_the_referee_load_on_the_device_asked_for(tmp_path, monkeypatch,
                                                               tiny_model_plain, folders):
    """--device reaches the model's loader, and the referee's weights follow the model."""
    from dpt_t2i.generation import referee_folder as rf

    seen = {}

    def load_bundle(path, device="cpu", *args, **kwargs):
        seen["device"] = device
        return real(path, device, *args, **kwargs)

    def vlm_scorer(vlm):
        seen["referee"] = {p.device.type for p in vlm.model.parameters()}
        return real_scorer(vlm)

    real, real_scorer = rf.load_bundle, rf.vlm_scorer
    monkeypatch.setattr(rf, "load_bundle", load_bundle)
    monkeypatch.setattr(rf, "vlm_scorer", vlm_scorer)
    assert _dpt("referee", "--model", tiny_model_plain, *QUICK, "--referee", "clip",
                "--referee-model", folders["clip"], "--device", "cpu",
                "--out", tmp_path / "out") == 0
    assert seen == {"device": "cpu", "referee": {"cpu"}}
