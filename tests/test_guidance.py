"""Self-correction: the differentiable matching score, the model wrapper, and the two modes."""

import pytest
import torch
import torch.nn.functional as F

from dpt_t2i.generation.guidance import SelfCorrection
from dpt_t2i.generation.sampling import encode_prompts, initial_latents, make_scheduler, sample
from dpt_t2i.io.bundle import load_bundle
from dpt_t2i.io.dpt_folder import load_for_sampling, save_dpt
from dpt_t2i.model.adapter import AdapterConfig
from dpt_t2i.model.config import DPTConfig
from dpt_t2i.model.features import tap
from dpt_t2i.model.heads import DPTHeads
from dpt_t2i.model.latents import Noiser
from dpt_t2i.model.lora import LoraSettings, add_lora
from dpt_t2i.model.score import MatchScore

SMALL = AdapterConfig(feature_dim=64, text_dim=32, d_model=32, n_heads=2, ffn_dim=64,
                      n_ground_queries=4, n_match_queries=3, max_hw=8)
PROMPTS = ["a red circle", "two blue squares"]
# the schedulers the issue names: DDIM, DPM-Solver++, Euler, PNDM
SCHEDULERS = ["ddim", "dpm++", "euler", "pndm"]
ALL = (0, 1000)  # correct on every step (the default range is the first half of sampling)


@pytest.fixture(scope="module")
def bundle(tiny_model):
    return load_bundle(tiny_model)


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    return DPTHeads(SMALL).eval()


def _score(bundle, heads):
    return MatchScore(bundle, heads, DPTConfig(block="up0", adapter=SMALL))


