"""The discriminative adapter of DPT (Qu et al., CVPR 2024, eq. 1-2) and its heads.

A U-Net feature map F_t (B, d, h, w) is projected to d_model, given a learnable 2-D position
embedding and a timestep embedding, flattened and encoded by a Transformer encoder; N learnable
queries read the encoded tokens through a Transformer decoder, giving Q* (B, N, d_model).
The first M queries serve global matching (projected into the text embedding space); the other
N-M serve local grounding (a probability logit, a cxcywh box and a semantic vector each).
With `ground_text`, the grounding pass also reads the referring expression's token states:
they join the image tokens in the encoder (as MDETR joins them), so the probability of a
query can depend on the words, not only on what the U-Net's cross-attention made of them.
The matching pass never sees text tokens: its score must come from the image.
`score` is the matching score s(z, y) = max_i cos(text(y), h_i) used by self-correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

MATCH_TEXTS = ("pooled", "tokens")


@dataclass
class AdapterConfig:
    """Adapter hyper-parameters. Shapes defaults are provisional until measured.

    The official DPT release (SD-2.1) used d_model 256, 8 heads, FFN 2048, 1 encoder and
    1 decoder layer, 10 matching and 100 grounding queries.
    """

    feature_dim: int = 128      # channels of the tapped block (Shapes up1: 128; SD-2.1 varies)
    text_dim: int = 128         # text embedding width: 128 for Shapes, 1024 for SD-2.1
    d_model: int = 128          # Shapes is small; the official 256 is over-sized for 8x8 maps
    n_heads: int = 4            # 32 channels per head at d_model 128 (official: 8 heads)
    ffn_dim: int = 512          # 4 x d_model, the usual Transformer ratio (official: 2048)
    encoder_layers: int = 1     # as the official release
    decoder_layers: int = 1     # as the official release
    n_match_queries: int = 10   # M, as the official release; s(z, y) takes the max over them
    n_ground_queries: int = 16  # N-M; Shapes scenes hold at most 4 objects (official: 100)
    dropout: float = 0.0        # 0.1 (DETR's) trained boxes slower on Shapes (docs/dpt-shapes.md)
    max_hw: int = 16            # largest feature side: Shapes latents are 8x8 (SD-2.1 768px: 96)
    ground_text: bool = True    # grounding reads the expression's tokens (docs/dpt-shapes.md)
    match_text: str = "pooled"  # text(y) of matching: "pooled" state, or "tokens" (TextHead)

    def __post_init__(self):
        if self.match_text not in MATCH_TEXTS:
            raise ValueError(f"match_text must be one of {', '.join(MATCH_TEXTS)}, "
                             f"got {self.match_text!r}")


class MLP(nn.Module):
    """A few linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, n_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def _sine_table(length: int, d_model: int, first_half: bool) -> torch.Tensor:
    """(length, d_model): sin/cos of the position at DETR's frequencies in one half, 0 elsewhere."""
    half = d_model // 2
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, half, 2, dtype=torch.float32) / half)
    table = torch.zeros(length, d_model)
    part = table[:, :half] if first_half else table[:, half:2 * half]
    part[:, 0::2] = torch.sin(position * freq)
    part[:, 1::2] = torch.cos(position * freq)[:, :part[:, 1::2].shape[1]]
    return table


