"""The DPT matching score s(z_t, y) = max_i cos(text(y), h_i) (eq. 3 of arXiv 2403.04321).

One object for every reader of the score:
- self-correction (`generation.guidance.SelfCorrection`): `score(x, t, texts)`, (B,) scores
  of B noisy latents against their own B texts, differentiable in the latents;
- the referee (`generation.referee.dpt_scorer`): images -> `latents.encode_latents` ->
  `latents.Noiser` -> the same call;
- evaluate-disc (`eval.discriminative.DiscriminativeScorer`): `pair_scores` / `matrix`, with
  the empty-condition features computed once per image;
- training reads the heads directly for its InfoNCE loss, with the same `matching_text`.

The U-Net runs only up to the adapter's block (the early-exit tap) under the text condition
the DPT config names: "empty" -> the empty prompt's states, "caption" and "each" -> the
scored text's own states (the authors' models; eq. 1 of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .config import DPTConfig
from .features import tap_with_output
from .heads import DPTHeads, unet_features
from .losses import matching_scores
from .text import EncodedTexts, encode_texts

CHUNK = 128  # latents per U-Net call when scoring without gradients (evaluate-disc)


def matching_text(heads: DPTHeads, texts: EncodedTexts) -> Tensor:
    """text(y) (N, D): the pooled state, or the adapter's `TextHead` reading of the tokens.

    Args:
        heads: `DPTHeads` (or `OfficialHeads`, whose text(y) is the pooled state).
        texts: from `text.encode_texts`.
    """
    return heads.adapter.text(texts.pooled, texts.hidden, texts.mask)


@dataclass
class MatchTexts:
    """What s(z, y) reads of N texts; `MatchScore.texts` makes them."""

    embeds: Tensor  # (N, D) text(y), float32
    states: Tensor  # (N, L, D) each text's own token states: the U-Net condition of
    # "caption" and "each"

    def __len__(self) -> int:
        return len(self.embeds)

    def __getitem__(self, index) -> MatchTexts:
        """The rows `index` selects (a slice, a list or a tensor of row indices)."""
        return MatchTexts(self.embeds[index], self.states[index])

    @staticmethod
    def cat(parts: Sequence[MatchTexts]) -> MatchTexts:
        return MatchTexts(torch.cat([p.embeds for p in parts]),
                          torch.cat([p.states for p in parts]))


class MatchScore:
    """s(z_t, y) of a DPT model (see the module docstring).

    Args:
        bundle: the model (`io.bundle.ModelBundle`): its U-Net (LoRA fused or attached), text
            encoder and tokenizer.
        heads: the DPT heads (`DPTHeads`, or `OfficialHeads` for the authors' adapter).
        config: the DPT config: its block and its `condition`.
        early_exit: stop the U-Net after the adapter's block (default); False runs it whole,
            as the authors' sampler does (for cost comparisons).
    """

    def __init__(self, bundle, heads: DPTHeads, config: DPTConfig, early_exit: bool = True):
        self.unet: nn.Module = bundle.unet
        self.text_encoder, self.tokenizer = bundle.text_encoder, bundle.tokenizer
        self.heads, self.config, self.early_exit = heads, config, early_exit
        self._empty: Tensor | None = None  # (1, L, D), encoded on first use

    def texts(self, texts: Sequence[str]) -> MatchTexts:
        """text(y) and token states of N texts, detached (constants of the score).

        text(y) is computed in the caller's grad mode: PyTorch's Transformer layers (the
        adapter's `TextHead`) take a fused path without grad that differs from the other in
        the last bits, and each reader keeps the mode it always had (self-correction builds
        its texts with grad on, the referee and evaluate-disc without).
        """
        encoded = encode_texts(self.text_encoder, self.tokenizer, texts)
        return MatchTexts(matching_text(self.heads, encoded).detach(), encoded.hidden)

    def empty_states(self) -> Tensor:
        """(1, L, D) states of the empty prompt."""
        if self._empty is None:
            self._empty = encode_texts(self.text_encoder, self.tokenizer, [""]).hidden
        return self._empty

    def condition(self, texts: MatchTexts) -> Tensor:
        """(N, L, D) the U-Net's text condition while it reads latents scored against texts."""
        if self.config.reads_text:
            return texts.states
        return self.empty_states().expand(len(texts), -1, -1)

    def features(self, latents: Tensor, t: Tensor | int, states: Tensor) -> Tensor:
        """F_t (B, d, h', w') float32 of the config's block; keeps the graph.

        Args:
            latents: (B, C, h, w) noisy latents z_t.
            t: a timestep tensor (scalar or (B,)) or an int.
            states: (B, L, D) the U-Net's text condition.
        """
        t = _timesteps(t, len(latents), latents.device)
        return unet_features(self.unet, self.config, latents.to(self.unet.dtype), t,
                             states.to(self.unet.dtype), early_exit=self.early_exit).float()

    def match_embeds(self, latents: Tensor, t: Tensor | int, states: Tensor) -> Tensor:
        """(B, M, D) the matching queries h_i of latents read under states (B, L, D)."""
        t = _timesteps(t, len(latents), latents.device)
        features = self.features(latents, t, states)
        return self.heads(features, t.reshape(-1).expand(len(latents)))["match_embeds"]

    def __call__(self, latents: Tensor, t: Tensor | int, texts: MatchTexts) -> Tensor:
        """(B,) s(z_b, y_b) of latents (B, C, h, w) against their own B texts; differentiable."""
        match = self.match_embeds(latents, t, self.condition(texts))  # (B, M, D)
        return torch.diagonal(matching_scores(match, texts.embeds.to(match.dtype)))

    def with_output(self, latents: Tensor, t: Tensor | int, texts: MatchTexts,
                    states: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) s(z_b, y_b) read under `states` and the U-Net's own prediction (B, C, h, w)
        from one whole pass: the score read on a sampler's own noise-prediction pass
        (`generation.guidance`, mode "shared"); differentiable in the latents.

        Args:
            latents: (B, C, h, w) noisy latents.
            t: a timestep tensor (scalar or (B,)) or an int.
            texts: the B texts scored.
            states: (B, L, D) the pass's text condition (the sampler's context for these
                rows), which must be what `condition(texts)` means for this config.
        """
        t = _timesteps(t, len(latents), latents.device)
        features, output = tap_with_output(self.unet, self.config.block,
                                           latents.to(self.unet.dtype), t,
                                           states.to(self.unet.dtype))
        match = self.heads(features.float(), t.reshape(-1).expand(len(latents)))["match_embeds"]
        return torch.diagonal(matching_scores(match, texts.embeds.to(match.dtype))), output

    @torch.no_grad()
    def pair_scores(self, latents: Tensor, timestep: int, texts: Sequence[str],
                    pairs: Sequence[tuple[int, int]]) -> Tensor:
        """(P,) s(z_i, y_j) of (latent index i, text index j) pairs, CHUNK latents a U-Net call.

        Under "empty" the features are computed once per latent, however many texts it meets;
        under "caption" and "each" once per pair (the features depend on the text).
        """
        # the texts and the empty prompt in one encoder call, as evaluate-disc has always
        # encoded them (a text's bits may depend on its batch: `text.encode_texts`)
        encoded = self.texts([*texts, ""])
        match_texts, empty = encoded[:-1], encoded.states[-1:]
        li = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        ti = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        if self.config.reads_text:
            return torch.cat([self(latents[li[j:j + CHUNK]], timestep,
                                   match_texts[ti[j:j + CHUNK]])
                              for j in range(0, len(pairs), CHUNK)])
        embeds = torch.cat([self.match_embeds(chunk, timestep, empty.expand(len(chunk), -1, -1))
                            for chunk in latents.split(CHUNK)])  # (N, M, D)
        # one pair at a time: the same arithmetic whatever the other pairs of the call are
        return torch.cat([matching_scores(embeds[li[j:j + 1]], match_texts.embeds[ti[j:j + 1]])[0]
                          for j in range(len(pairs))])

    def matrix(self, latents: Tensor, timestep: int, texts: Sequence[str]) -> Tensor:
        """(B, T) s(z_b, y_t) of B latents against T texts (see `pair_scores`)."""
        pairs = [(b, j) for b in range(len(latents)) for j in range(len(texts))]
        return self.pair_scores(latents, timestep, texts, pairs).view(len(latents), len(texts))


def _timesteps(t: Tensor | int, n: int, device: torch.device) -> Tensor:
    """A timestep tensor as given, or (n,) of an int."""
    return t if torch.is_tensor(t) else torch.full((n,), int(t), device=device)
