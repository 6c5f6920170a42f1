"""Validation images during training (training/validation.py) on the shipped Shapes model:
they leave the trained weights bit-identical, are the images the checkpoint samples, and go
to tensorboard."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from shapes_model.resume import assert_identical
from test_multiprocess import _launch, _launcher_missing
from test_train import ADAPTER, probe_config, run, settings

from dpt_t2i.cli import main
from dpt_t2i.commands.validation_args import sampler_fn
from dpt_t2i.generation.methods import Method, SamplerSettings, sample_images
from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.io.dpt_folder import load_for_sampling
from dpt_t2i.model.lora import LoraSettings
from dpt_t2i.training.validation import Validation, ValidationSettings, preserved_state

PROMPTS = ("a red circle", "a blue square above a green triangle")
SAMPLER = SamplerSettings(steps=4)  # few denoising steps: the test's cost, not the method's


def validation(**kw) -> Validation:
    base = dict(prompts=PROMPTS, images=2, self_correct=0.1, batch_size=3)
    return Validation(ValidationSettings(**{**base, **kw}), sampler_fn(SAMPLER),
                      fields={"steps": SAMPLER.steps})


def dropout_config(stage: str):
    """Adapter dropout 0.1: a run that left the heads in eval mode would train otherwise."""
    config = probe_config()
    config.adapter = replace(ADAPTER, dropout=0.1)
    if stage == "tune":
        config.lora = LoraSettings(rank=2, alpha=2.0, targets="all")
    return config


@pytest.mark.parametrize("stage", ["probe", "tune"])
def test_validation_leaves_the_trained_weights_bit_identical(tmp_path, stage):
    shipped = default_model_path()
    config, s = dropout_config(stage), settings(stage=stage, steps=4, checkpoint_every=2)
    run(shipped, tmp_path / "plain", config, s)
    run(shipped, tmp_path / "validated", config, s, validation=validation(every=1))
    for folder in ("final", "step-00000002", "step-00000004"):
        assert_identical(tmp_path / "plain" / folder, tmp_path / "validated" / folder)
    steps = sorted(p.name for p in (tmp_path / "validated" / "validation").iterdir())
    assert steps == [f"step-{k:08d}" for k in (1, 2, 3, 4)]
    records = [json.loads(line) for line in
               (tmp_path / "validated" / "validation" / steps[1] / "index.jsonl").open()]
    methods = ["dpt+sc"] if stage == "probe" else ["dpt", "dpt+sc"]
    assert [(r["method"], r["prompt"], r["seed"]) for r in records] == [
        (m, p, k + 2 * i) for m in methods for i, p in enumerate(PROMPTS) for k in range(2)]
    assert all(r["step"] == 2 and r["steps"] == 4 for r in records)
    assert [r.get("eta") for r in records] == [0.1 if r["method"] == "dpt+sc" else None
                                               for r in records]


def test_the_images_are_the_ones_the_checkpoint_samples(tmp_path):
    """Step 4's validation = the final folder's LoRA (unfused) and heads sampled afresh in
    the same batches (a batch's composition moves the last bits); the self-corrected images
    differ from the plain ones, and the same seeds at step 2 give other images."""
    shipped = default_model_path()
    config = dropout_config("tune")
    s = settings(stage="tune", steps=4, checkpoint_every=2, lr=1e-2, lora_lr=1e-2)
    run(shipped, tmp_path / "run", config, s, validation=validation(batch_size=4))
    folder = tmp_path / "run" / "validation" / "step-00000004"
    records = [json.loads(line) for line in (folder / "index.jsonl").open()]
    saved = np.stack([np.asarray(Image.open(folder / r["file"])) for r in records])
    assert saved.shape == (8, 64, 64, 3) and saved.dtype == np.uint8

    bundle = load_bundle(shipped)
    heads, loaded = load_for_sampling(tmp_path / "run" / "final", bundle.unet, fuse=False)
    prompts, seeds = [r["prompt"] for r in records[:4]], [r["seed"] for r in records[:4]]
    again = [sample_images(bundle, prompts, seeds, SAMPLER.steps, SAMPLER.guidance,
                           SAMPLER.scheduler, method)
             for method in (Method(), Method(heads=heads, config=loaded, eta=0.1))]
    assert np.array_equal(saved, np.concatenate(again))
    assert np.abs(saved[:4].astype(int) - saved[4:]).mean() > 1  # self-correction moved them
    earlier = tmp_path / "run" / "validation" / "step-00000002"
    first = np.asarray(Image.open(earlier / records[4]["file"]))
    assert not np.array_equal(first, saved[4])


def test_images_go_to_tensorboard_one_tag_a_method(tmp_path, monkeypatch):
    from accelerate import Accelerator

    class Writer:
        calls = []

        def add_images(self, tag, images, step, dataformats):
            self.calls.append((tag, images.shape, images.dtype, step, dataformats))

    class Tracker:  # what accelerate's TensorBoardTracker offers the loop
        name, writer = "tensorboard", Writer()

        def log(self, values, step=None, **kw):
            pass

        def finish(self):
            pass

    monkeypatch.setattr(Accelerator, "init_trackers",
                        lambda self, *a, **kw: self.trackers.append(Tracker()))
    config = dropout_config("tune")
    with warnings.catch_warnings():  # tensorboard itself is not installed here
        warnings.simplefilter("ignore")
        run(default_model_path(), tmp_path / "run", config,
            settings(stage="tune", steps=2, checkpoint_every=2, log_with="tensorboard"),
            validation=validation(images=1, prompts=PROMPTS[:1]))
    shape = (1, 64, 64, 3)
    assert Writer.calls == [("validation/dpt", shape, np.uint8, 2, "NHWC"),
                            ("validation/dpt+sc", shape, np.uint8, 2, "NHWC")]


def test_a_diverged_validation_is_reported_and_training_goes_on(tmp_path, capsys):
    def diverges(*args):
        raise ValueError("sampling diverged at step 3 of 4")

    summary = run(default_model_path(), tmp_path / "run", probe_config(),
                  settings(steps=2, checkpoint_every=1),
                  validation=Validation(ValidationSettings(PROMPTS, self_correct=0.1), diverges))
    assert summary["steps_this_run"] == 2
    err = capsys.readouterr().err
    assert "validation at step 1 failed: sampling diverged at step 3 of 4" in err
    assert "validation at step 2 failed" in err
    assert not (tmp_path / "run" / "validation").exists()


def test_preserved_state_restores_modes_gradients_and_generators():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    net[1].eval()  # a mixed state comes back as it was
    grad = torch.ones(2, 2)
    net[0].weight.grad = grad
    torch.manual_seed(3)
    np.random.seed(3)
    expected = torch.rand(1), np.random.rand()
    torch.manual_seed(3)
    np.random.seed(3)
    with preserved_state([net]):
        assert not net.training and not net[0].training
        net(torch.ones(1, 2)).sum().backward()
        torch.rand(5), np.random.rand(5)
    assert net.training and net[0].training and not net[1].training
    assert torch.equal(net[0].weight.grad, torch.ones(2, 2))
    assert net[0].bias.grad is None
    assert (torch.rand(1), np.random.rand()) == expected


@pytest.mark.parametrize("kw, message", [
    ({"prompts": ()}, "at least one non-empty prompt"),
    ({"every": 0}, "every must be >= 1"),
    ({"images": 0}, "images and batch_size must be >= 1"),
    ({"self_correct": float("nan")}, "finite number > 0"),
    ({"seed": -1}, "seed must be >= 0")])
def test_settings_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        ValidationSettings(**{"prompts": PROMPTS, **kw})


def test_a_stage_without_an_adapter_cannot_self_correct_and_probe_must(tmp_path):
    from dpt_t2i.model.config import DPTConfig

    lora_only = DPTConfig(adapter=None, lora=LoraSettings(rank=2, alpha=2.0))
    with pytest.raises(ValueError, match="stage hn-itm trains none"):
        run(default_model_path(), tmp_path / "hn", lora_only, settings(stage="hn-itm"),
            validation=validation())
    with pytest.raises(ValueError, match="stage probe's U-Net does not change"):
        run(default_model_path(), tmp_path / "p", probe_config(), settings(),
            validation=validation(self_correct=None))


@pytest.mark.skipif(_launcher_missing() is not None, reason=str(_launcher_missing()))
def test_two_processes_validate_once_and_train_what_one_trains(tiny_model, tmp_path):
    """The main process samples while the other waits; the weights are those of one process
    with two micro-steps and no validation, and the images those one process makes."""
    common = ["probe", "--model", tiny_model, "--block", "up0", "--d-model", 32,
              "--ground-queries", 4, "--steps", 2, "--batch", 2, "--checkpoint-every", 1]
    validate = ["--validation-prompt", "a red circle", "--validation-images", 2]
    two = _launch(2, common + validate + ["--run-dir", tmp_path / "two"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    for name, extra in (("one", []), ("one-validated", validate)):
        assert main([str(a) for a in common + extra + ["--run-dir", tmp_path / name,
                                                      "--grad-accum", 2]]) == 0
    for folder in ("final", "step-00000001", "step-00000002"):
        assert_identical(tmp_path / "one" / folder, tmp_path / "two" / folder)
    for step in ("step-00000001", "step-00000002"):
        one, two_ = (tmp_path / name / "validation" / step for name in ("one-validated", "two"))
        assert sorted(p.name for p in two_.iterdir()) == [
            "dpt+sc-00000.png", "dpt+sc-00001.png", "index.jsonl"]
        for name in ("dpt+sc-00000.png", "dpt+sc-00001.png"):
            assert np.array_equal(np.asarray(Image.open(one / name)),
                                  np.asarray(Image.open(two_ / name)))
