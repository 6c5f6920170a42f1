"""The authors' adapter rebuilt: position and time embeddings, loading, the matching output."""

import math

import pytest
import torch

from dpt_t2i.model.official_adapter import N_MATCH_QUERIES, OfficialHeads, sine_positions


def tiny_official(seed=0, feature_dim=32, clip_dim=32):
    """A small adapter in the release's layout (16 wide, 12 queries, 8 heads)."""
    torch.manual_seed(seed)
    return OfficialHeads(feature_dim=feature_dim, d_model=16, n_queries=12, ffn_dim=24,
                         clip_dim=clip_dim, time_dim=40).eval()


def official_lora_state(unet, rank=3, seed=0, scale=1.0):
    """LoRA in the authors' release layout (`io/interchange.py`) on every attention layer of
    `unet`: `unet.<module>.processor.to_{q,k,v,out}_lora.{down,up}.weight`, scale x N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if not name.endswith(("attn1", "attn2")):
            continue
        for proj, linear in (("to_q_lora", module.to_q), ("to_k_lora", module.to_k),
                             ("to_v_lora", module.to_v), ("to_out_lora", module.to_out[0])):
            prefix = f"unet.{name}.processor.{proj}"
            state[f"{prefix}.down.weight"] = scale * torch.randn(rank, linear.in_features,
                                                                 generator=g)
            state[f"{prefix}.up.weight"] = scale * torch.randn(linear.out_features, rank,
                                                               generator=g)
    return state


def official_adapter_state(seed=0, feature_dim=32, clip_dim=32):
    """Its state dict plus the heads the release saves and the matching path does not read."""
    g = torch.Generator().manual_seed(seed)
    state = dict(tiny_official(seed, feature_dim, clip_dim).state_dict())
    state["class_embed.weight"] = torch.randn(16, 16, generator=g)
    state["bbox_embed.layers.2.weight"] = torch.randn(4, 16, generator=g)
    state["contrastive_align_projection_text.weight"] = torch.randn(64, 768, generator=g)
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return state


def test_sine_positions_follow_detr():
    pos = sine_positions(2, 3, 8)  # half = 4 channels per axis
    assert pos.shape == (8, 2, 3)
    y = 2 / (2 + 1e-6) * 2 * math.pi  # row 1 (second row), normalised
    x = 1 / (3 + 1e-6) * 2 * math.pi  # column 0
    dim = [10000 ** (2 * (k // 2) / 4) for k in range(4)]
    expected_y = [math.sin(y / dim[0]), math.cos(y / dim[1]), math.sin(y / dim[2]),
                  math.cos(y / dim[3])]
    expected_x = [math.sin(x / dim[0]), math.cos(x / dim[1]), math.sin(x / dim[2]),
                  math.cos(x / dim[3])]
    torch.testing.assert_close(pos[:, 1, 0], torch.tensor(expected_y + expected_x))


def test_matching_output_and_the_time_it_reads():
    heads = tiny_official()
    features = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = heads(features, torch.tensor([100, 100]))["match_embeds"]
        later = heads(features, torch.tensor([700, 700]))["match_embeds"]
        swapped = heads(features.flip(-1), torch.tensor([100, 100]))["match_embeds"]
    assert out.shape == (2, N_MATCH_QUERIES, 32)
    assert not torch.allclose(out, later)  # time enters through the positions
    assert not torch.allclose(out, swapped)  # and positions matter
    assert torch.equal(heads.adapter.text(out[:, 0]), out[:, 0])  # text(y) is the pooled state


def test_from_state_dict_round_trips_and_names_bad_keys():
    state = official_adapter_state()
    heads = OfficialHeads.from_state_dict(state)
    features = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(heads(features, torch.tensor([5]))["match_embeds"],
                                   tiny_official()(features, torch.tensor([5]))["match_embeds"])
    broken = dict(state)
    del broken["transformer.decoder.layers.0.multihead_attn.in_proj_weight"]
    broken["transformer.decoder.layers.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="missing transformer.decoder.layers.0.multihead_attn."
                                         "in_proj_weight; unknown transformer.decoder.layers.0"
                                         ".extra.weight"):
        OfficialHeads.from_state_dict(broken)
    with pytest.raises(ValueError, match="lack query_embed.weight"):
        OfficialHeads.from_state_dict({k: v for k, v in state.items() if "query" not in k})
