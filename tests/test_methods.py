"""The registry of generation methods: choosing, checking and recording a method."""

from pathlib import Path

import pytest

from dpt_t2i.app.demo import METHODS as DEMO_METHODS
from dpt_t2i.generation.methods import (METHODS, SAMPLED, FolderRun, MethodSpec, SamplerSettings,
                                        choose_method, plan_images, referee_preset, shipped_dpt)
from dpt_t2i.generation.referee import SHAPES_NOISE_SETTINGS, SHAPES_SETTINGS, RefereeSettings
from dpt_t2i.io.bundle import default_model_path
from dpt_t2i.io.dpt_folder import default_dpt_path

SHIPPED = default_model_path().resolve()


def test_the_shipped_model_means_the_shipped_dpt_weights_and_referee_preset(tiny_model):
    assert shipped_dpt(SHIPPED) == default_dpt_path()
    assert shipped_dpt(tiny_model) is None
    assert referee_preset(SHIPPED) == SHAPES_SETTINGS
    assert referee_preset(SHIPPED, "sample") == SHAPES_SETTINGS
    assert referee_preset(SHIPPED, "noise") == SHAPES_NOISE_SETTINGS
    assert referee_preset(tiny_model) == RefereeSettings()
    assert referee_preset(tiny_model, "noise") == RefereeSettings()


