"""The adapter-free discriminative baselines: Shapes CLIP and DiffusionITM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dpt_t2i.cli import main
from dpt_t2i.eval.discriminative import evaluate_itm, shapes_itm_item
from dpt_t2i.eval.zero_shot import CLIPScorer, DiffusionITMScorer


def dpt(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tiny_bundle(tiny_model):
    from dpt_t2i.io.bundle import load_bundle

    return load_bundle(tiny_model)


def test_clip_scores_are_cosines_of_the_shapes_clip():
    from transformers import CLIPModel, CLIPTokenizer

    from dpt_t2i.data.samples import images_to_tensor
    from dpt_t2i.io.clip import CLIP_FOLDER
    from dpt_t2i.model.text import tokenize

    model = CLIPModel.from_pretrained(CLIP_FOLDER)
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_FOLDER)
    item = shapes_itm_item(1, 0, "id")
    scorer = CLIPScorer(model, tokenizer)
    scores = scorer.pair_scores(scorer.encode(item.images[:2]), item.texts[:2],
                                [(0, 0), (0, 1), (1, 0)])
    with torch.no_grad():
        image = model.get_image_features(pixel_values=images_to_tensor(item.images[:2]))
        text = model.get_text_features(input_ids=tokenize(tokenizer, item.texts[:2]).input_ids)
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    cos = torch.nn.functional.cosine_similarity
    expected = [cos(image[0], text[0], 0), cos(image[0], text[1], 0), cos(image[1], text[0], 0)]
    assert torch.allclose(scores, torch.stack(expected), atol=1e-5)


def test_diffusion_itm_score_is_the_unconditional_minus_the_conditional_error(tiny_bundle):
    from diffusers import DDPMScheduler

    from dpt_t2i.model.text import encode_texts

    scorer = DiffusionITMScorer(tiny_bundle, timesteps=(100, 700), seed=3)
    item = shapes_itm_item(1, 0, "id")
    images = [np.asarray(_small(im)) for im in item.images[:2]]
    latents = scorer.encode(images)
    scores = scorer.pair_scores(latents, item.texts[:2], [(0, 0), (1, 1), (0, 1)])
    # by hand for the pair (image 1, text 1)
    hidden = encode_texts(tiny_bundle.text_encoder, tiny_bundle.tokenizer,
                          [item.texts[1], ""]).hidden
    noise = torch.randn((2, *latents.shape[1:]), generator=torch.Generator().manual_seed(3))
    sched = DDPMScheduler.from_config(tiny_bundle.scheduler_config)
    errors = []
    for states in (hidden[1:2], hidden[0:1]):
        total = 0.0
        for k, t in enumerate((100, 700)):
            tt = torch.tensor([t])
            noisy = sched.add_noise(latents[1:2], noise[k:k + 1], tt)
            with torch.no_grad():
                eps = tiny_bundle.unet(noisy, tt, states).sample
            total += float(((eps - noise[k:k + 1]) ** 2).mean())
        errors.append(total / 2)
    assert abs(float(scores[1]) - (errors[0] - errors[1])) < 1e-5
    again = scorer.pair_scores(latents, item.texts[:2], [(0, 0), (1, 1), (0, 1)])
    assert torch.equal(scores, again)  # fixed noise: deterministic
    assert scorer.unet_evals_per_pair == 2


def _small(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image).resize((16, 16))


def test_diffusion_itm_refuses_bad_timesteps(tiny_bundle):
    with pytest.raises(ValueError, match="timesteps"):
        DiffusionITMScorer(tiny_bundle, timesteps=(100, 1000))


def test_baseline_scorers_run_the_itm_protocol():
    class ByCaption:  # scores 1 only for (image 0, caption 0) of each item: always right
        def encode(self, images):
            return torch.arange(len(images))

        def pair_scores(self, encoded, texts, pairs):
            return torch.tensor([1.0 if i % 4 == 0 and j % 4 == 0 else 0.0 for i, j in pairs])

    items = [shapes_itm_item(1, k, "ood") for k in range(3)]
    assert evaluate_itm(ByCaption(), items) == {"i2t": 1.0, "t2i": 1.0, "overall": 1.0, "n": 3}


def test_evaluate_disc_methods_from_the_command_line(capsys):
    assert dpt("evaluate-disc", "--method", "clip", "--n-itm", 8, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rec"] == {} and set(result["itm"]) == {"id", "ood"}
    assert result["settings"]["unet_evals_per_pair"] == 0
    assert result["itm"]["ood"]["n"] == 8
    # the shipped CLIP knows the world: clearly above chance (0.25) on 8 + 8 items
    assert result["itm"]["id"]["overall"] + result["itm"]["ood"]["overall"] > 0.8


def test_evaluate_disc_diffusion_itm_with_lora(tiny_model, tiny_dpt, capsys):
    assert dpt("evaluate-disc", "--method", "diffusion-itm", "--model", tiny_model, "--dpt",
               tiny_dpt, "--n-itm", 2, "--itm-timesteps", "200,600", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["itm_timesteps"] == [200, 600]
    assert result["settings"]["unet_evals_per_pair"] == 2
    assert result["itm"]["id"]["n"] == 2


@pytest.mark.parametrize("argv,message", [
    (["--method", "clip", "--dpt", "x"], "drop --dpt"),
    (["--method", "diffusion-itm", "--itm-timesteps", "5,1000"], "--itm-timesteps"),
    (["--method", "clip", "--n-itm", "0"], "--n-itm must be > 0"),
    (["--method", "clip", "--clip-model", "/nonexistent"], "--clip-model /nonexistent"),
])
def test_evaluate_disc_method_errors(argv, message, capsys):
    assert dpt("evaluate-disc", *argv) == 2
    assert message in capsys.readouterr().err
