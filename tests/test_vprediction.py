"""v-prediction (SD-2.1 768): every denoising error and target follows the scheduler config's
prediction_type, in stage 2's denoising term, HN-DiffusionITM and the DiffusionITM scorer."""

import json
import shutil

import pytest
import torch

from dpt_t2i.data.sources import ShapesSource
from dpt_t2i.eval.zero_shot import DiffusionITMScorer
from dpt_t2i.io.bundle import load_bundle
from dpt_t2i.model.latents import Noiser
from dpt_t2i.training import objective as objective_module
from dpt_t2i.training.loop import train_dpt
from dpt_t2i.training.settings import TrainSettings


@pytest.fixture(scope="module")
def v_model(tiny_model, tmp_path_factory):
    """The tiny Shapes-marked model with a v-prediction scheduler."""
    folder = tmp_path_factory.mktemp("v") / "tiny-v"
    shutil.copytree(tiny_model, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = "v_prediction"
    config_file.write_text(json.dumps(config))
    return folder


def test_target_is_the_noise_the_velocity_or_the_sample(v_model, tiny_model):
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500, 990])
    eps_model = Noiser(load_bundle(tiny_model).scheduler_config)
    assert torch.equal(eps_model.target(latents, noise, t), noise)
    v_noiser = Noiser(load_bundle(v_model).scheduler_config)
    abar = v_noiser.alphas_cumprod[t].view(-1, 1, 1, 1)
    velocity = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    torch.testing.assert_close(v_noiser.target(latents, noise, t), velocity)
    torch.testing.assert_close(v_noiser.target(latents, noise, 500), v_noiser.target(
        latents, noise, torch.tensor([500] * 3)))
    config = dict(load_bundle(v_model).scheduler_config, prediction_type="sample")
    assert torch.equal(Noiser(config).target(latents, noise, t), latents)


@pytest.mark.parametrize("stage", ["tune", "hn-itm"])
def test_training_regresses_on_the_velocity(v_model, tmp_path, monkeypatch, stage):
    """The denoising terms of stage 2 and HN-DiffusionITM compare the U-Net's output with
    the velocity on a v-prediction model (with the noise, they would train the wrong
    target silently)."""
    from dpt_t2i.model.adapter import AdapterConfig
    from dpt_t2i.model.config import DPTConfig
    from dpt_t2i.model.lora import LoraSettings
    from dpt_t2i.training import hn_itm as hn_module

    seen = []
    real = torch.nn.functional.mse_loss

    def spy(output, target, *args, **kwargs):
        seen.append(target.detach().clone())
        return real(output, target, *args, **kwargs)

    recorded = []
    real_target = Noiser.target

    def record(self, latents, noise, t):
        out = real_target(self, latents, noise, t)
        recorded.append((latents, noise, t, out))
        return out

    monkeypatch.setattr(Noiser, "target", record)
    monkeypatch.setattr(objective_module.F, "mse_loss", spy)
    monkeypatch.setattr(hn_module.F, "mse_loss", spy)
    lora = LoraSettings(rank=2)
    if stage == "tune":
        config = DPTConfig(block="up0", condition="empty", adapter=AdapterConfig(
            feature_dim=64, text_dim=32, d_model=32, n_heads=2, ffn_dim=64, n_match_queries=2,
            n_ground_queries=4, max_hw=32), lora=lora)
    else:
        config = DPTConfig(block="up0", adapter=None, lora=lora)
    settings = TrainSettings(stage=stage, steps=1, batch=2, warmup=1, mse_weight=1.0,
                             **({"lr": 0.0, "match_weight": 0.0, "ground_weight": 0.0}
                                if stage == "hn-itm" else {}))
    train_dpt(tmp_path / "run", load_bundle(v_model), ShapesSource(), config, settings,
              show_progress=False)
    (latents, noise, t, target), = recorded
    abar = Noiser(load_bundle(v_model).scheduler_config).alphas_cumprod[t].view(-1, 1, 1, 1)
    velocity = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    torch.testing.assert_close(target, velocity)
    assert seen and all(torch.equal(s, target) for s in seen)
    assert not torch.allclose(velocity, noise)


def test_diffusion_itm_measures_the_error_against_the_velocity(v_model):
    bundle = load_bundle(v_model)
    scorer = DiffusionITMScorer(bundle, timesteps=(300,), seed=0)
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    states = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(3))
    errors = scorer.errors(latents, states)
    noise = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(0))
    noise = noise.expand_as(latents)
    t = torch.full((2,), 300)
    noisy = scorer.noiser.add(latents, t, noise)
    with torch.no_grad():
        out = bundle.unet(noisy, t, states).sample
    abar = scorer.noiser.alphas_cumprod[300]
    velocity = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    torch.testing.assert_close(errors, ((out - velocity) ** 2).mean((1, 2, 3)))
    assert not torch.allclose(errors, ((out - noise) ** 2).mean((1, 2, 3)))


def test_self_correction_on_the_clean_estimate_is_refused_on_a_v_model(v_model):
    from dpt_t2i.generation.methods import Method
    from dpt_t2i.model.adapter import AdapterConfig
    from dpt_t2i.model.config import DPTConfig
    from dpt_t2i.model.heads import DPTHeads

    adapter = AdapterConfig(feature_dim=64, text_dim=32, d_model=32, n_heads=2, ffn_dim=64,
                            n_match_queries=2, n_ground_queries=4, max_hw=32)
    method = Method(heads=DPTHeads(adapter), config=DPTConfig(block="up0", adapter=adapter),
                    eta=1.0, mode="x0")
    with pytest.raises(ValueError, match="x0 reads the U-Net's output as the noise; this "
                                         "model predicts v_prediction"):
        method.model_fn(load_bundle(v_model), ["a red circle"])
    method.mode = "shared"  # reads the model's own output, whatever it predicts
    assert method.model_fn(load_bundle(v_model), ["a red circle"]) is not None
