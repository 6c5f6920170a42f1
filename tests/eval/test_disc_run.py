"""`DiscSettings` and `run_discriminative`: the library behind `dpt evaluate-disc`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dpt_t2i.cli import main
from dpt_t2i.eval.disc_run import DiscSettings, format_tables, run_discriminative
from dpt_t2i.io.bundle import check_model_folder

MODEL = Path("model")  # DiscSettings does not read the folder; run_discriminative does


@pytest.mark.parametrize("fields, message", [
    ({"method": "dpt"}, r"--method dpt needs --dpt PATH \(a probe or tune run's final/\)"),
    ({"method": "clip", "dpt": Path("x")}, "--method clip reads no DPT folder; drop --dpt"),
    ({"method": "grep"}, "--method must be one of dpt, clip, diffusion-itm, got 'grep'"),
    ({"method": "diffusion-itm", "itm_timesteps": (5, 1000)},
     r"--itm-timesteps must be comma-separated whole numbers in \[0, 1000\), got '5,1000'"),
    ({"method": "diffusion-itm", "itm_timesteps": ()}, "--itm-timesteps .* got ''"),
    ({"dpt": Path("d"), "timestep": 1000}, r"--timestep must be in \[0, 1000\), got 1000"),
    ({"dpt": Path("d"), "n_itm": 0, "n_rec": 0}, "--n-itm and --n-rec must be >= 0 and not "
                                                 "both 0"),
    ({"dpt": Path("d"), "n_rec": -1}, "--n-itm and --n-rec must be >= 0"),
    ({"method": "clip", "n_itm": 0}, "--method clip scores image-text matching only; --n-itm "
                                     "must be > 0"),
    ({"dpt": Path("d"), "coco_captions": Path("c.json")},
     "give both --coco-captions and --coco-images"),
    ({"dpt": Path("d"), "refcoco_refs": Path("r.p")}, "--refcoco-refs needs --refcoco-instances"),
    ({"dpt": Path("d"), "refcoco_refs": Path("r.p"), "refcoco_instances": Path("i.json")},
     r"give --refcoco-images \(or --coco-images\) for the RefCOCO images"),
])
def test_disc_settings_name_the_flag_at_fault(fields, message):
    with pytest.raises(ValueError, match=message):
        DiscSettings(model=MODEL, **fields)


def test_disc_settings_defaults_and_what_the_baselines_skip():
    settings = DiscSettings(model=MODEL, dpt=Path("d"))
    assert (settings.timestep, settings.n_itm, settings.n_rec, settings.seed) == (100, 200, 400, 1)
    assert settings.itm_timesteps == tuple(range(50, 1000, 100))
    assert settings.refcoco_splits == ("val", "testA", "testB")
    assert settings.rec_count == 400 and not settings.real_data
    # the baselines draw no boxes, and RefCOCO flags then need no companions
    clip = DiscSettings(model=MODEL, method="clip", refcoco_refs=Path("r.p"))
    assert clip.rec_count == 0 and clip.real_data
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 2  # a settings object is a cache key (`dpt report`)


def test_run_discriminative_returns_what_the_command_prints(tiny_model, tiny_dpt, capsys):
    argv = ["evaluate-disc", "--method", "diffusion-itm", "--dpt", str(tiny_dpt), "--model",
            str(tiny_model), "--n-itm", "2", "--itm-timesteps", "200,600", "--seed", "3"]
    assert main([*argv, "--json"]) == 0
    printed = capsys.readouterr().out
    settings = DiscSettings(method="diffusion-itm", dpt=tiny_dpt,
                            model=check_model_folder(tiny_model), n_itm=2,
                            itm_timesteps=(200, 600), seed=3)
    result = run_discriminative(settings, progress=False)
    assert json.dumps(result) + "\n" == printed
    assert set(result) == {"itm", "rec", "settings"} and result["rec"] == {}
    assert result["settings"]["unet_evals_per_pair"] == 2
    assert main(argv) == 0
    assert capsys.readouterr().out == format_tables(result) + "\n"