def test_match_score_is_the_best_query_cosine_and_differentiable(bundle, heads):
    score = _score(bundle, heads)
    texts = score.texts(PROMPTS)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    t = torch.tensor(500)
    s = score(x, t, texts)
    assert s.shape == (2,)
    with torch.no_grad():
        empty = encode_prompts(bundle, ["", ""])
        h = heads(tap(bundle.unet, "up0", x, t, empty), torch.tensor([500, 500]))["match_embeds"]
    by_hand = torch.stack([max(F.cosine_similarity(h[b, i], texts.embeds[b], dim=0)
                               for i in range(3))
                           for b in range(2)])
    torch.testing.assert_close(s.detach(), by_hand, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(s.sum(), x)
    assert grad.shape == x.shape and grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    # each image's gradient is its own: image 1's score does not depend on image 0
    (g1,) = torch.autograd.grad(score(x, t, texts)[1], x)
    assert g1[0].abs().max() == 0


def test_caption_conditioned_score_reads_each_prompt(bundle, heads):
    """A "caption" model's score runs the U-Net under the B prompts' own states."""
    config = DPTConfig(block="up0", condition="caption", adapter=SMALL)
    states = encode_prompts(bundle, PROMPTS)  # (2, L, D)
    score = MatchScore(bundle, heads, config)
    texts = score.texts(PROMPTS)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        s = score(x, torch.tensor(300), texts)
        h = heads(tap(bundle.unet, "up0", x, torch.tensor(300), states),
                  torch.tensor([300, 300]))["match_embeds"]
        empty = _score(bundle, heads)(x, torch.tensor(300), texts)
    by_hand = F.cosine_similarity(h, texts.embeds[:, None, :], dim=-1).amax(1)
    torch.testing.assert_close(s, by_hand, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(s, empty)


class _Linear:
    """s(x) = <w, x> per image: its gradient is w wherever x is."""

    def __init__(self, w):
        self.w = w

    def __call__(self, x, t, text_embeds):
        return (x * self.w).flatten(1).sum(1)


def _recorder(seen):
    def model_fn(x, t, context):
        seen.append(x.clone())
        return torch.zeros_like(x)
    return model_fn


def test_wrapper_moves_both_guidance_halves_by_eta_times_the_gradient():
    w = torch.randn(4, 8, 8)
    seen = []
    wrapper = SelfCorrection(_recorder(seen), _Linear(w), torch.zeros(2, 3), eta=0.25,
                             t_range=ALL)
    x = torch.randn(2, 4, 8, 8)
    eps, delta = wrapper(torch.cat([x, x]), torch.tensor(10), torch.zeros(4, 5, 3))
    torch.testing.assert_close(delta, 0.25 * w.expand(2, -1, -1, -1))
    torch.testing.assert_close(seen[0], torch.cat([x, x]) + 0.25 * w)
    assert eps.shape == (4, 4, 8, 8) and len(wrapper.scores) == 1

    predict_only = SelfCorrection(_recorder(seen), _Linear(w), torch.zeros(2, 3), eta=0.25,
                                  t_range=ALL, mode="predict-only")
    assert isinstance(predict_only(x, torch.tensor(10), torch.zeros(2, 5, 3)), torch.Tensor)
    torch.testing.assert_close(seen[1], x + 0.25 * w)
    # with guidance, as the authors' sampler: the conditional copy moves, the other stays
    predict_only(torch.cat([x, x]), torch.tensor(10), torch.zeros(4, 5, 3))
    torch.testing.assert_close(seen[2], torch.cat([x, x + 0.25 * w]))


ABAR = torch.linspace(0.999, 0.01, 1000)  # a made-up schedule: abar_t falls with t


def test_x0_mode_reads_and_moves_the_clean_estimate_with_one_noise_prediction():
    w = torch.randn(4, 8, 8)
    eps_cond = torch.randn(2, 4, 8, 8)
    seen = []

    def model_fn(x, t, context):  # [uncond, cond]: the conditional half predicts eps_cond
        seen.append(x.clone())
        return torch.cat([torch.zeros_like(eps_cond), eps_cond])

    wrapper = SelfCorrection(model_fn, _Linear(w), torch.zeros(2, 3), eta=0.5, t_range=ALL,
                             mode="x0", alphas_cumprod=ABAR)
    x = torch.randn(2, 4, 8, 8)
    eps, delta = wrapper(torch.cat([x, x]), torch.tensor(600), torch.zeros(4, 5, 3))
    assert len(seen) == 1 and torch.equal(seen[0], torch.cat([x, x]))  # one pass, unmoved
    abar, abar_read = ABAR[600], ABAR[100]
    # s(read) = <w, sqrt(abar_read) x0 + ...>: grad_x0 = sqrt(abar_read) w; the latent moves
    # by sqrt(abar) times eta times it, so DDIM's x0 estimate moves by eta * grad exactly
    torch.testing.assert_close(delta, (0.5 * abar.sqrt() * abar_read.sqrt() * w).expand(2, -1, -1,
                                                                                          -1))
    x0 = (x - (1 - abar).sqrt() * eps_cond) / abar.sqrt()
    moved_x0 = (x + delta - (1 - abar).sqrt() * eps_cond) / abar.sqrt()
    torch.testing.assert_close(moved_x0 - x0, 0.5 * abar_read.sqrt() * w.expand(2, -1, -1, -1))
    # the score was read on the clean estimate noised to t = 100 with the same eps
    read = abar_read.sqrt() * x0 + (1 - abar_read).sqrt() * eps_cond
    torch.testing.assert_close(wrapper.scores[0], (read * w).flatten(1).sum(1))


@pytest.mark.parametrize("mode", ["carry", "x0"])
def test_noise_unit_moves_each_image_by_eta_times_the_noise_level(mode):
    w = torch.randn(4, 8, 8) * 1000  # the gradient's own scale must not matter
    wrapper = SelfCorrection(_recorder([]), _Linear(w), torch.zeros(2, 3), eta=0.2, t_range=ALL,
                             mode=mode, unit="noise", alphas_cumprod=ABAR)
    _, delta = wrapper(torch.randn(2, 4, 8, 8), torch.tensor(400), torch.zeros(2, 5, 3))
    rms = delta.flatten(1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms, torch.full((2,), 0.2 * float((1 - ABAR[400]).sqrt())))
    cos = F.cosine_similarity(delta.flatten(1), w.flatten()[None], dim=1)
    torch.testing.assert_close(cos, torch.ones(2))


def test_wrapper_passes_through_outside_its_range_and_at_eta_zero():
    seen = []
    x = torch.randn(2, 4, 8, 8)
    for wrapper, t in ((SelfCorrection(_recorder(seen), _Linear(torch.ones(4, 8, 8)),
                                       torch.zeros(2, 3), eta=1.0, t_range=(0, 400)), 500),
                       (SelfCorrection(_recorder(seen), _Linear(torch.ones(4, 8, 8)),
                                       torch.zeros(2, 3), eta=1.0), 299),  # default: 300-700
                       (SelfCorrection(_recorder(seen), _Linear(torch.ones(4, 8, 8)),
                                       torch.zeros(2, 3), eta=0.0, t_range=ALL), 500)):
        out = wrapper(x, torch.tensor(t), torch.zeros(2, 5, 3))
        assert isinstance(out, torch.Tensor) and torch.equal(seen[-1], x) and not wrapper.scores
    with pytest.raises(ValueError, match="mode must be one of carry, predict-only, x0, shared"):
        SelfCorrection(_recorder(seen), None, torch.zeros(2, 3), eta=1.0, mode="forward")
    with pytest.raises(ValueError, match="unit must be one of raw, noise"):
        SelfCorrection(_recorder(seen), None, torch.zeros(2, 3), eta=1.0, unit="metres")
    for mode, unit in (("x0", "raw"), ("carry", "noise")):
        with pytest.raises(ValueError, match="needs the model's alphas_cumprod"):
            SelfCorrection(_recorder(seen), None, torch.zeros(2, 3), eta=1.0, mode=mode,
                           unit=unit)


def _run(bundle, name, model_fn, guidance=3.0, steps=4):
    scheduler = make_scheduler(name, bundle.scheduler_config)
    scheduler.set_timesteps(steps)
    latents = initial_latents([0, 1], bundle.latent_shape(), scheduler)
    cond = encode_prompts(bundle, PROMPTS)
    return sample(bundle, cond, encode_prompts(bundle, ["", ""]), latents, steps, guidance,
                  scheduler, model_fn=model_fn)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_carry_moves_the_trajectory_and_predict_only_does_not(bundle, name):
    """With a noise prediction that ignores its input, only carrying changes the result."""
    w = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = _run(bundle, name, _recorder([]))
    carried = _run(bundle, name, SelfCorrection(_recorder([]), _Linear(w), torch.zeros(2, 3), 0.5,
                                                t_range=ALL))
    predicted = _run(bundle, name, SelfCorrection(_recorder([]), _Linear(w), torch.zeros(2, 3),
                                                  0.5, t_range=ALL, mode="predict-only"))
    assert torch.equal(predicted, plain)
    gain = ((carried - plain) * w).flatten(1).sum(1)  # the score's change: it must go up
    assert (gain > 0).all(), gain


@pytest.mark.parametrize("name", SCHEDULERS)
def test_self_correction_raises_the_dpt_score_on_every_scheduler(bundle, heads, name):
    """On the tiny U-Net with random heads: both modes end at a higher s(z_0, y) than no SC."""
    score = _score(bundle, heads)
    texts = score.texts(PROMPTS)
    from dpt_t2i.generation.sampling import unet_model_fn

    def final_score(latents):
        with torch.no_grad():
            return score(latents, torch.tensor(0), texts)

    plain = final_score(_run(bundle, name, unet_model_fn(bundle)))
    abar = Noiser(bundle.scheduler_config).alphas_cumprod
    for mode in ("carry", "predict-only", "x0", "shared"):
        wrapper = SelfCorrection(unet_model_fn(bundle), score, texts, eta=200.0, t_range=ALL,
                                 mode=mode, alphas_cumprod=abar)
        corrected = final_score(_run(bundle, name, wrapper))
        assert len(wrapper.scores) >= 4  # PNDM's warm-up calls the model more often
        if mode != "predict-only":
            assert (corrected > plain).all(), (name, mode, corrected, plain)
        else:
            assert not torch.equal(corrected, plain)


def test_fused_lora_predicts_what_the_lora_unet_predicts(tiny_model, tmp_path):
    torch.manual_seed(0)
    lora = load_bundle(tiny_model).unet
    add_lora(lora, LoraSettings(targets="all"))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    config = DPTConfig(block="up0", adapter=SMALL, lora=LoraSettings(targets="all"))
    save_dpt(tmp_path / "dpt", DPTHeads(SMALL), config, lora)
    fused = load_bundle(tiny_model).unet
    load_for_sampling(tmp_path / "dpt", fused)
    assert not hasattr(fused, "peft_config")
    assert not any("lora" in n for n, _ in fused.named_parameters())
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32)
    with torch.no_grad():
        a = lora(x, 300, encoder_hidden_states=c).sample
        b = fused(x, 300, encoder_hidden_states=c).sample
        base = load_bundle(tiny_model).unet(x, 300, encoder_hidden_states=c).sample
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (a - base).abs().max() > 1e-2  # the LoRA does change the prediction


def test_dpt_weights_of_another_model_are_refused(tiny_model, tmp_path):
    config = DPTConfig(block="up1", adapter=SMALL)  # up1 of the tiny U-Net has 32 channels
    save_dpt(tmp_path / "dpt", DPTHeads(SMALL), config)
    with pytest.raises(ValueError, match="block up1 has 64 channels; this U-Net's has 32"):
        load_for_sampling(tmp_path / "dpt", load_bundle(tiny_model).unet)
    save_dpt(tmp_path / "dpt", DPTHeads(SMALL), DPTConfig(block="up7", adapter=SMALL))
    with pytest.raises(ValueError, match="reads block 'up7'"):
        load_for_sampling(tmp_path / "dpt", load_bundle(tiny_model).unet)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_carried_move_is_the_move_in_model_input_units(bundle, name):
    """The sampler keeps delta so that the model's next input is moved by exactly delta."""
    from dpt_t2i.generation.sampling import _input_scale

    scheduler = make_scheduler(name, bundle.scheduler_config)
    scheduler.set_timesteps(5)
    t = scheduler.timesteps[1]
    latents = initial_latents([0], bundle.latent_shape(), scheduler)
    delta = torch.randn_like(latents)
    moved = latents + delta / _input_scale(scheduler, t, latents)
    torch.testing.assert_close(scheduler.scale_model_input(moved, t),
                               scheduler.scale_model_input(latents, t) + delta)


def test_self_correction_without_classifier_free_guidance(bundle):
    w = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(5))
    seen = []
    plain = _run(bundle, "ddim", _recorder([]), guidance=1.0)
    carried = _run(bundle, "ddim", SelfCorrection(_recorder(seen), _Linear(w), torch.zeros(2, 3),
                                                  0.5, t_range=ALL), guidance=1.0)
    assert all(x.shape[0] == 2 for x in seen)  # B latents, no [uncond, cond] doubling
    assert (((carried - plain) * w).flatten(1).sum(1) > 0).all()


