"""One matching score, one text encoder, one latent encoder, one noiser: each reader of
s(z, y) (self-correction, evaluate-disc, the referee, training, sampling) sees the same thing."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from dpt_t2i.data.samples import images_to_tensor
from dpt_t2i.data.shapes.grammar import parse_prompt, scene_for
from dpt_t2i.data.shapes.world import render
from dpt_t2i.eval.discriminative import DiscriminativeScorer
from dpt_t2i.generation.guidance import SelfCorrection
from dpt_t2i.generation.referee import dpt_scorer
from dpt_t2i.generation.sampling import encode_prompts, unet_model_fn
from dpt_t2i.io.bundle import load_bundle
from dpt_t2i.model.adapter import AdapterConfig
from dpt_t2i.model.config import DPTConfig
from dpt_t2i.model.heads import DPTHeads
from dpt_t2i.model.latents import Noiser, encode_latents
from dpt_t2i.model.score import MatchScore
from dpt_t2i.model.text import encode_texts
from dpt_t2i.shapes_model.tokenizer import build_tokenizer

SMALL = AdapterConfig(feature_dim=64, text_dim=32, d_model=32, n_heads=2, ffn_dim=64,
                      n_ground_queries=4, n_match_queries=3, max_hw=8)
PROMPTS = ["a red circle", "two blue squares"]
TEXTS = ["a red circle", "two blue squares", "a green triangle"]


@pytest.fixture(scope="module")
def bundle(tiny_model):
    return load_bundle(tiny_model)


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    return DPTHeads(SMALL).eval()


def _config(condition="empty"):
    return DPTConfig(block="up0", condition=condition, adapter=SMALL)


def _images(prompts, size=16):
    """uint8 renders of the prompts at the tiny VAE's size."""
    rng = np.random.default_rng(0)
    renders = [render(scene_for(parse_prompt(p), rng)) for p in prompts]
    return [np.asarray(Image.fromarray(r).resize((size, size))) for r in renders]


def _masked_encoder(use_mask: bool):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    config.use_attention_mask = use_mask
    return CLIPTextModel(config).eval(), tokenizer


@pytest.mark.parametrize("use_mask", [True, False])
def test_the_text_encoder_passes_the_mask_exactly_when_the_config_asks(use_mask):
    encoder, tokenizer = _masked_encoder(use_mask)
    tokens = tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length,
                       return_tensors="pt")
    with torch.no_grad():
        masked = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)
        unmasked = encoder(tokens.input_ids)
    real = tokens.attention_mask.bool()
    # the mask matters: padding states differ (CLIP's causal mask already hides the padding
    # from the real tokens, whose states agree)
    assert not torch.allclose(masked.last_hidden_state[~real], unmasked.last_hidden_state[~real])
    torch.testing.assert_close(masked.last_hidden_state[real], unmasked.last_hidden_state[real])
    got = encode_texts(encoder, tokenizer, PROMPTS)
    want = masked if use_mask else unmasked
    assert torch.equal(got.hidden, want.last_hidden_state)
    assert torch.equal(got.pooled, want.pooler_output)
    assert torch.equal(got.mask, real)


