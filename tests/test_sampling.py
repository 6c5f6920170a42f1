import numpy as np
import pytest
import torch

from dpt_t2i.generation.sampling import (SCHEDULERS, decode, encode_prompts, image_generators,
                                         initial_latents, make_scheduler, sample)
from dpt_t2i.io.bundle import load_bundle

PROMPT = "a red circle to the left of a blue square"


@pytest.fixture(scope="module")
def bundle(tiny_model):
    return load_bundle(tiny_model)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _noise(seeds, shape):
    return torch.stack([torch.randn(shape, generator=g) for g in image_generators(seeds)])


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_make_scheduler_builds_each_kind(bundle, name):
    scheduler = make_scheduler(name, bundle.scheduler_config)
    assert type(scheduler).__name__ == SCHEDULERS[name]
    assert scheduler.config.num_train_timesteps == bundle.scheduler_config["num_train_timesteps"]


def test_make_scheduler_lists_the_names():
    names = "ddim, pndm, dpm\\+\\+, euler, euler-a, ddpm"
    with pytest.raises(ValueError, match=f"expected one of {names}"):
        make_scheduler("heun", {})


def test_encode_prompts_matches_the_pipeline(bundle, pipe):
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    assert torch.equal(encode_prompts(bundle, [PROMPT]), cond)
    assert torch.equal(encode_prompts(bundle, [""]), uncond)
    both = encode_prompts(bundle, [PROMPT, ""])  # (B, L, D); batching moves only rounding
    assert both.shape == (2, 16, 32)
    torch.testing.assert_close(both, torch.cat([cond, uncond]), atol=1e-5, rtol=1e-5)


def test_initial_latents_depend_only_on_each_seed(bundle):
    scheduler = make_scheduler("euler", bundle.scheduler_config)
    with pytest.raises(ValueError, match="set_timesteps"):
        initial_latents([0], bundle.latent_shape(), scheduler)
    scheduler.set_timesteps(5)
    both = initial_latents([3, 4], bundle.latent_shape(), scheduler)
    alone = initial_latents([4], bundle.latent_shape(), scheduler)
    assert both.shape == (2, 4, 8, 8)
    assert torch.equal(both[1], alone[0])
    assert scheduler.init_noise_sigma > 1
    assert torch.equal(both, _noise([3, 4], (4, 8, 8)) * scheduler.init_noise_sigma)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_loop_gives_the_pipeline_image(bundle, pipe, name):
    """Same prompt, noise, scheduler, steps and guidance: the image of plain diffusers."""
    seeds, steps, guidance = [7, 8], 4, 7.5
    scheduler = make_scheduler(name, bundle.scheduler_config)
    scheduler.set_timesteps(steps)
    generators = image_generators(seeds)
    latents = initial_latents(seeds, bundle.latent_shape(), scheduler, generators)
    cond = encode_prompts(bundle, [PROMPT]).repeat(2, 1, 1)  # the pipeline encodes a prompt once
    uncond = encode_prompts(bundle, [""]).repeat(2, 1, 1)
    ours = decode(bundle, sample(bundle, cond, uncond, latents, steps, guidance, scheduler,
                                 generators=generators))

    pipe.scheduler = make_scheduler(name, dict(pipe.scheduler.config))
    step_generators = image_generators(seeds)
    noise = torch.stack([torch.randn((4, 8, 8), generator=g) for g in step_generators])
    theirs = pipe(PROMPT, num_images_per_prompt=2, num_inference_steps=steps,
                  guidance_scale=guidance, latents=noise, generator=step_generators,
                  output_type="np").images
    theirs = (theirs * 255).round().astype(np.uint8)
    assert ours.shape == theirs.shape == (2, 16, 16, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() == 0


def test_model_fn_replaces_the_unet(bundle):
    """A wrapper sees the [uncond, cond] batch when guiding and the plain batch when not."""
    seen = []

    def model_fn(x, t, context):
        seen.append((x.shape[0], context.shape[0]))
        return torch.zeros_like(x)

    scheduler = make_scheduler("ddim", bundle.scheduler_config)
    scheduler.set_timesteps(3)
    latents = initial_latents([0, 1], bundle.latent_shape(), scheduler)
    cond = encode_prompts(bundle, ["a red circle", "a blue square"])
    steps_done = []
    sample(bundle, cond, encode_prompts(bundle, ["", ""]), latents, 3, 5.0, scheduler,
           model_fn=model_fn, progress=steps_done.append)
    sample(bundle, cond, None, latents, 3, 1.0, scheduler, model_fn=model_fn)
    assert seen == [(4, 4)] * 3 + [(2, 2)] * 3
    assert steps_done == [1, 2, 3]
    with pytest.raises(ValueError, match="negative_embeds"):
        sample(bundle, cond, None, latents, 3, 5.0, scheduler)