def test_choose_method_resolves_flags_as_dpt_generate_does(tiny_model, tiny_dpt):
    shipped = default_dpt_path().resolve()
    # the shipped folder is stage 1's adapter (no LoRA): it self-corrects at the defaults
    assert choose_method(SHIPPED) == MethodSpec("dpt+sc", dpt=shipped, eta=0.1,
                                                sc_range=(400.0, 600.0), sc_mode="shared",
                                                sc_unit="noise")
    assert choose_method(SHIPPED, self_correct=False) == MethodSpec("dpt", dpt=shipped)
    assert choose_method(SHIPPED, base=True) == MethodSpec("base")
    assert choose_method(SHIPPED, attend_excite=True, subject_words=("circle",)) == \
        MethodSpec("attend-excite", subject_words=("circle",))
    assert choose_method(SHIPPED, eta=5.0, sc_mode="predict-only", sc_unit="raw") == \
        MethodSpec("dpt+sc", dpt=shipped, eta=5.0, sc_mode="predict-only", sc_unit="raw")
    assert choose_method(SHIPPED, eta=0.3, sc_mode="x0") == \
        MethodSpec("dpt+sc", dpt=shipped, eta=0.3, sc_mode="x0", sc_unit="noise")
    assert choose_method(tiny_model) == MethodSpec("base")  # no shipped weights for it
    # a folder with LoRA samples as DPT; self-correction when asked, at the default step
    assert choose_method(tiny_model, dpt=tiny_dpt) == MethodSpec("dpt", dpt=tiny_dpt.resolve())
    assert choose_method(tiny_model, dpt=tiny_dpt, self_correct=True) == \
        MethodSpec("dpt+sc", dpt=tiny_dpt.resolve(), eta=0.1)
    for refused, message in (({"eta": 1.0}, "--self-correct needs DPT weights"),
                             ({"self_correct": True}, "--self-correct needs DPT weights"),
                             ({"dpt": tiny_dpt, "self_correct": True, "sc_unit": "raw"},
                              "--self-correct-unit raw needs a step size"),
                             ({"dpt": tiny_dpt, "self_correct": False, "eta": 0.1},
                              "--no-self-correct cannot go with"),
                             ({"dpt": tiny_dpt, "eta": 10.0},
                              "would move z_t by 10 times its noise level")):
        with pytest.raises(ValueError, match=message):
            choose_method(tiny_model, **refused)
    with pytest.raises(ValueError, match="is not a DPT folder"):
        choose_method(tiny_model, dpt=tiny_model)


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "dpt"}, "needs DPT folder"),
    ({"name": "base", "dpt": Path("x")}, "takes no DPT folder"),
    ({"name": "dpt+sc", "dpt": Path("x")}, "eta goes with method dpt\\+sc"),
    ({"name": "dpt", "dpt": Path("x"), "eta": 1.0}, "eta goes with method dpt\\+sc"),
    ({"name": "dpt+sc", "dpt": Path("x"), "eta": 0.0}, "--self-correct must be a finite"),
    ({"name": "dpt+sc", "dpt": Path("x"), "eta": 1.0, "sc_range": (700.0, 300.0)},
     "LOW <= HIGH"),
    ({"name": "dpt+sc", "dpt": Path("x"), "eta": 1.0, "sc_mode": "sideways"}, "mode must be"),
    ({"name": "dpt+sc", "dpt": Path("x"), "eta": 1.0, "sc_unit": "metres"}, "unit must be"),
    ({"name": "referee"}, "unknown sampling method"),
])
def test_method_spec_refuses_what_cannot_run(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MethodSpec(**kwargs)


def test_index_fields_name_the_method_and_its_settings():
    folder = Path("/w/dpt")
    assert MethodSpec("base").index_fields() == {"method": "base"}
    assert MethodSpec("attend-excite").index_fields() == {"method": "attend-excite"}
    assert MethodSpec("dpt", dpt=folder).index_fields() == {"method": "dpt", "dpt": "/w/dpt"}
    assert MethodSpec("dpt+sc", dpt=folder, eta=10.0, sc_range=(300.0, 700.0), sc_mode="carry",
                      sc_unit="raw").index_fields() == {
        "method": "dpt+sc", "dpt": "/w/dpt", "eta": 10.0, "sc_range": [300.0, 700.0],
        "sc_mode": "carry"}  # as records written before units existed say it
    assert MethodSpec("dpt+sc", dpt=folder, eta=0.1).index_fields() == {
        "method": "dpt+sc", "dpt": "/w/dpt", "eta": 0.1, "sc_range": [400.0, 600.0],
        "sc_mode": "shared", "sc_unit": "noise"}


def test_plan_records_seeds_files_and_settings():
    spec = MethodSpec("dpt", dpt=Path("/w/dpt"))
    records = plan_images(["a red circle", "a blue square"], spec, SamplerSettings(steps=10),
                          Path("/m"), num_images=2, seed=5, benchmark=[{"k": 1}, {"k": 2}])
    assert [(r["file"], r["seed"], r["prompt_index"]) for r in records] == [
        ("00000.png", 5, 0), ("00001.png", 6, 0), ("00002.png", 7, 1), ("00003.png", 8, 1)]
    assert records[3] == {"file": "00003.png", "prompt": "a blue square", "prompt_index": 1,
                          "seed": 8, "steps": 10, "guidance": 7.5, "scheduler": "ddim",
                          "model": "/m", "method": "dpt", "dpt": "/w/dpt",
                          "benchmark": {"k": 2}}


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": 0}, "--steps must be a positive"), ({"batch_size": 0}, "--batch-size must be"),
    ({"guidance": float("nan")}, "--guidance must be"), ({"scheduler": "x"}, "unknown scheduler"),
])
def test_sampler_settings_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerSettings(**kwargs)


def test_folder_run_refuses_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="--num-images must be"):
        FolderRun(SHIPPED, ["a red circle"], tmp_path, num_images=0)
    with pytest.raises(ValueError, match="--seed must be 0 or more"):
        FolderRun(SHIPPED, ["a red circle"], tmp_path, seed=-1)


def test_every_method_shown_anywhere_is_in_the_registry():
    assert set(SAMPLED) < set(METHODS)
    assert set(DEMO_METHODS) <= set(METHODS)
    assert DEMO_METHODS == {"base": "Base model", "dpt": "DPT", "dpt+sc": "DPT + SC",
                            "referee": "Referee"}
