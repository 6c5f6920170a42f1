"""The Shapes referee: an image-text matcher in which the text reads the image, the Shapes
world's analogue of BLIP-2's image-text matching head.

    image (N, 3, 64, 64) in [-1, 1] + 2 coordinate channels
      -> conv stem, three stride-2 steps             (N, W, 8, 8)
      -> 64 patch tokens + position, R registers     (N, 64 + R, W)
      -> `image_layers` self-attention layers        the image memory
    text: [CLS] + one token a world word              (T, L, W) + position
    pair (image i, text j): `text_layers` layers of self-attention over the text, cross-
      attention from the text to image i's memory, FFN -> the CLS state -> a logit, plus
      `local_weight` x how strongly the words' first cross-attention found something.

The registers are learned keys beside the patches: attention that finds nothing to read
rests on them, so how much of it lands on the patches says how many matching objects there
are (a softmax over patches alone normalises the count away). The coordinate channels give
the stem's features their position in the image, which relations need. The local term (each
word's largest first-layer cross-attention logit, averaged over the words) is a direct
word-to-patch path: without it the text had to learn where to look before any gradient said
what to look for, and training sat at the all-negative answer (a batch of 8 items not fitted
in 100 steps; with it, 98% of its pairs). The logit is differentiable in the image, so a
referee can follow its gradient.

Texts are read word by word over the world's vocabulary (`data.shapes.grammar.vocabulary`,
stored in the config so the weights keep their words): every world word is one token, in
lower case; other words map to one unknown token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAD, CLS, UNK = 0, 1, 2  # token ids before the words
STRIDE = 8  # the stem's three stride-2 convolutions: a 64-pixel image gives an 8x8 grid


@dataclass(frozen=True)
class RefereeConfig:
    """The referee's hyper-parameters; saved as config.json beside the weights."""

    vocabulary: tuple[str, ...]  # the words, in id order after PAD, CLS and UNK
    max_words: int = 15  # the longest world text has 11 words; a longer text is refused
    image_size: int = 64  # the world's canvas; other sizes are resized to it
    width: int = 96  # token width W: the model stays small enough to train on one core
    heads: int = 4  # attention heads (width / heads = 24 channels a head)
    stem_channels: int = 32  # channels of the stem at 32x32 (twice that at 16x16)
    image_layers: int = 2  # self-attention over patches: objects see each other
    text_layers: int = 3  # text self-attention + cross-attention to the patches
    registers: int = 4  # learned keys where unanswered attention rests (counting)
    ffn_mult: int = 2  # FFN width = ffn_mult * width

    def __post_init__(self):
        if not self.vocabulary:
            raise ValueError("vocabulary must name at least one word")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if self.image_size % STRIDE:
            raise ValueError(f"image_size must be a multiple of {STRIDE}, got {self.image_size}")
        if min(self.max_words, self.width, self.stem_channels, self.text_layers,
               self.ffn_mult) < 1 or min(self.image_layers, self.registers) < 0:
            raise ValueError("max_words, width, stem_channels, text_layers and ffn_mult must "
                             "be >= 1; image_layers and registers >= 0")

    @property
    def grid(self) -> int:
        """Patches a side."""
        return self.image_size // STRIDE

    def to_dict(self) -> dict:
        data = asdict(self)
        data["vocabulary"] = list(self.vocabulary)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RefereeConfig:
        """The config of `to_dict`'s output; KeyError / TypeError on missing or unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"unknown key(s) {', '.join(unknown)}")
        if "vocabulary" not in data:
            raise KeyError("vocabulary")
        return cls(**{**data, "vocabulary": tuple(data["vocabulary"])})


def token_ids(config: RefereeConfig, texts: list[str]) -> Tensor:
    """(T, 1 + max_words) ids: CLS, the words (lower case; UNK when not in the vocabulary),
    PAD after the end.

    Raises:
        ValueError: a text of more than `config.max_words` words.
    """
    index = {w: i + 3 for i, w in enumerate(config.vocabulary)}
    ids = torch.full((len(texts), 1 + config.max_words), PAD, dtype=torch.long)
    ids[:, 0] = CLS
    for row, text in enumerate(texts):
        words = text.lower().replace(",", " ").replace(".", " ").split()
        if len(words) > config.max_words:
            raise ValueError(f"text {text!r} has {len(words)} words; the referee reads at most "
                             f"{config.max_words}")
        ids[row, 1:1 + len(words)] = torch.tensor([index.get(w, UNK) for w in words],
                                                  dtype=torch.long)
    return ids


def _sine_grid(grid: int, width: int) -> Tensor:
    """(grid * grid, width) 2-D sine table: rows in the first half of the channels, columns
    in the second (DETR's layout; a 0.02 random start drowns position, see model/adapter.py)."""
    half = width // 2
    freq = torch.exp(-math.log(100.0) * torch.arange(0, half, 2, dtype=torch.float32) / half)
    pos = torch.arange(grid, dtype=torch.float32)[:, None] * freq  # (grid, half / 2)
    table = torch.cat([pos.sin(), pos.cos()], 1)[:, :half]  # (grid, half)
    rows = table[:, None, :].expand(grid, grid, half)
    cols = table[None, :, :].expand(grid, grid, half)
    out = torch.zeros(grid, grid, width)
    out[..., :half], out[..., half:2 * half] = rows, cols
    return out.reshape(grid * grid, width)


class TextLayer(nn.Module):
    """Pre-norm text layer: self-attention over the text (padding masked), cross-attention to
    an image memory, FFN. The memory's keys and values are made once an image (`memory_kv`)
    and shared by every text read against it."""

    def __init__(self, width: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(width) for _ in range(3))
        self.qkv, self.self_out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.q, self.kv = nn.Linear(width, width), nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))

    def memory_kv(self, memory: Tensor) -> Tensor:
        """(N, S, 2W) keys and values of image memories (N, S, W)."""
        return self.kv(memory)

    def _heads(self, x: Tensor) -> Tensor:
        p, n, w = x.shape
        return x.view(p, n, self.heads, w // self.heads).transpose(1, 2)  # (P, h, n, W/h)

    def forward(self, x: Tensor, kv: Tensor, keep: Tensor, find: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        """x (P, L, W) text states, kv (P, S, 2W) each pair's image keys and values, keep
        (P, 1, 1, L) bool, True on real tokens -> the new states (P, L, W), and with `find`
        (P, L) how strongly each token's cross-attention found something: its largest logit
        over the image, averaged over heads (else None)."""
        p, n, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)
        att = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v),
                                             attn_mask=keep)
        x = x + self.self_out(att.transpose(1, 2).reshape(p, n, w))
        q = self._heads(self.q(self.norm2(x)))  # (P, h, L, W/h)
        k, v = (self._heads(t) for t in kv.chunk(2, -1))  # (P, h, S, W/h)
        found = None
        if find:
            logits = q @ k.transpose(-1, -2)  # (P, h, L, S), unscaled
            found = logits.amax(-1).mean(1) / math.sqrt(q.shape[-1])  # (P, L)
        att = F.scaled_dot_product_attention(q, k, v)
        x = x + self.cross_out(att.transpose(1, 2).reshape(p, n, w))
        return x + self.ffn(self.norm3(x)), found


