"""The DPT objective of stages 1 and 2: U-Net features -> adapter -> matching and grounding
losses (eq. 8 of arXiv 2403.04321), plus the optional denoising term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.config import DPTConfig
from ..model.features import tap_with_output
from ..model.gather import previous_rows, process_group, rolled_rows
from ..model.heads import DPTHeads, unet_features
from ..model.losses import DEFAULT_GROUNDING_WEIGHTS, GroundingCriterion, GroundingMatcher
from ..model.score import matching_text
from ..model.text import EncodedTexts
from .settings import TrainSettings


class DPTObjective(nn.Module):
    """U-Net features -> adapter -> unweighted DPT losses, plus the weighted total.

    One module holds the U-Net and the heads so accelerate (DDP) wraps the whole step.
    With `settings.global_negatives` and several processes the matching loss is the global
    batch's (`MatchingLoss`, `gather.py`): under a shared condition every process's captions
    and hard negatives are negatives of every image; under "each" the rolled in-batch captions
    come from the global batch and the score matrix is gathered, so N processes of batch B
    train as one of batch N*B, with the same 1 + K + R candidates per image.
    """

    def __init__(self, unet: nn.Module, heads: DPTHeads, config: DPTConfig,
                 settings: TrainSettings):
        super().__init__()
        self.unet, self.heads, self.config = unet, heads, config
        self.criterion = GroundingCriterion(GroundingMatcher())
        self.weights = {"match": settings.match_weight, "ground": settings.ground_weight,
                        "mse": settings.mse_weight}
        self.unet_trains = settings.stage != "probe"
        self.batch_negatives = settings.batch_negatives
        self.global_negatives = settings.global_negatives

    def forward(self, noisy: Tensor, t: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses for one batch.

        Args:
            noisy: (B, C, h, w) noised latents z_t.
            t: (B,) timesteps.
            inputs: `prepare_inputs`'s text and target tensors (see there).
        """
        losses: dict[str, Tensor] = {}
        if self.config.condition == "each":
            out, feats = self._match_each(noisy, t, inputs, losses)
        else:
            out, feats = self._match_shared(noisy, t, inputs, losses)
        ground = self._grounding(out, feats, noisy, t, inputs)
        losses.update(ground)
        total = self.weights["match"] * losses["match"]
        total = total + self.weights["ground"] * sum(
            DEFAULT_GROUNDING_WEIGHTS[k] * v for k, v in ground.items())
        if "mse" in losses:
            total = total + self.weights["mse"] * losses["mse"]
        losses["loss"] = total
        return losses

    def _unet_grad(self):
        return torch.set_grad_enabled(torch.is_grad_enabled() and self.unet_trains)

    def _match_shared(self, noisy: Tensor, t: Tensor, inputs: dict[str, Tensor],
                      losses: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """One feature pass under `inputs["states"]` scores every text of the batch."""
        with self._unet_grad():
            if self.weights["mse"] > 0 and self.config.condition == "caption":
                feats, eps = tap_with_output(self.unet, self.config.block, noisy, t,
                                             inputs["states"])
                losses["mse"] = F.mse_loss(eps.float(), inputs["target"])
            else:
                feats = unet_features(self.unet, self.config, noisy, t, inputs["states"])
                if self.weights["mse"] > 0:  # a separate caption-conditioned pass
                    eps = self.unet(noisy, t, inputs["caption_states"]).sample
                    losses["mse"] = F.mse_loss(eps.float(), inputs["target"])
        out = self.heads(feats, t)
        losses["match"] = self.heads.matching(out["match_embeds"], *self._match_texts(inputs),
                                              global_batch=self._global())
        return out, feats

    def _global(self) -> bool:
        """Whether the matching loss reads the global batch (several processes, asked for)."""
        return self.global_negatives and process_group()[1] > 1

    def _match_each(self, noisy: Tensor, t: Tensor, inputs: dict[str, Tensor],
                    losses: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Every candidate text scored on features made under itself (condition "each").

        Image b meets its caption, its K hard negatives and the captions of images
        b-1 .. b-R (R = batch_negatives), one early-exit U-Net pass each; with the denoising
        term on, the caption's pass runs to the end and gives the noise prediction too.
        Returns the outputs and features a grounding that shares them reads: an extra
        empty-prompt pass's under ground_condition "empty", else the caption pass's.
        """
        n, k = inputs["negative_embeds"].shape[:2]
        caption_text, negative_text = self._match_texts(inputs)
        rolled_text, rolled_tokens = self._rolled_captions(inputs, caption_text)
        texts = torch.cat([caption_text[:, None], negative_text, rolled_text], 1)  # (B, C, D)
        tokens = inputs["caption_tokens"]
        others = torch.cat([inputs["negative_tokens"], rolled_tokens], 1)  # (B, C-1, L, D)
        c = texts.shape[1]
        with self._unet_grad():
            if self.weights["mse"] > 0:
                first, eps = tap_with_output(self.unet, self.config.block, noisy, t, tokens)
                losses["mse"] = F.mse_loss(eps.float(), inputs["target"])
            else:
                first = unet_features(self.unet, self.config, noisy, t, tokens)
            rest = unet_features(self.unet, self.config, noisy.repeat_interleave(c - 1, 0),
                                 t.repeat_interleave(c - 1), others.flatten(0, 1))
            feats = torch.cat([first[:, None], rest.unflatten(0, (n, c - 1))], 1).flatten(0, 1)
        out = {key: value.unflatten(0, (n, c))
               for key, value in self.heads(feats, t.repeat_interleave(c)).items()}
        h = F.normalize(out["match_embeds"], dim=-1)  # (B, C, M, D)
        scores = torch.einsum("bcmd,bcd->bcm", h, F.normalize(texts, dim=-1)).amax(-1)
        losses["match"] = self.heads.matching.candidates(scores, texts, rolled_text.shape[1],
                                                         global_batch=self._global())
        if self.config.ground_condition == "empty":
            with self._unet_grad():
                first = unet_features(self.unet, self.config, noisy, t, inputs["states"])
            return self.heads(first, t), first
        return {key: value[:, 0] for key, value in out.items()}, first

    def _rolled_captions(self, inputs: dict[str, Tensor],
                         caption_text: Tensor) -> tuple[Tensor, Tensor]:
        """text(y) (B, R, D) and token states (B, R, L, D) of the captions of images b-1 .. b-R:
        of this batch (`torch.roll`), or of the global batch when `_global()`, the rows before
        this process's first image read from the previous process (their text(y) made here)."""
        tokens, n = inputs["caption_tokens"], caption_text.shape[0]
        if not self._global():
            count = min(self.batch_negatives, n - 1)
            return (rolled_rows(caption_text, caption_text[n - count:], count),
                    rolled_rows(tokens, tokens[n - count:], count))
        count = min(self.batch_negatives, n * process_group()[1] - 1)
        prev = {key: previous_rows(inputs[key], count)
                for key in ("caption_embeds", "caption_tokens", "caption_mask")}
        prev_text = prev["caption_embeds"]
        if self.heads.adapter.text_head is not None:
            prev_text = matching_text(self.heads, EncodedTexts(
                prev["caption_embeds"], prev["caption_tokens"], prev["caption_mask"]))
        return (rolled_rows(caption_text, prev_text, count),
                rolled_rows(tokens, prev["caption_tokens"], count))

    def _match_texts(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """text(y) of the captions (B, D) and of their hard negatives (B, K, D)."""
        if self.heads.adapter.text_head is None:
            return inputs["caption_embeds"], inputs["negative_embeds"]
        n, k = inputs["negative_embeds"].shape[:2]
        texts = matching_text(self.heads, EncodedTexts(
            torch.cat([inputs["caption_embeds"], inputs["negative_embeds"].flatten(0, 1)]),
            torch.cat([inputs["caption_tokens"], inputs["negative_tokens"].flatten(0, 1)]),
            torch.cat([inputs["caption_mask"], inputs["negative_mask"].flatten(0, 1)])))
        return texts[:n], texts[n:].view(n, k, -1)

    def _grounding(self, out: dict[str, Tensor], feats: Tensor, noisy: Tensor, t: Tensor,
                   inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Grounding losses; `out` and `feats` are the matching pass's outputs and features."""
        has = inputs["has_ref"]  # (B,) bool
        if not bool(has.any()):
            zero = out["ground_logits"].sum() * 0.0
            return {k: zero for k in DEFAULT_GROUNDING_WEIGHTS}
        if self.config.ground_condition == "expression":  # a pass conditioned on the expression
            with self._unet_grad():
                ref_feats = unet_features(self.unet, self.config, noisy[has], t[has],
                                          inputs["ref_states"][has])
            ground_out = self.heads.ground(ref_feats, t[has], inputs["ref_tokens"][has],
                                           inputs["ref_mask"][has])
        elif self.heads.adapter.ground_text:  # the matching pass's features, read with the words
            ground_out = self.heads.ground(feats[has], t[has],
                                           inputs["ref_tokens"][has], inputs["ref_mask"][has])
        else:
            ground_out = {k: v[has] for k, v in out.items() if k.startswith("ground_")}
        targets = {"boxes": inputs["boxes"][has], "text_embeds": inputs["ref_embeds"][has],
                   "object_boxes": inputs["object_boxes"][has],
                   "object_mask": inputs["object_mask"][has]}
        losses, _ = self.criterion(ground_out, targets)
        return losses