class TextHead(nn.Module):
    """A learned text(y) for matching on top of a frozen text encoder.

    The pooled state plus a correction that one Transformer layer reads from the token states,
    mean-pooled over the real tokens. The correction starts at zero, so training starts from
    the pooled state. No dropout: identical texts must get identical embeddings, which the
    matching loss relies on to treat repeated captions as positives.
    """

    def __init__(self, text_dim: int, d_model: int, n_heads: int, ffn_dim: int):
        super().__init__()
        self.proj = nn.Linear(text_dim, d_model)
        self.layer = nn.TransformerEncoderLayer(d_model, n_heads, ffn_dim, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.out = nn.Linear(d_model, text_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pooled: torch.Tensor, states: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """(N, text_dim) from pooled (N, text_dim), states (N, L, text_dim), mask (N, L)."""
        unique, inverse = torch.unique(pooled, dim=0, return_inverse=True)
        first = torch.zeros(len(unique), dtype=torch.long, device=pooled.device)
        first.scatter_(0, inverse, torch.arange(len(pooled), device=pooled.device))
        states, mask = states[first], mask[first].to(torch.bool)  # one row per distinct text
        x = self.layer(self.proj(states.to(pooled.dtype)), src_key_padding_mask=~mask)
        weights = mask.unsqueeze(-1).to(x.dtype)
        mean = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (U, d_model)
        return (unique + self.out(mean))[inverse]


class DiscriminativeAdapter(nn.Module):
    """Feature map + timestep -> N query states -> matching and grounding heads."""

    def __init__(self, *, feature_dim: int, text_dim: int, d_model: int, n_heads: int,
                 ffn_dim: int, encoder_layers: int, decoder_layers: int, n_match_queries: int,
                 n_ground_queries: int, dropout: float, max_hw: int, ground_text: bool = False,
                 match_text: str = "pooled"):
        super().__init__()
        self.n_match_queries = n_match_queries
        self.max_hw = max_hw
        self.input_proj = nn.Conv2d(feature_dim, d_model, kernel_size=1)
        # separate row and column tables, summed, sliced to the map's h x w; learnable, but
        # initialised as DETR's fixed sine embedding (rows in the first half of the channels,
        # columns in the second): at the usual 0.02 random scale the position was drowned by
        # the features and boxes did not train (docs/dpt-shapes.md)
        self.row_embed = nn.Parameter(_sine_table(max_hw, d_model, first_half=True))
        self.col_embed = nn.Parameter(_sine_table(max_hw, d_model, first_half=False))
        # sinusoidal as the diffusers U-Net's own time embedding, then an MLP
        self.time_proj = Timesteps(d_model, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(d_model, d_model)
        layer_kw = dict(d_model=d_model, nhead=n_heads, dim_feedforward=ffn_dim,
                        dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer_kw), encoder_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer_kw), decoder_layers, norm=nn.LayerNorm(d_model))
        self.queries = nn.Embedding(n_match_queries + n_ground_queries, d_model)
        self.match_head = nn.Linear(d_model, text_dim)
        self.ground_logit_head = nn.Linear(d_model, 1)
        self.ground_box_head = MLP(d_model, d_model, 4, n_layers=3)
        self.ground_embed_head = nn.Linear(d_model, text_dim)
        self.ground_text = ground_text
        if ground_text:  # text token states (width text_dim) into the encoder's sequence
            self.text_proj = nn.Linear(text_dim, d_model)
            self.text_type = nn.Parameter(torch.zeros(d_model))
        self.text_head = (TextHead(text_dim, d_model, n_heads, ffn_dim)
                          if match_text == "tokens" else None)

    def text(self, pooled: torch.Tensor, states: torch.Tensor | None = None,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """text(y) of the matching score: the pooled state, or the `TextHead`'s reading.

        Args:
            pooled: (N, text_dim) pooled text states.
            states, mask: (N, L, text_dim) token states and (N, L) bool real-token mask;
                needed only with `match_text="tokens"`.
        """
        if self.text_head is None:
            return pooled
        if states is None or mask is None:
            raise ValueError("this adapter's text(y) reads token states; pass states and mask")
        return self.text_head(pooled, states, mask)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """(h*w, d_model) learnable 2-D position embedding, row-major like `flatten(2)`."""
        if h > self.max_hw or w > self.max_hw:
            raise ValueError(f"feature map {h}x{w} is larger than max_hw={self.max_hw}; "
                             f"build the adapter with a larger max_hw")
        pos = self.row_embed[:h, None, :] + self.col_embed[None, :w, :]  # (h, w, D)
        return pos.reshape(h * w, -1)  # (h*w, D)

    def encode(self, features: torch.Tensor, timesteps: torch.Tensor,
               text_states: torch.Tensor | None = None,
               text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Q* (B, N, d_model): the query states after the decoder (paper eq. 1-2).

        Args:
            features: (B, d, h, w) U-Net block output F_t.
            timesteps: (B,) diffusion timesteps t (a scalar is broadcast).
            text_states: (B, L, text_dim) token states to encode with the image, or None.
            text_mask: (B, L) bool, True on real tokens (None: all real).
        """
        B, _, h, w = features.shape
        pos = self.position_embedding(h, w)  # (h*w, D)
        x = self.input_proj(features).flatten(2).transpose(1, 2)  # (B, h*w, D)
        t = torch.as_tensor(timesteps, device=features.device).reshape(-1).expand(B)
        t_emb = self.time_embed(self.time_proj(t).to(x.dtype))  # (B, D)
        x = x + pos[None] + t_emb[:, None, :]  # (B, h*w, D)
        padding = None
        if text_states is not None:
            if not self.ground_text:
                raise ValueError("this adapter was built without ground_text; it reads no text")
            words = self.text_proj(text_states.to(x.dtype)) + self.text_type  # (B, L, D)
            x = torch.cat([x, words], dim=1)  # (B, h*w + L, D)
            if text_mask is not None:
                image_pad = torch.zeros(B, h * w, dtype=torch.bool, device=x.device)
                padding = torch.cat([image_pad, ~text_mask.to(x.device, torch.bool)], dim=1)
        memory = self.encoder(x, src_key_padding_mask=padding)  # (B, h*w [+ L], D)
        queries = self.queries.weight[None].expand(B, -1, -1)  # (B, N, D)
        return self.decoder(queries, memory, memory_key_padding_mask=padding)  # (B, N, D)

    def forward(self, features: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Head outputs for a batch of feature maps.

        Args:
            features: (B, d, h, w) U-Net block output F_t.
            timesteps: (B,) diffusion timesteps t.
            text_states, text_mask: the referring expression's tokens for the grounding
                pass (see `encode`); the matching outputs of such a pass must not be used.

        Returns:
            dict with `match_embeds` (B, M, text_dim), `ground_logits` (B, N-M),
            `ground_boxes` (B, N-M, 4) cxcywh in [0, 1], `ground_embeds` (B, N-M, text_dim).
        """
        q = self.encode(features, timesteps, text_states, text_mask)  # (B, N, D)
        q_match, q_ground = q[:, :self.n_match_queries], q[:, self.n_match_queries:]
        return {
            "match_embeds": self.match_head(q_match),  # (B, M, text_dim)
            "ground_logits": self.ground_logit_head(q_ground).squeeze(-1),  # (B, N-M)
            "ground_boxes": self.ground_box_head(q_ground).sigmoid(),  # (B, N-M, 4)
            "ground_embeds": self.ground_embed_head(q_ground),  # (B, N-M, text_dim)
        }


def build_adapter(config: AdapterConfig) -> DiscriminativeAdapter:
    """The adapter an `AdapterConfig` describes."""
    return DiscriminativeAdapter(
        feature_dim=config.feature_dim, text_dim=config.text_dim, d_model=config.d_model,
        n_heads=config.n_heads, ffn_dim=config.ffn_dim, encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers, n_match_queries=config.n_match_queries,
        n_ground_queries=config.n_ground_queries, dropout=config.dropout, max_hw=config.max_hw,
        ground_text=config.ground_text, match_text=config.match_text)

