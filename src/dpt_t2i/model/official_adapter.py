"""The authors' discriminative adapter, rebuilt from their released layout to run their weights.

Only the matching path runs (what their sampler's self-correction reads); the grounding and
contrastive-alignment heads of the checkpoint are checked by name and left unused. The
network, as the released code computes it (DETR's post-norm transformer):

    src   = input_proj(F_t)                                 # (B, D, h, w), 1x1 conv
    pos   = sine(h, w) + temb(t)                            # DETR's 2-D sine (y half first,
                                                            #   coordinates normalised to 2 pi)
                                                            #   plus the timestep embedding
    mem   = encoder(src, pos)       q = k = src + pos, v = src
    hs    = decoder(0, mem, pos, query_embed)               # q = tgt + query_pos, k = mem + pos
    h_i   = map_to_clip(norm(hs))[:, :10]                   # the 10 matching queries
    s     = max_i cos(h_i, pooled text state)               # logit_scale is not part of s

Hyper-parameters (width, queries, feature channels, feed-forward size, text width, layers)
are read from the weights' shapes; the head count (8) is not stored and is the release's.
Dropout is off (eval mode), so scores are deterministic; the released sampler never called
`eval()`, so its scores were not.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

N_MATCH_QUERIES = 10   # the release's matching queries come first among its queries
N_HEADS = 8            # not recoverable from the weights
# prefixes of the checkpoint's adapter keys that the matching path does not read
UNUSED = ("class_embed.", "bbox_embed.", "contrastive_align_projection_image.",
          "contrastive_align_projection_text.", "logit_scale")
# every key prefix of the released adapter: the matching path's modules, then the rest
PREFIXES = ("query_embed.", "input_proj.", "timestep_embedding.", "transformer.",
            "map_to_clip.") + UNUSED


class _EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # (S, B, D)
        q = src + pos
        src = self.norm1(src + self.self_attn(q, q, src, need_weights=False)[0])
        return self.norm2(src + self.linear2(torch.relu(self.linear1(src))))


class _DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.multihead_attn = nn.MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, tgt, memory, pos, query_pos):  # (Q, B, D), (S, B, D), (S, B, D), (Q, B, D)
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        cross = self.multihead_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + cross)
        return self.norm3(tgt + self.linear2(torch.relu(self.linear1(tgt))))


class _Transformer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, enc_layers: int, dec_layers: int):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_EncoderLayer(d, heads, ffn)
                                            for _ in range(enc_layers))
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(_DecoderLayer(d, heads, ffn)
                                            for _ in range(dec_layers))
        self.decoder.norm = nn.LayerNorm(d)


class _TimestepEmbedding(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.time_proj = Timesteps(d, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(d, hidden, out_dim=d)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_embedding(self.time_proj(t).to(dtype))  # (B, D)


def sine_positions(h: int, w: int, d: int) -> torch.Tensor:
    """(d, h, w) DETR's normalised 2-D sine embedding: channels [y half, x half], each half
    interleaving sin (even channels) and cos (odd channels) of coordinate / 10000^(2k/half)."""
    half = d // 2
    y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w) / (h + 1e-6) * 2 * math.pi
    x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w) / (w + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(half) // 2) / half)  # (half,)

    def embed(coord):  # (h, w) -> (half, h, w)
        a = coord[None] / dim_t[:, None, None]
        return torch.where((torch.arange(half) % 2 == 0)[:, None, None], a.sin(), a.cos())

    return torch.cat([embed(y), embed(x)])


class OfficialHeads(nn.Module):
    """The release's adapter (matching path) with the checkpoint's module names.

    Call it as `DPTHeads` is called: `heads(features, t)["match_embeds"]` gives (B, 10, C)
    and `heads.adapter.text(pooled)` the text side (the pooled state itself).
    """

    def __init__(self, feature_dim: int, d_model: int, n_queries: int, ffn_dim: int,
                 clip_dim: int, time_dim: int, enc_layers: int = 1, dec_layers: int = 1,
                 n_heads: int = N_HEADS):
        super().__init__()
        self.query_embed = nn.Embedding(n_queries, d_model)
        self.input_proj = nn.Conv2d(feature_dim, d_model, kernel_size=1)
        self.timestep_embedding = _TimestepEmbedding(d_model, time_dim)
        self.transformer = _Transformer(d_model, n_heads, ffn_dim, enc_layers, dec_layers)
        self.map_to_clip = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(),
                                         nn.Linear(d_model, clip_dim))

    @property
    def adapter(self) -> "OfficialHeads":
        return self

    @staticmethod
    def text(pooled: torch.Tensor, states=None, mask=None) -> torch.Tensor:
        return pooled

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "OfficialHeads":
        """Build with the weights' shapes and load them; missing or unknown keys are named."""
        time_key = "timestep_embedding.time_embedding.linear_1.weight"
        required = ("query_embed.weight", "input_proj.weight", "map_to_clip.2.weight",
                    "transformer.encoder.layers.0.linear1.weight", time_key)
        absent = [k for k in required if k not in state]
        if absent:
            raise ValueError(f"the adapter weights lack {', '.join(absent)}")
        layers = {side: len({m[1] for k in state
                             if (m := re.match(rf"transformer\.{side}\.layers\.(\d+)\.", k))})
                  for side in ("encoder", "decoder")}
        n_queries, d = state["query_embed.weight"].shape
        heads = cls(feature_dim=state["input_proj.weight"].shape[1], d_model=d,
                    n_queries=n_queries,
                    ffn_dim=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
                    clip_dim=state["map_to_clip.2.weight"].shape[0],
                    time_dim=state[time_key].shape[0], enc_layers=layers["encoder"], dec_layers=max(1, layers["decoder"]))
        used = {k: v for k, v in state.items() if not k.startswith(UNUSED)}
        own = heads.state_dict()
        missing = sorted(set(own) - set(used))
        unknown = sorted(set(used) - set(own))
        if missing or unknown:
            raise ValueError("the adapter weights do not fit the released adapter: "
                             + (f"missing {', '.join(missing[:5])}" if missing else "")
                             + ("; " if missing and unknown else "")
                             + (f"unknown {', '.join(unknown[:5])}" if unknown else ""))
        heads.load_state_dict({k: v.float() for k, v in used.items()})
        return heads.eval()

    def forward(self, features: torch.Tensor, timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"match_embeds": (B, 10, clip_dim)} for features (B, C, h, w) at timesteps (B,)."""
        B, _, h, w = features.shape
        src = self.input_proj(features)  # (B, D, h, w)
        d = src.shape[1]
        t = torch.as_tensor(timesteps, device=features.device).reshape(-1).expand(B)
        temb = self.timestep_embedding(t, src.dtype)  # (B, D)
        pos = sine_positions(h, w, d).to(src)[None] + temb[:, :, None, None]  # (B, D, h, w)
        src = src.flatten(2).permute(2, 0, 1)  # (h*w, B, D)
        pos = pos.flatten(2).permute(2, 0, 1)
        for layer in self.transformer.encoder.layers:
            src = layer(src, pos)
        query_pos = self.query_embed.weight[:, None, :].expand(-1, B, -1)  # (Q, B, D)
        tgt = torch.zeros_like(query_pos)
        for layer in self.transformer.decoder.layers:
            tgt = layer(tgt, src, pos, query_pos)
        hs = self.transformer.decoder.norm(tgt).transpose(0, 1)  # (B, Q, D)
        return {"match_embeds": self.map_to_clip(hs[:, :N_MATCH_QUERIES])}
