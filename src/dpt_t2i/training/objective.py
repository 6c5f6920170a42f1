"""The DPT objective of stages 1 and 2: U-Net features -> adapter -> matching and grounding
losses (eq. 8 of arXiv 2403.04321), plus the optional denoising term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.config import DPTConfig
from ..model.features import tap_with_output
from ..model.heads import DPTHeads, unet_features
from ..model.losses import DEFAULT_GROUNDING_WEIGHTS, GroundingCriterion, GroundingMatcher
from ..model.score import matching_text
from ..model.text import EncodedTexts
from .settings import TrainSettings


class DPTObjective(nn.Module):
    """U-Net features -> adapter -> unweighted DPT losses, plus the weighted total.

    One module holds the U-Net and the heads so accelerate (DDP) wraps the whole step.
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
        losses["match"] = self.heads.matching(out["match_embeds"], *self._match_texts(inputs))
        return out, feats

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
        rolls = range(1, min(self.batch_negatives, n - 1) + 1)
        caption_text, negative_text = self._match_texts(inputs)
        texts = torch.cat([caption_text[:, None], negative_text,
                           *[caption_text.roll(r, 0)[:, None] for r in rolls]], 1)  # (B, C, D)
        tokens = inputs["caption_tokens"]
        others = torch.cat([inputs["negative_tokens"],
                            *[tokens.roll(r, 0)[:, None] for r in rolls]], 1)  # (B, C-1, L, D)
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
        losses["match"] = self.heads.matching.candidates(scores, texts, len(rolls))
        if self.config.ground_condition == "empty":
            with self._unet_grad():
                first = unet_features(self.unet, self.config, noisy, t, inputs["states"])
            return self.heads(first, t), first
        return {key: value[:, 0] for key, value in out.items()}, first

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
