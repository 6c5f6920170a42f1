"""The Shapes VAE trainer: step batches, and a killed run resumes to the very same weights."""

import json

import numpy as np
import pytest
import torch

from dpt_t2i.shapes_model import vae as vae_module
from dpt_t2i.shapes_model.vae import scene_batch, train_vae

from .resume import assert_changed, assert_identical, watch_steps

RUN = dict(steps=4, batch=2, crop_steps=2, checkpoint_every=2)


def _cheap_scale(vae, seed):
    return 0.25 + seed  # the real one encodes 1024 scenes (seconds); the value is checked below


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vae") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vae_module, "latent_scale", _cheap_scale)
        taken = watch_steps(mp, vae_module)
        summary = train_vae(run_dir, **RUN)
    assert taken == [0, 1, 2, 3]
    return run_dir, summary


def test_killed_run_resumes_to_identical_weights(uninterrupted, tmp_path, monkeypatch):
    reference, _ = uninterrupted
    monkeypatch.setattr(vae_module, "latent_scale", _cheap_scale)
    run_dir = tmp_path / "run"
    taken = watch_steps(monkeypatch, vae_module, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        train_vae(run_dir, **RUN)
    assert taken == [0, 1]
    assert (run_dir / "latest").read_text() == "step-00000002" and not (run_dir / "final").exists()

    taken = watch_steps(monkeypatch, vae_module)
    summary = train_vae(run_dir, **RUN, resume=True)
    assert taken == [2, 3]  # continued, did not start over
    assert summary["step"] == 4
    assert_identical(reference / "final", run_dir / "final")
    assert_identical(reference / "step-00000004", run_dir / "step-00000004")  # optimizer too
    assert_changed(reference / "step-00000002", reference / "step-00000004", "vae.safetensors")


def test_resume_false_starts_over_to_the_same_weights(uninterrupted, tmp_path, monkeypatch):
    reference, _ = uninterrupted
    monkeypatch.setattr(vae_module, "latent_scale", _cheap_scale)
    run_dir = tmp_path / "run"
    taken = watch_steps(monkeypatch, vae_module, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        train_vae(run_dir, **RUN)
    taken = watch_steps(monkeypatch, vae_module)
    train_vae(run_dir, **RUN, resume=False)
    assert taken == [0, 1, 2, 3]
    assert_identical(reference / "final", run_dir / "final")


def test_final_vae_carries_its_scaling_factor_and_summary(uninterrupted):
    run_dir, summary = uninterrupted
    assert summary["scaling_factor"] == 0.25
    assert json.loads((run_dir / "final" / "config.json").read_text())["scaling_factor"] == 0.25
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["step"] == 4 and set(saved["final_losses"]) == {"l1", "kl", "total"}
    assert sorted(p.name for p in run_dir.glob("step-*")) == ["step-00000002", "step-00000004"]


def test_scene_batch_is_seeded_and_crops_are_windows_of_the_full_scenes():
    full = scene_batch(3, 7, 4, None)
    crops = scene_batch(3, 7, 4, 32)
    assert full.shape == (4, 3, 64, 64) and crops.shape == (4, 3, 32, 32)
    assert full.min() >= -1 and full.max() <= 1
    assert torch.equal(full, scene_batch(3, 7, 4, None))
    assert not torch.equal(full, scene_batch(3, 8, 4, None))
    for image, crop in zip(full.numpy(), crops.numpy()):
        # every 32x32 window of the image: (33, 33, 3, 32, 32)
        windows = np.lib.stride_tricks.sliding_window_view(image, (3, 32, 32))[0]
        assert (windows == crop).all(axis=(2, 3, 4)).any()


def test_latent_scale_makes_posterior_means_unit_std():
    torch.manual_seed(0)
    vae = vae_module.build_vae()
    scale = vae_module.latent_scale(vae, seed=0, n=8)
    with torch.no_grad():
        z = vae.encode(scene_batch(1, 10**9, 8, None)).latent_dist.mean
    assert float((z * scale).std()) == pytest.approx(1.0, abs=1e-5)
