"""Discriminative adapter: shapes, position/timestep sensitivity, gradients, Shapes model."""

import pytest
import torch

from dpt_t2i.io.bundle import default_model_path
from dpt_t2i.model.adapter import AdapterConfig, DiscriminativeAdapter, build_adapter
from dpt_t2i.model.text import encode_texts

TINY = AdapterConfig(feature_dim=8, text_dim=12, d_model=16, n_heads=2, ffn_dim=32,
                     encoder_layers=1, decoder_layers=1, n_match_queries=3, n_ground_queries=5,
                     dropout=0.0, max_hw=8)


@pytest.fixture
def adapter():
    torch.manual_seed(0)
    return build_adapter(TINY).eval()


def _features(h=4, w=4, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, TINY.feature_dim, h, w, generator=g)


@pytest.mark.parametrize("h,w", [(1, 1), (4, 4), (2, 8), (8, 3)])
def test_output_keys_and_shapes(adapter, h, w):
    out = adapter(_features(h, w), torch.tensor([10, 900]))
    assert set(out) == {"match_embeds", "ground_logits", "ground_boxes", "ground_embeds"}
    assert out["match_embeds"].shape == (2, 3, 12)
    assert out["ground_logits"].shape == (2, 5)
    assert out["ground_boxes"].shape == (2, 5, 4)
    assert out["ground_embeds"].shape == (2, 5, 12)
    boxes = out["ground_boxes"]
    assert (boxes >= 0).all() and (boxes <= 1).all()


def test_build_adapter_reads_the_config():
    adapter = build_adapter(TINY)
    assert isinstance(adapter, DiscriminativeAdapter)
    assert adapter.queries.weight.shape == (8, 16)
    assert adapter.row_embed.shape == adapter.col_embed.shape == (8, 16)
    assert len(adapter.encoder.layers) == 1 and len(adapter.decoder.layers) == 1


def _permute_space(x, seed=1):
    B, d, h, w = x.shape
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    return x.flatten(2)[:, :, perm].reshape(B, d, h, w)


def test_position_embedding_makes_outputs_depend_on_where_features_sit(adapter):
    x, t = _features(4, 4), torch.tensor([10, 900])
    with torch.no_grad():
        a = adapter(x, t)["match_embeds"]
        b = adapter(_permute_space(x), t)["match_embeds"]
        assert not torch.allclose(a, b, atol=1e-4)
        # control: without position embedding the adapter is blind to spatial order
        adapter.row_embed.zero_()
        adapter.col_embed.zero_()
        a = adapter(x, t)["match_embeds"]
        b = adapter(_permute_space(x), t)["match_embeds"]
        assert torch.allclose(a, b, atol=1e-5)


def test_timestep_changes_outputs(adapter):
    x = _features()
    with torch.no_grad():
        a = adapter(x, torch.tensor([10, 10]))
        b = adapter(x, torch.tensor([900, 900]))
    for key in a:
        assert not torch.allclose(a[key], b[key], atol=1e-5), key


def _tokens(B=2, L=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True] * 3 + [False] * (L - 3), [True] * L])[:B]
    return torch.randn(B, L, TINY.text_dim, generator=g), mask


def test_gradients_reach_features_and_every_parameter(adapter):
    x = _features(4, 2).requires_grad_(True)
    t = torch.tensor([10, 900])
    out = adapter.train()(x, t)
    grounded = adapter(x, t, *_tokens())
    sum(v.square().sum() for v in [*out.values(), *grounded.values()]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in adapter.named_parameters() if p.grad is None]
    assert not missing, missing
    for name in ["input_proj.weight", "row_embed", "col_embed", "queries.weight",
                 "time_embed.linear_1.weight", "match_head.weight", "ground_logit_head.weight",
                 "ground_box_head.layers.0.weight", "ground_embed_head.weight"]:
        assert dict(adapter.named_parameters())[name].grad.abs().sum() > 0, name


def test_position_tables_only_get_gradient_where_used(adapter):
    x = _features(2, 3)
    out = adapter(x, torch.tensor([1, 2]))
    out["match_embeds"].sum().backward()
    assert adapter.row_embed.grad[2:].abs().sum() == 0
    assert adapter.col_embed.grad[3:].abs().sum() == 0


