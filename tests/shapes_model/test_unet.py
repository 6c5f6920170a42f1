"""The Shapes U-Net trainer: pool cache, text states, EMA, and resuming to the same weights."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from dpt_t2i.data.shapes.dataset import make_sample
from dpt_t2i.shapes_model import unet as unet_module
from dpt_t2i.shapes_model.unet import build_noise_scheduler, encode_texts, train_unet

from .resume import assert_changed, assert_identical, watch_steps

RUN = dict(steps=4, batch=4, pool_size=16, checkpoint_every=2)


@pytest.fixture(scope="module")
def reference(shapes_parts, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("unet") / "run"
    with pytest.MonkeyPatch.context() as mp:
        taken = watch_steps(mp, unet_module)
        train_unet(run_dir, shapes_parts["vae"], shapes_parts["clip"], **RUN)
    assert taken == [0, 1, 2, 3]
    return run_dir


def test_killed_run_resumes_to_identical_weights_and_reuses_the_pool(reference, shapes_parts,
                                                                     tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    taken = watch_steps(monkeypatch, unet_module, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        train_unet(run_dir, shapes_parts["vae"], shapes_parts["clip"], **RUN)
    assert taken == [0, 1]
    pool_stamp = (run_dir / "pool.safetensors").stat().st_mtime_ns

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cached pool should have been reused")

    monkeypatch.setattr(unet_module, "make_sample", no_encoding)
    taken = watch_steps(monkeypatch, unet_module)
    train_unet(run_dir, shapes_parts["vae"], shapes_parts["clip"], **RUN, resume=True)
    assert taken == [2, 3]
    assert (run_dir / "pool.safetensors").stat().st_mtime_ns == pool_stamp
    assert_identical(reference / "final", run_dir / "final")
    assert_identical(reference / "step-00000004", run_dir / "step-00000004")  # unet, ema, optimizer
    assert_changed(reference / "step-00000002", reference / "step-00000004", "unet.safetensors")
    assert_changed(reference / "step-00000002", reference / "step-00000004", "ema.safetensors")


def test_pool_holds_the_training_samples_and_is_rebuilt_when_its_size_changes(reference,
                                                                               shapes_parts,
                                                                               tmp_path):
    pool = load_file(reference / "pool.safetensors")
    meta = json.loads((reference / "pool.json").read_text())
    assert pool["mean"].shape == pool["std"].shape == (16, 4, 8, 8)
    assert pool["mean"].dtype == torch.float16 and bool((pool["std"] > 0).all())
    assert meta["seed"] == 0 and meta["size"] == 16
    assert meta["texts"] == [make_sample(0, i).prompt.text for i in range(16)]

    from diffusers import AutoencoderKL

    for name in ("pool.safetensors", "pool.json"):
        shutil.copy(reference / name, tmp_path / name)
    vae = AutoencoderKL.from_pretrained(shapes_parts["vae"]).eval()
    smaller = unet_module.encode_pool(vae, 0, 8, tmp_path / "pool.safetensors")
    assert smaller["mean"].shape[0] == 8 and smaller["texts"] == meta["texts"][:8]
    # same samples, same encoder: equal up to fp16 rounding (a batch of 8 and one of 16 may
    # take CPU kernels that round differently); other samples would differ by ~0.1-1
    torch.testing.assert_close(smaller["mean"].float(), pool["mean"][:8].float(),
                               rtol=1e-2, atol=2e-3)
    assert json.loads((tmp_path / "pool.json").read_text())["size"] == 8
    assert load_file(tmp_path / "pool.safetensors")["mean"].shape[0] == 8


def test_ema_trails_the_trained_weights(reference):
    step = load_file(reference / "step-00000004" / "unet.safetensors")
    ema = load_file(reference / "step-00000004" / "ema.safetensors")
    first = load_file(reference / "step-00000002" / "ema.safetensors")
    final = load_file(reference / "final" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ema[k], final[k]) for k in ema)  # the EMA is what ships
    assert any(not torch.equal(ema[k], step[k]) for k in ema)
    key = next(k for k in ema if not torch.equal(first[k], step[k]))
    # the EMA moved from its step-2 value towards the trained weights
    assert (ema[key] - step[key]).abs().sum() < (first[key] - step[key]).abs().sum()


def test_encode_texts_gives_pipeline_states_including_the_empty_prompt(shapes_parts):
    encoder = CLIPTextModel.from_pretrained(shapes_parts["clip"]).eval()
    tokenizer = CLIPTokenizer.from_pretrained(shapes_parts["clip"])
    states = encode_texts(encoder, tokenizer, ["a red circle", "a red circle", "two blue squares"])
    assert sorted(states) == ["", "a red circle", "two blue squares"]
    ids = tokenizer(["two blue squares"], padding="max_length", max_length=16,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder(ids)[0][0]  # (16, 128)
    assert states["two blue squares"].shape == (16, 128)
    assert torch.allclose(states["two blue squares"], expected, atol=1e-6)


def test_noise_scheduler_is_stable_diffusions():
    config = build_noise_scheduler().config
    betas = (config.num_train_timesteps, config.beta_start, config.beta_end)
    assert betas == (1000, 0.00085, 0.012)
    assert (config.beta_schedule, config.prediction_type) == ("scaled_linear", "epsilon")