@pytest.mark.parametrize("condition, read", [("each", 1), ("caption", 1), ("empty", 0)])
def test_shared_mode_reads_the_score_on_the_guidance_pass_of_its_condition(bundle, heads,
                                                                           condition, read):
    """The score and its gradient come from the sampler's own pass of the copy whose text the
    score reads (conditional for each/caption, unconditional for empty): the same s, the same
    gradient and the same noise prediction as computed apart, with one U-Net call a copy."""
    from dpt_t2i.generation.sampling import unet_model_fn

    score = MatchScore(bundle, heads, DPTConfig(block="up0", condition=condition, adapter=SMALL))
    texts = score.texts(PROMPTS)
    context = torch.cat([encode_prompts(bundle, ["", ""]), encode_prompts(bundle, PROMPTS)])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor(400)
    calls = []
    handle = bundle.unet.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    try:
        wrapper = SelfCorrection(unet_model_fn(bundle), score, texts, eta=3.0, t_range=ALL,
                                 mode="shared")
        eps, delta = wrapper(torch.cat([x, x]), t, context)
    finally:
        handle.remove()
    assert calls == [2, 2]  # the copy the score reads (with gradients), then the other
    with torch.no_grad():
        plain = unet_model_fn(bundle)(torch.cat([x, x]), t, context)
    torch.testing.assert_close(eps, plain, rtol=1e-5, atol=1e-5)
    z = x.clone().requires_grad_(True)
    if condition == "empty":  # the sampler's unconditional states are the empty prompt's
        torch.testing.assert_close(context[:2], score.empty_states().expand(2, -1, -1))
    s = score(z, t, texts)
    (grad,) = torch.autograd.grad(s.sum(), z)
    torch.testing.assert_close(wrapper.scores[0], s.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(delta, 3.0 * grad, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="'shared' needs a score that reads"):
        SelfCorrection(unet_model_fn(bundle), _Linear(torch.ones(4, 8, 8)), texts, eta=1.0,
                       mode="shared")
