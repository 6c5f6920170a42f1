"""DPT's discriminative losses (Qu et al., CVPR 2024, arXiv 2403.04321).

Global matching (eq. 3-4): `matching_scores` and `MatchingLoss`.
Local grounding (eq. 5-7): `GroundingMatcher` assigns queries to objects (the referred
one's query is eq. 5's choice) and `GroundingCriterion` returns one unweighted loss per term.
Weights are applied by the caller in one visible line, e.g.::

    losses, indices = criterion(outputs, targets)
    loss = sum(DEFAULT_GROUNDING_WEIGHTS[k] * v for k, v in losses.items())
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou
from .gather import gather_batch

# Weights l0..l3 of eq. 7. The paper does not print them; L1 5 and GIoU 2 are DETR's
# (Carion et al. 2020), the contrastive term 1 as MDETR's alignment loss (Kamath et al. 2021).
# The probability term is 5, not DETR's 1: on Shapes, choosing the referred object is the slow
# part, and weight 5 raised the choice from 0.59 to 0.68 at equal steps (docs/dpt-shapes.md).
DEFAULT_GROUNDING_WEIGHTS: dict[str, float] = {
    "loss_prob": 5.0,
    "loss_l1": 5.0,
    "loss_giou": 2.0,
    "loss_contrastive": 1.0,
}


def matching_scores(query_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    """s(z, y) = max_i cos(text(y), h_i): the best of the M matching queries (eq. 3).

    Args:
        query_embeds: (B, M, D) matching queries projected into the text space.
        text_embeds: (T, D) text embeddings.

    Returns:
        (B, T) scores in [-1, 1]: entry (b, t) scores image b against text t.
    """
    if query_embeds.ndim != 3 or text_embeds.ndim != 2:
        raise ValueError(f"expected query_embeds (B, M, D) and text_embeds (T, D), got "
                         f"{tuple(query_embeds.shape)} and {tuple(text_embeds.shape)}")
    if query_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(f"embedding sizes differ: {query_embeds.shape[-1]} vs "
                         f"{text_embeds.shape[-1]}")
    h = F.normalize(query_embeds, dim=-1)
    y = F.normalize(text_embeds, dim=-1)
    cos = torch.einsum("bmd,td->btm", h, y)  # (B, T, M)
    return cos.amax(dim=-1)


class MatchingLoss(nn.Module):
    """Symmetric InfoNCE over the batch with a learnable temperature (eq. 4).

    Image i's positive is text i; the other texts of the batch are negatives. Hard
    negatives (K per image: captions that alter one thing of caption i) are pooled over the
    batch, as in NegCLIP, and added as B*K extra columns of the image-to-text logits only:
    they are texts without an image, so they have no row in the text-to-image direction.

    The temperature is log-parameterised like CLIP's logit_scale: init 1/0.07, scale
    clamped at 100.

    With `global_batch=True` every process computes the loss of the global batch (all
    processes' images, captions and hard negatives, gathered by `gather.gather_batch` with the
    gradient to the local rows), so the negatives grow with the number of processes and N
    processes of batch B give the loss and, after DDP's average, the gradients of one process
    of batch N*B. Across gradient-accumulation micro-steps the batch stays the micro-step's.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_scale = max_scale

    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.max_scale)

    def get_logits(self, query_embeds: Tensor, text_embeds: Tensor,
                   negative_text_embeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scaled matching scores in both directions.

        Args:
            query_embeds: (B, M, D) matching queries of each image.
            text_embeds: (B, D) caption of each image (text i belongs to image i).
            negative_text_embeds: (B, K, D) hard negatives of each caption, or None.

        Returns:
            logits_per_image: (B, B + B*K), or (B, B) without negatives; columns are the B
                captions then the negatives flattened image-major (image j's k-th
                negative at column B + j*K + k).
            logits_per_text: (B, B).
        """
        batch = query_embeds.shape[0]
        if text_embeds.shape[0] != batch:
            raise ValueError(f"need one caption per image: {batch} images, "
                             f"{text_embeds.shape[0]} captions")
        scale = self.scale()
        sim = matching_scores(query_embeds, text_embeds)  # (B, B)
        logits_per_text = scale * sim.T
        if negative_text_embeds is None:
            return scale * sim, logits_per_text
        if negative_text_embeds.ndim != 3 or negative_text_embeds.shape[0] != batch:
            raise ValueError(f"negative_text_embeds must be (B={batch}, K, D), got "
                             f"{tuple(negative_text_embeds.shape)}")
        neg = matching_scores(query_embeds, negative_text_embeds.flatten(0, 1))  # (B, B*K)
        return scale * torch.cat([sim, neg], dim=1), logits_per_text

    def forward(self, query_embeds: Tensor, text_embeds: Tensor,
                negative_text_embeds: Tensor | None = None, global_batch: bool = False) -> Tensor:
        """Mean of the image-to-text and text-to-image cross-entropies (a scalar).

        A batch may hold the same caption twice (small worlds repeat captions). Every column
        whose text equals image i's caption is a positive of row i, and the target spreads
        evenly over them (soft-target cross-entropy); with distinct texts this is the usual
        one-hot InfoNCE. Texts count as equal when their embeddings are identical, which a
        frozen text encoder guarantees for identical strings.

        `global_batch`: the loss of all processes' batches together (see the class docstring).
        """
        if global_batch:
            query_embeds, text_embeds = gather_batch(query_embeds), gather_batch(text_embeds)
            if negative_text_embeds is not None:
                negative_text_embeds = gather_batch(negative_text_embeds)
        logits_per_image, logits_per_text = self.get_logits(
            query_embeds, text_embeds, negative_text_embeds)
        columns = text_embeds if negative_text_embeds is None else torch.cat(
            [text_embeds, negative_text_embeds.flatten(0, 1)])  # (B + B*K, D)
        positive = (text_embeds[:, None, :] == columns[None, :, :]).all(-1)  # (B, B + B*K)
        positive[:, :text_embeds.shape[0]].fill_diagonal_(True)
        target_i = positive.to(logits_per_image.dtype)
        target_t = positive[:, :text_embeds.shape[0]].T.to(logits_per_text.dtype)  # (B, B)
        return (F.cross_entropy(logits_per_image, target_i / target_i.sum(1, keepdim=True))
                + F.cross_entropy(logits_per_text, target_t / target_t.sum(1, keepdim=True))) / 2

    def candidates(self, scores: Tensor, texts: Tensor, n_batch: int,
                   global_batch: bool = False) -> Tensor:
        """InfoNCE over each image's own candidate texts, every score read under its own text.

        Under per-candidate conditioning ("each") s(z_b, y) costs a U-Net pass per (b, y), so
        the loss sees only the pairs that were computed: image b against its caption, its K
        hard negatives and the captions of images b-1 .. b-R (R = `n_batch`, `torch.roll`).
        The rolled columns give the text-to-image direction too: caption j against images
        j, j+1 .. j+R (image j+r scored caption j in its column K+r). With R = 0 only the
        image-to-text direction is trained. Repeated captions are positives, as in `forward`.

        Args:
            scores: (B, C) s(z_b, y_bc), C = 1 + K + R, column 0 the caption.
            texts: (B, C, D) text(y_bc).
            n_batch: R, the rolled in-batch captions at the end of each row.
            global_batch: the scores and texts of all processes are gathered and the loss is
                the global batch's; the rolled columns must then hold the captions of the
                global batch's images b-1 .. b-R (`gather.previous_rows`), so that image
                b+r's column K+r, on this process or the next, scored caption b. The
                candidates per image stay 1 + K + R: more would cost more U-Net passes.

        Returns:
            the mean of the two cross-entropies (one without in-batch columns), a scalar.
        """
        if global_batch:
            scores, texts = gather_batch(scores), gather_batch(texts.detach())
        batch, cols = scores.shape
        if texts.shape[:2] != scores.shape or not 0 <= n_batch < cols:
            raise ValueError(f"need texts (B, C, D) for scores (B, C) = {tuple(scores.shape)} "
                             f"and 0 <= n_batch < C, got {tuple(texts.shape)} and {n_batch}")
        scale = self.scale()
        positive = (texts == texts[:, :1]).all(-1).to(scores.dtype)  # column 0 always
        loss_i = F.cross_entropy(scale * scores, positive / positive.sum(1, keepdim=True))
        if n_batch == 0:
            return loss_i
        first, rows = cols - n_batch - 1, torch.arange(batch, device=scores.device)
        captions = texts[:, 0]
        shifted = [(rows + r) % batch for r in range(1, n_batch + 1)]
        logits_t = scale * torch.stack(
            [scores[:, 0]] + [scores[idx, first + r] for r, idx in enumerate(shifted, 1)], 1)
        same = torch.stack([torch.ones_like(rows, dtype=torch.bool)]
                           + [(captions[idx] == captions).all(-1) for idx in shifted], 1)
        target_t = same.to(scores.dtype)
        loss_t = F.cross_entropy(logits_t, target_t / target_t.sum(1, keepdim=True))
        return (loss_i + loss_t) / 2


class GroundingMatcher(nn.Module):
    """Assigns queries to the scene's objects; the referred object's query is eq. 5's choice.

    cost(j, o) = cost_l1 * |b_j - b_o|_1 - cost_giou * GIoU(b_j, b_o), and for the referred
    object also - cost_prob * p_j, with p_j = sigmoid(logit_j). With only the referred object
    given this is eq. 5's argmin; with every object of the scene given, the assignment is
    one-to-one (Hungarian, as DETR), so each query learns to hold one object and the
    probability learns which one the expression means.
    """

    def __init__(self, cost_prob: float = 1.0, cost_l1: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_prob == 0 and cost_l1 == 0 and cost_giou == 0:
            raise ValueError("all matcher costs are 0")
        self.cost_prob, self.cost_l1, self.cost_giou = cost_prob, cost_l1, cost_giou

    @torch.no_grad()
    def forward(self, pred_logits: Tensor, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Match each image's referred object to one query.

        Args:
            pred_logits: (B, Q) grounding-probability logits per query.
            pred_boxes: (B, Q, 4) predicted boxes, cxcywh in [0, 1].
            target_boxes: (B, 4) the referred object's box, cxcywh in [0, 1].

        Returns:
            (B,) long: index of the matched query in each image.
        """
        if target_boxes.shape != (pred_logits.shape[0], 4):
            raise ValueError(f"target_boxes must be (B, 4), got {tuple(target_boxes.shape)}")
        return self.assign(pred_logits, pred_boxes, target_boxes[:, None, :])[0]

    @torch.no_grad()
    def assign(self, pred_logits: Tensor, pred_boxes: Tensor, object_boxes: Tensor,
               object_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One query per object, the referred object in slot 0 of each image.

        Args:
            pred_logits: (B, Q) logits; pred_boxes: (B, Q, 4) cxcywh.
            object_boxes: (B, O, 4) cxcywh, the referred object first; O <= Q.
            object_mask: (B, O) bool, False on padding slots (slot 0 must be True).

        Returns:
            ref_query: (B,) the referred object's query; batch_idx, query_idx (P,) and
            boxes (P, 4): every real object with its query, P = object_mask.sum().
        """
        batch, num_queries = pred_logits.shape
        if pred_boxes.shape != (batch, num_queries, 4):
            raise ValueError(f"pred_boxes must be (B, Q, 4) matching pred_logits (B, Q); got "
                             f"{tuple(pred_boxes.shape)} and {tuple(pred_logits.shape)}")
        if object_boxes.ndim != 3 or object_boxes.shape[0] != batch or object_boxes.shape[-1] != 4:
            raise ValueError(f"target boxes must be (B={batch}, 4) or (B, O, 4), got "
                             f"{tuple(object_boxes.shape)}")
        if object_boxes.shape[1] > num_queries:
            raise ValueError(f"{object_boxes.shape[1]} objects per image but only "
                             f"{num_queries} grounding queries")
        if object_mask is None:
            object_mask = torch.ones(object_boxes.shape[:2], dtype=torch.bool)
        n_obj = object_boxes.shape[1]
        l1 = (pred_boxes[:, :, None, :] - object_boxes[:, None, :, :]).abs().sum(-1)  # (B, Q, O)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes.flatten(0, 1)),
                                   box_cxcywh_to_xyxy(object_boxes.flatten(0, 1)))
        idx = torch.arange(batch, device=pred_boxes.device)
        giou = giou.view(batch, num_queries, batch, n_obj)[idx, :, idx]  # (B, Q, O)
        cost = self.cost_l1 * l1 - self.cost_giou * giou
        cost[:, :, 0] -= self.cost_prob * pred_logits.sigmoid()
        cost = cost.float().cpu().numpy()
        mask = object_mask.cpu().numpy()
        ref, b_idx, q_idx, o_idx = [], [], [], []
        for b in range(batch):
            real = mask[b].nonzero()[0]
            rows, cols = linear_sum_assignment(cost[b][:, real])  # rows: queries
            ref.append(int(rows[list(cols).index(0)]))
            b_idx += [b] * len(rows)
            q_idx += rows.tolist()
            o_idx += real[cols].tolist()
        device = pred_boxes.device
        b_t, q_t, o_t = (torch.tensor(v, dtype=torch.long, device=device)
                         for v in (b_idx, q_idx, o_idx))
        return torch.tensor(ref, dtype=torch.long, device=device), b_t, q_t, object_boxes[b_t, o_t]


class GroundingCriterion(nn.Module):
    """Unweighted grounding losses of eq. 7, one `loss_*` method per term.

    `loss_prob` reads the paper's -l0 * p as binary cross-entropy on the query logits, the
    matched query positive and all others negative (mean over B*Q): a standard, stable
    form of "raise p on the matched query" that also lowers it elsewhere.
    `loss_contrastive` is eq. 6: InfoNCE of the expression's text embedding against the
    semantic vectors of all queries of its own image, cosine logits over a fixed temperature.
    """

    def __init__(self, matcher: GroundingMatcher, temperature: float = 0.07):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.matcher = matcher
        self.temperature = temperature

    def loss_prob(self, outputs: dict, targets: dict, indices: Tensor) -> Tensor:
        logits = outputs["ground_logits"]  # (B, Q)
        labels = F.one_hot(indices, logits.shape[1]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def loss_l1(self, outputs: dict, matched: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """L1 over the 4 coordinates, mean over matched objects."""
        b_idx, q_idx, boxes = matched
        return (outputs["ground_boxes"][b_idx, q_idx] - boxes).abs().sum(-1).mean()

    def loss_giou(self, outputs: dict, matched: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """1 - GIoU of matched pairs, mean over matched objects."""
        b_idx, q_idx, boxes = matched
        pred = box_cxcywh_to_xyxy(outputs["ground_boxes"][b_idx, q_idx])
        giou = torch.diag(generalized_box_iou(pred, box_cxcywh_to_xyxy(boxes)))
        return (1 - giou).mean()

    def loss_contrastive(self, outputs: dict, targets: dict, indices: Tensor) -> Tensor:
        o = F.normalize(outputs["ground_embeds"], dim=-1)  # (B, Q, D)
        y = F.normalize(targets["text_embeds"], dim=-1)  # (B, D)
        logits = torch.einsum("bqd,bd->bq", o, y) / self.temperature  # (B, Q)
        return F.cross_entropy(logits, indices)

    def forward(self, outputs: dict, targets: dict) -> tuple[dict[str, Tensor], Tensor]:
        """Match, then compute every term.

        Args:
            outputs: "ground_logits" (B, Q), "ground_boxes" (B, Q, 4) cxcywh,
                "ground_embeds" (B, Q, D) semantic vectors o_j.
            targets: "boxes" (B, 4) cxcywh of the referred object, "text_embeds" (B, D)
                embedding of the referring expression; optionally "object_boxes" (B, O, 4)
                with the referred object in slot 0 and "object_mask" (B, O), when the
                scene's other objects are known: their boxes are then supervised too.

        Returns:
            losses: {"loss_prob", "loss_l1", "loss_giou", "loss_contrastive"}, unweighted
                scalars (see DEFAULT_GROUNDING_WEIGHTS); the box terms average over every
                supervised object.
            indices: (B,) the matched query of each image.
        """
        objects = targets.get("object_boxes")
        if objects is None:
            objects = targets["boxes"][:, None, :]
        indices, *matched = self.matcher.assign(outputs["ground_logits"], outputs["ground_boxes"],
                                                objects, targets.get("object_mask"))
        losses = {
            "loss_prob": self.loss_prob(outputs, targets, indices),
            "loss_l1": self.loss_l1(outputs, matched),
            "loss_giou": self.loss_giou(outputs, matched),
            "loss_contrastive": self.loss_contrastive(outputs, targets, indices),
        }
        return losses, indices