@pytest.mark.parametrize("h,w", [(9, 4), (4, 9)])
def test_too_large_feature_map_raises(adapter, h, w):
    with pytest.raises(ValueError, match="max_hw=8"):
        adapter(_features(h, w), torch.tensor([1, 2]))


def test_scalar_timestep_is_broadcast(adapter):
    x = _features()
    with torch.no_grad():
        a = adapter(x, torch.tensor(500))["match_embeds"]
        b = adapter(x, torch.tensor([500, 500]))["match_embeds"]
    torch.testing.assert_close(a, b)


def test_end_to_end_on_the_shipped_shapes_model():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from dpt_t2i.model.features import tap

    path = default_model_path()
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").eval()
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")

    texts = ["a red circle", "a blue circle"]
    encoded = encode_texts(text_encoder, tokenizer, texts)
    text, states = encoded.pooled, encoded.hidden
    assert text.shape == (2, 128)
    assert not torch.allclose(text[0], text[1], atol=1e-4)

    torch.manual_seed(0)
    adapter = build_adapter(AdapterConfig(feature_dim=128, text_dim=128)).eval()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    with torch.no_grad():
        features = tap(unet, "up1", z, t, states)
    assert features.shape == (2, 128, 8, 8)
    out = adapter(features, t)
    assert out["match_embeds"].shape == (2, 10, 128)
    assert out["ground_logits"].shape == (2, 16)
    assert out["ground_boxes"].shape == (2, 16, 4)
    assert out["ground_embeds"].shape == (2, 16, 128)


def test_grounding_reads_the_words_and_ignores_padding(adapter):
    x, t = _features(), torch.tensor([10, 900])
    words, mask = _tokens()
    with torch.no_grad():
        base = adapter(x, t, words, mask)
        other = words.clone()
        other[0, 0] += 1.0  # a real token of image 0 changes
        changed = adapter(x, t, other, mask)
        padded = words.clone()
        padded[0, 3:] = 100.0  # only padding of image 0 changes
        same = adapter(x, t, padded, mask)
    assert not torch.allclose(base["ground_logits"][0], changed["ground_logits"][0], atol=1e-5)
    torch.testing.assert_close(base["ground_logits"][1], changed["ground_logits"][1])
    for key in base:
        torch.testing.assert_close(base[key], same[key], atol=1e-5, rtol=1e-5)


def test_an_adapter_built_without_ground_text_refuses_tokens():
    from dataclasses import replace

    adapter = build_adapter(replace(TINY, ground_text=False))
    assert not any(n.startswith("text_") for n, _ in adapter.named_parameters())
    with pytest.raises(ValueError, match="ground_text"):
        adapter(_features(), torch.tensor([10, 900]), *_tokens())


def test_text_head_starts_at_the_pooled_state_and_learns_from_the_tokens():
    from dataclasses import replace

    torch.manual_seed(0)
    adapter = build_adapter(replace(TINY, match_text="tokens"))
    pooled = torch.randn(3, TINY.text_dim)
    words, mask = _tokens(B=2)
    states = torch.cat([words, words[:1]])
    mask = torch.cat([mask, mask[:1]])
    pooled[2] = pooled[0]  # text 2 is text 0 again
    torch.testing.assert_close(adapter.text(pooled, states, mask), pooled)
    torch.nn.init.normal_(adapter.text_head.out.weight)
    y = adapter.text(pooled, states, mask)
    assert not torch.allclose(y, pooled)
    assert torch.equal(y[0], y[2])  # identical texts, identical embeddings
    other = states.clone()
    other[0, 4] += 1.0  # padding of text 0: no effect
    torch.testing.assert_close(adapter.text(pooled, other, mask)[0], y[0])
    with pytest.raises(ValueError, match="token states"):
        adapter.text(pooled)


def test_a_pooled_text_adapter_returns_the_pooled_state():
    pooled = torch.randn(2, TINY.text_dim)
    assert build_adapter(TINY).text(pooled) is pooled
    with pytest.raises(ValueError, match="match_text must be one of pooled, tokens"):
        AdapterConfig(match_text="mean")