class ShapesReferee(nn.Module):
    """Match logits of (image, text) pairs; see the module docstring."""

    def __init__(self, config: RefereeConfig):
        super().__init__()
        self.config = config
        c, w = config.stem_channels, config.width
        self.stem = nn.Sequential(
            nn.Conv2d(5, c, 4, stride=2, padding=1), nn.GELU(),  # (N, c, 32, 32)
            nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.GELU(),  # (N, 2c, 16, 16)
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * c, w, 4, stride=2, padding=1))  # (N, W, 8, 8)
        for conv in self.stem[::2]:  # He init: torch's default shrinks the signal a layer,
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # and its biases then
            nn.init.zeros_(conv.bias)  # drowned the image (training stuck at all-negative)
        # the stem's output is normalised a token before the position is added: unnormalised,
        # its small start scale left the image drowned by the position and training stuck at
        # the all-negative answer
        self.patch_norm = nn.LayerNorm(w)
        self.patch_pos = nn.Parameter(_sine_grid(config.grid, w))
        self.registers = nn.Parameter(torch.randn(config.registers, w) * 0.02)
        self.image_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(w, config.heads, config.ffn_mult * w, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(config.image_layers))
        self.image_norm = nn.LayerNorm(w)
        self.words = nn.Embedding(3 + len(config.vocabulary), w)
        # GPT's 0.02: at torch's N(0, 1) the words' own embedding dominated the residual
        # stream, what the text read from the image hardly moved the logit, and training
        # stayed at the all-negative answer
        nn.init.normal_(self.words.weight, std=0.02)
        self.word_pos = nn.Parameter(torch.randn(1 + config.max_words, w) * 0.02)
        self.text_layers = nn.ModuleList(TextLayer(w, config.heads, config.ffn_mult * w)
                                         for _ in range(config.text_layers))
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.GELU(), nn.Linear(w, 1))
        self.local_weight = nn.Parameter(torch.tensor(1.0))

    def encode_images(self, images: Tensor) -> Tensor:
        """The image memory (N, grid * grid + R, W) of images (N, 3, H, W) in [-1, 1];
        images of another size are resized to `config.image_size` (bilinear, antialiased)."""
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear",
                                   antialias=True, align_corners=False)
        n = len(images)
        ramp = torch.linspace(-1, 1, size, device=images.device, dtype=images.dtype)
        coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="ij")).expand(n, 2, size, size)
        x = self.stem(torch.cat([images, coords], 1)).flatten(2).transpose(1, 2)  # (N, 64, W)
        x = torch.cat([self.patch_norm(x) + self.patch_pos, self.registers.expand(n, -1, -1)], 1)
        for layer in self.image_layers:
            x = layer(x)
        return self.image_norm(x)  # (N, S, W)

    def match(self, memory: Tensor, ids: Tensor, pairs: Tensor) -> Tensor:
        """(P,) logits of pairs (P, 2) of (image row, text row): text ids (T, L) read
        against image memories (N, S, W)."""
        length = int((ids != PAD).sum(1).max())  # columns past every text's end: all PAD
        ids = ids[pairs[:, 1], :length]  # (P, l)
        keep = (ids != PAD)[:, None, None, :]  # (P, 1, 1, l)
        x = self.words(ids) + self.word_pos[:length]  # (P, l, W)
        first, *rest = self.text_layers
        x, found = first(x, first.memory_kv(memory)[pairs[:, 0]], keep, find=True)
        for layer in rest:
            x, _ = layer(x, layer.memory_kv(memory)[pairs[:, 0]], keep)
        words = keep[:, 0, 0, 1:].float()  # (P, l - 1): the words, not CLS
        local = (found[:, 1:] * words).sum(1) / words.sum(1).clamp(min=1)  # (P,)
        return self.head(x[:, 0]).squeeze(-1) + self.local_weight * local  # (P,)

    def forward(self, images: Tensor, texts: list[str],
                pairs: Tensor | None = None) -> Tensor:
        """Match logits.

        Args:
            images: (N, 3, H, W) in [-1, 1].
            texts: T texts.
            pairs: (P, 2) (image index, text index) rows; None pairs image k with text k
                (N == T).

        Returns:
            (P,) logits (N without pairs); > 0 says match.
        """
        if pairs is None:
            if len(images) != len(texts):
                raise ValueError(f"got {len(images)} images and {len(texts)} texts; pair them "
                                 "one to one or pass pairs")
            pairs = torch.arange(len(texts)).unsqueeze(1).expand(-1, 2)
        memory = self.encode_images(images)
        ids = token_ids(self.config, texts).to(images.device)
        return self.match(memory, ids, pairs.to(images.device))