def test_texts_keep_their_order_and_encode_alike_alone_and_in_a_batch(bundle):
    texts = ["b blue", "", "a red", ""]
    for unique in (True, False):
        both = encode_texts(bundle.text_encoder, bundle.tokenizer, texts, unique=unique)
        assert both.hidden.shape == (4, 16, 32) and both.hidden.dtype == torch.float32
        for i, text in enumerate(texts):
            alone = encode_texts(bundle.text_encoder, bundle.tokenizer, [text])
            # the tiny encoder's odd widths make batched rows differ in the last bits
            torch.testing.assert_close(both.hidden[i], alone.hidden[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(both.pooled[i], alone.pooled[0], rtol=0, atol=1e-6)
            assert torch.equal(both.mask[i], alone.mask[0])


def test_the_shipped_encoder_gives_a_text_the_same_bits_in_any_batch():
    """What lets evaluate-disc, the referee and self-correction encode their texts in batches
    of their own and still agree with the code before the score was unified."""
    from dpt_t2i.io.bundle import default_model_path

    shipped = load_bundle(default_model_path())
    texts = ["a red circle and a blue square", "", "two blue squares", ""]
    both = encode_texts(shipped.text_encoder, shipped.tokenizer, texts, unique=False)
    for i, text in enumerate(texts):
        alone = encode_texts(shipped.text_encoder, shipped.tokenizer, [text])
        assert torch.equal(both.hidden[i], alone.hidden[0])


def test_sampling_keeps_the_encoders_dtype_and_reads_the_same_states(tiny_model):
    bundle = load_bundle(tiny_model)
    float_states = encode_prompts(bundle, PROMPTS)
    assert torch.equal(float_states, encode_texts(bundle.text_encoder, bundle.tokenizer,
                                                  PROMPTS).hidden)
    bundle.text_encoder.double()
    assert encode_prompts(bundle, PROMPTS).dtype == torch.float64
    assert encode_texts(bundle.text_encoder, bundle.tokenizer, PROMPTS).hidden.dtype == \
        torch.float32


def test_training_and_sampling_see_the_same_states_on_a_masked_encoder(tiny_model):
    """With `use_attention_mask` set, training's caption states are sampling's."""
    from dpt_t2i.data.sources import ShapesSource, draw_samples
    from dpt_t2i.training.inputs import frozen_parts, prepare_inputs

    bundle = load_bundle(tiny_model)
    bundle.text_encoder.config.use_attention_mask = True
    samples = draw_samples(ShapesSource(), 0, 2)
    latents, inputs = prepare_inputs(frozen_parts(bundle, torch.device("cpu")), samples,
                                     _config("caption"), need_caption_states=True)
    captions = [s.caption for s in samples]
    assert torch.equal(inputs["caption_states"], encode_prompts(bundle, captions))
    assert torch.equal(inputs["states"], encode_prompts(bundle, captions))
    encoded = encode_texts(bundle.text_encoder, bundle.tokenizer, captions)
    assert torch.equal(inputs["caption_mask"], encoded.mask)
    pixels = images_to_tensor([s.image for s in samples])
    assert torch.equal(latents, encode_latents(bundle.vae, pixels))


@pytest.mark.parametrize("condition", ["empty", "caption", "each"])
def test_the_score_of_images_is_the_score_of_their_encoded_noised_latents(bundle, heads,
                                                                          condition):
    config = _config(condition)
    images = images_to_tensor(_images(PROMPTS))
    scorer = dpt_scorer(bundle, heads, config, timestep=200, seed=7)
    first, second = scorer(images, PROMPTS), scorer(images, PROMPTS[::-1])

    score, noiser = MatchScore(bundle, heads, config), Noiser(bundle.scheduler_config)
    generator = torch.Generator().manual_seed(7)  # one stream across the scorer's calls
    latents = encode_latents(bundle.vae, images)
    with torch.no_grad():
        texts = score.texts(PROMPTS)
    want_first = score(noiser(latents, 200, generator), 200, texts)
    want_second = score(noiser(latents, 200, generator), 200, texts[[1, 0]])
    assert torch.equal(first, want_first) and torch.equal(second, want_second)
    assert not torch.equal(first, scorer(images, PROMPTS))  # fresh noise at each call

    # evaluate-disc: the same encoder and noiser, a generator seeded afresh at each call
    disc = DiscriminativeScorer(bundle, heads, config, timestep=200, seed=7)
    noisy = disc.encode(_images(PROMPTS))
    fresh = noiser(encode_latents(bundle.vae, images), 200, torch.Generator().manual_seed(7))
    assert torch.equal(noisy, fresh) and torch.equal(disc.encode(_images(PROMPTS)), noisy)


@pytest.mark.parametrize("condition", ["empty", "caption", "each"])
def test_self_correction_and_evaluate_disc_give_the_same_score(bundle, heads, condition):
    config = _config(condition)
    disc = DiscriminativeScorer(bundle, heads, config, timestep=300)
    latents = disc.encode(_images(PROMPTS))
    pairs = disc.pair_scores(latents, PROMPTS, [(0, 0), (1, 1)])

    score = MatchScore(bundle, heads, config)
    wrapper = SelfCorrection(unet_model_fn(bundle), score, score.texts(PROMPTS), eta=1.0,
                             t_range=(0, 1000))
    wrapper.gradient(latents, torch.tensor(300))  # records s(x, y) at the step
    torch.testing.assert_close(wrapper.scores[-1], pairs, rtol=1e-5, atol=1e-6)
    matrix = score.matrix(latents, 300, PROMPTS)  # (B, T)
    assert matrix.shape == (2, 2)
    torch.testing.assert_close(torch.diagonal(matrix), pairs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("condition, rows", [("empty", 2), ("caption", 2 * len(TEXTS)),
                                             ("each", 2 * len(TEXTS))])
def test_empty_condition_features_are_computed_once_per_image(bundle, heads, condition, rows):
    seen = []
    handle = bundle.unet.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    try:
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        matrix = MatchScore(bundle, heads, _config(condition)).matrix(latents, 300, TEXTS)
    finally:
        handle.remove()
    assert matrix.shape == (2, len(TEXTS)) and sum(seen) == rows


def test_training_under_each_scores_every_candidate_as_the_score_does(bundle, heads,
                                                                      monkeypatch):
    """Condition "each": the loss's s(z_b, y) is MatchScore's, read under y itself, for the
    caption, each hard negative and the rolled in-batch caption of every image."""
    import dataclasses

    from dpt_t2i.data.sources import ShapesSource, draw_samples
    from dpt_t2i.training.inputs import frozen_parts, prepare_inputs
    from dpt_t2i.training.objective import DPTObjective
    from dpt_t2i.training.settings import TrainSettings

    config = _config("each")
    samples = [dataclasses.replace(s, image=np.asarray(Image.fromarray(s.image).resize((16, 16))))
               for s in draw_samples(ShapesSource(), 0, 3)]  # the tiny VAE's size
    latents, inputs = prepare_inputs(frozen_parts(bundle, torch.device("cpu")), samples, config,
                                     need_caption_states=False)
    generator = torch.Generator().manual_seed(0)
    t = torch.tensor([100, 300, 600])
    noise = torch.randn(latents.shape, generator=generator)
    noisy = Noiser(bundle.scheduler_config).add(latents, t, noise)
    seen = {}
    real = heads.matching.candidates

    def spy(scores, texts, n_batch, **kwargs):
        seen.update(scores=scores, n_batch=n_batch)
        return real(scores, texts, n_batch, **kwargs)

    monkeypatch.setattr(heads.matching, "candidates", spy)
    objective = DPTObjective(bundle.unet, heads, config, TrainSettings(batch_negatives=1))
    with torch.no_grad():
        objective(noisy, t, inputs)
    assert seen["n_batch"] == 1 and seen["scores"].shape == (3, 1 + 3 + 1)
    score = MatchScore(bundle, heads, config)
    for b, sample in enumerate(samples):
        candidates = [sample.caption, *sample.negatives, samples[b - 1].caption]
        with torch.no_grad():
            want = score(noisy[b:b + 1].expand(len(candidates), -1, -1, -1), int(t[b]),
                         score.texts(candidates))
        torch.testing.assert_close(seen["scores"][b], want, rtol=1e-4, atol=1e-5)
    # the features do depend on the candidate: a leaked read (all under the caption) differs
    with torch.no_grad():
        leaked = score.match_embeds(noisy[:1].expand(5, -1, -1, -1), int(t[0]),
                                    score.texts([samples[0].caption] * 5).states)
        fair = score.match_embeds(noisy[:1].expand(5, -1, -1, -1), int(t[0]),
                                  score.texts([samples[0].caption, *samples[0].negatives,
                                               samples[2].caption]).states)
    assert not torch.allclose(leaked[1:], fair[1:])
