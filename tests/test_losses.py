import math

import pytest
import torch
import torch.nn.functional as F

from dpt_t2i.model.losses import (DEFAULT_GROUNDING_WEIGHTS, GroundingCriterion, GroundingMatcher,
                                  MatchingLoss, matching_scores)

# --- global matching -------------------------------------------------------------------

def test_matching_scores_is_max_cosine():
    text = torch.tensor([[1.0, 0.0, 0.0]])
    queries = torch.tensor([[[0.0, 1.0, 0.0], [3.0, 4.0, 0.0], [-1.0, 0.0, 0.0]]])  # best: 0.6
    scores = matching_scores(queries, text)
    assert scores.shape == (1, 1)
    assert scores.item() == pytest.approx(0.6)


def test_matching_scores_shape_and_reference():
    torch.manual_seed(0)
    queries, texts = torch.randn(2, 4, 8), torch.randn(3, 8)
    expected = F.cosine_similarity(queries[:, None, :, :], texts[None, :, None, :], dim=-1)
    assert torch.allclose(matching_scores(queries, texts), expected.amax(-1), atol=1e-6)


def test_infonce_equal_logits_is_log_batch():
    queries, texts = torch.ones(4, 2, 8), torch.ones(4, 8)
    assert MatchingLoss()(queries, texts).item() == pytest.approx(math.log(4), abs=1e-5)


def test_infonce_lower_when_diagonal_more_similar():
    torch.manual_seed(0)
    texts = torch.randn(4, 8)
    random_queries = torch.randn(4, 2, 8)
    aligned = random_queries.clone()
    aligned[:, 0] = texts  # each image's best query equals its own caption
    loss = MatchingLoss()
    assert loss(aligned, texts) < loss(random_queries, texts)


def test_logit_shapes_and_temperature():
    loss = MatchingLoss()
    assert loss.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    per_image, per_text = loss.get_logits(torch.randn(3, 2, 8), torch.randn(3, 8),
                                          torch.randn(3, 5, 8))
    assert per_image.shape == (3, 3 + 15) and per_text.shape == (3, 3)
    assert torch.allclose(per_image[:, :3], per_text.T)
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)
    assert loss.scale().item() == pytest.approx(100.0)


def test_hard_negative_identical_to_positive_raises_loss():
    torch.manual_seed(0)
    queries, texts = torch.randn(3, 2, 8), torch.randn(3, 8)
    loss = MatchingLoss()
    assert loss(queries, texts, texts[:, None, :].clone()) > loss(queries, texts)


def test_gradients_reach_temperature_and_inputs():
    queries = torch.randn(3, 2, 8, requires_grad=True)
    texts = torch.randn(3, 8, requires_grad=True)
    negatives = torch.randn(3, 2, 8, requires_grad=True)
    loss = MatchingLoss()
    loss(queries, texts, negatives).backward()
    for grad in (loss.logit_scale.grad, queries.grad, texts.grad, negatives.grad):
        assert grad is not None and grad.abs().sum() > 0


def test_matching_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="one caption per image"):
        MatchingLoss()(torch.randn(3, 2, 8), torch.randn(2, 8))


def _candidate_reference(scores, texts, n_batch, scale):
    """The per-candidate loss written out pair by pair (one-hot targets: distinct texts)."""
    batch, cols = scores.shape
    first = cols - n_batch - 1
    loss_i = sum(-F.log_softmax(scale * scores[b], 0)[0] for b in range(batch)) / batch
    if n_batch == 0:
        return loss_i
    loss_t = 0.0
    for j in range(batch):  # caption j: image j, then image j+r that met it in column first+r
        row = torch.stack([scores[j, 0]] + [scores[(j + r) % batch, first + r]
                                            for r in range(1, n_batch + 1)])
        loss_t = loss_t - F.log_softmax(scale * row, 0)[0]
    return (loss_i + loss_t / batch) / 2


@pytest.mark.parametrize("n_batch", [0, 1, 2])
def test_candidate_loss_matches_the_pairwise_definition(n_batch):
    torch.manual_seed(0)
    batch, k = 4, 2
    captions = torch.randn(batch, 8)
    texts = torch.cat([captions[:, None], torch.randn(batch, k, 8),
                       *[captions.roll(r, 0)[:, None] for r in range(1, n_batch + 1)]], 1)
    scores = torch.rand(batch, 1 + k + n_batch) * 2 - 1
    loss = MatchingLoss()
    expected = _candidate_reference(scores, texts, n_batch, loss.scale().item())
    assert loss.candidates(scores, texts, n_batch).item() == pytest.approx(expected.item(),
                                                                           rel=1e-5)


def test_candidate_loss_is_low_when_each_caption_wins_and_counts_repeats_as_positives():
    batch, k = 3, 2
    captions = torch.eye(batch, 8)
    texts = torch.cat([captions[:, None], torch.randn(batch, k, 8),
                       captions.roll(1, 0)[:, None]], 1)
    right = torch.full((batch, 1 + k + 1), -1.0)
    right[:, 0] = 1.0
    loss = MatchingLoss()
    assert loss.candidates(right, texts, 1) < 1e-3
    assert loss.candidates(-right, texts, 1) > 10
    # every image has one caption: its rolled column is a positive too, so the caption and
    # it share the target in both directions and scoring them equally costs log 2
    same = torch.ones(batch, 8)
    same_texts = torch.cat([same[:, None], torch.randn(batch, k, 8), same[:, None]], 1)
    flat = torch.zeros(batch, 1 + k + 1)
    flat[:, 1:1 + k] = -1.0
    assert loss.candidates(flat, same_texts, 1).item() == pytest.approx(math.log(2), abs=1e-4)
    with pytest.raises(ValueError, match="n_batch"):
        loss.candidates(flat, same_texts, 4)


# --- grounding -------------------------------------------------------------------------

def _outputs(boxes, logits=None, semantics=None):
    batch, queries = boxes.shape[:2]
    return {"ground_logits": torch.zeros(batch, queries) if logits is None else logits,
            "ground_boxes": boxes,
            "ground_embeds": torch.randn(batch, queries, 4) if semantics is None else semantics}


def test_matcher_picks_matching_box_when_probabilities_equal():
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.3, 0.3]]])
    assert GroundingMatcher()(torch.zeros(1, 3), boxes, target).tolist() == [1]


def test_matcher_picks_highest_probability_when_boxes_equal():
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]])
    boxes = torch.tensor([[0.4, 0.4, 0.3, 0.3]]).expand(2, 3, 4)
    logits = torch.tensor([[0.0, 0.0, 2.0], [3.0, -1.0, 0.0]])
    assert GroundingMatcher()(logits, boxes, target).tolist() == [2, 0]


def test_perfect_matched_prediction_gives_zero_box_losses():
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.4, 0.1]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2]],
                          [[0.3, 0.6, 0.4, 0.1], [0.9, 0.9, 0.1, 0.1]]])
    criterion = GroundingCriterion(GroundingMatcher())
    losses, indices = criterion(_outputs(boxes), {"boxes": target, "text_embeds": torch.randn(2, 4)})
    assert indices.tolist() == [1, 0]
    assert set(losses) == set(DEFAULT_GROUNDING_WEIGHTS)
    assert losses["loss_l1"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)


def test_assignment_is_one_to_one_over_the_scene_objects():
    # Query 1 sits on the referred object (slot 0) and query 2 on the other; query 0 is
    # nearest to neither. A third, padded slot must be ignored.
    boxes = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.2, 0.2, 0.2]]])
    objects = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.8, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    ref, b_idx, q_idx, matched = GroundingMatcher().assign(torch.zeros(1, 3), boxes, objects, mask)
    assert ref.tolist() == [1]
    order = q_idx.argsort()
    assert q_idx[order].tolist() == [1, 2]
    torch.testing.assert_close(matched[order], objects[0, :2])
    assert b_idx.tolist() == [0, 0]


def test_one_query_cannot_serve_two_objects():
    # Both objects lie nearest query 0; the assignment still gives each its own query, and
    # the referred object keeps the query whose probability is highest among equals.
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]])
    objects = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2]]])
    logits = torch.tensor([[0.0, -5.0, 5.0]])
    ref, _, q_idx, _ = GroundingMatcher().assign(logits, boxes, objects)
    assert len(set(q_idx.tolist())) == 2
    assert ref.tolist() == [0]


def test_every_object_counts_in_the_box_losses():
    # Referred object predicted exactly; the other object's query is off by 0.1 in x:
    # mean L1 over the two objects = 0.05, while the referred-only loss would be 0.
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.2, 0.2, 0.2]]])
    objects = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]]])
    targets = {"boxes": objects[:, 0], "text_embeds": torch.randn(1, 4)}
    alone, _ = GroundingCriterion(GroundingMatcher())(_outputs(boxes), targets)
    scene, indices = GroundingCriterion(GroundingMatcher())(
        _outputs(boxes), {**targets, "object_boxes": objects,
                          "object_mask": torch.tensor([[True, True]])})
    assert indices.tolist() == [0]
    assert alone["loss_l1"].item() == pytest.approx(0.0, abs=1e-6)
    assert scene["loss_l1"].item() == pytest.approx(0.05, abs=1e-6)
    assert scene["loss_giou"].item() > 0


def test_more_objects_than_queries_is_an_error():
    with pytest.raises(ValueError, match="3 objects per image but only 2"):
        GroundingMatcher().assign(torch.zeros(1, 2), torch.rand(1, 2, 4), torch.rand(1, 3, 4))


def test_box_losses_known_values():
    # Matched box shifted by 0.1 in x: L1 = 0.1; xyxy [0.1,0.4,0.3,0.6] vs [0.0,0.4,0.2,0.6]
    # -> IoU = 0.02/0.06 = 1/3, enclosing = union -> GIoU 1/3, loss 2/3.
    boxes = torch.tensor([[[0.2, 0.5, 0.2, 0.2]]])
    target = torch.tensor([[0.1, 0.5, 0.2, 0.2]])
    losses, _ = GroundingCriterion(GroundingMatcher())(
        _outputs(boxes), {"boxes": target, "text_embeds": torch.randn(1, 4)})
    assert losses["loss_l1"].item() == pytest.approx(0.1, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(2 / 3, abs=1e-5)


def test_loss_prob_is_bce_with_matched_positive():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    logits = torch.tensor([[1.0, -2.0]])
    losses, indices = GroundingCriterion(GroundingMatcher())(
        _outputs(boxes, logits=logits),
        {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "text_embeds": torch.randn(1, 4)})
    expected = (-F.logsigmoid(torch.tensor(1.0)) - F.logsigmoid(torch.tensor(2.0))) / 2
    assert indices.tolist() == [0]
    assert losses["loss_prob"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_contrastive_near_zero_for_matched_semantics():
    text = torch.tensor([[0.0, 0.0, 3.0, 0.0]])
    semantics = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])
    targets = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "text_embeds": text}
    sharp = GroundingCriterion(GroundingMatcher(), temperature=0.01)
    losses, indices = sharp(_outputs(boxes, semantics=semantics), targets)
    assert indices.tolist() == [1]
    assert losses["loss_contrastive"].item() < 1e-6
    wrong = semantics[:, [1, 0, 2]]  # the matched query now holds an orthogonal vector
    assert sharp(_outputs(boxes, semantics=wrong), targets)[0]["loss_contrastive"] > 10


def test_grounding_gradients_reach_outputs_not_matcher():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, requires_grad=True)
    boxes = torch.rand(2, 3, 4).mul(0.3).add(0.2).requires_grad_(True)
    semantics = torch.randn(2, 3, 4, requires_grad=True)
    losses, _ = GroundingCriterion(GroundingMatcher())(
        {"ground_logits": logits, "ground_boxes": boxes, "ground_embeds": semantics},
        {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2), "text_embeds": torch.randn(2, 4)})
    total = sum(DEFAULT_GROUNDING_WEIGHTS[k] * v for k, v in losses.items())
    total.backward()
    for grad in (logits.grad, boxes.grad, semantics.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_matcher_rejects_bad_shapes():
    with pytest.raises(ValueError, match="target_boxes"):
        GroundingMatcher()(torch.zeros(2, 3), torch.rand(2, 3, 4), torch.rand(2, 3, 4))


def test_adapter_outputs_feed_the_losses_directly():
    """The adapter's output dict is what the criterion reads; gradients reach the adapter."""
    from dpt_t2i.model.adapter import AdapterConfig, build_adapter
    from dpt_t2i.model.losses import (DEFAULT_GROUNDING_WEIGHTS, GroundingCriterion,
                                      GroundingMatcher, MatchingLoss)

    torch.manual_seed(0)
    adapter = build_adapter(AdapterConfig(feature_dim=8, text_dim=12, d_model=16, n_heads=2,
                                          ffn_dim=32, n_match_queries=3, n_ground_queries=5,
                                          max_hw=4))
    out = adapter(torch.randn(2, 8, 4, 4), torch.tensor([10, 900]))
    targets = {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]),
               "text_embeds": torch.randn(2, 12)}
    losses, indices = GroundingCriterion(GroundingMatcher())(out, targets)
    assert set(losses) == set(DEFAULT_GROUNDING_WEIGHTS) and indices.shape == (2,)
    total = sum(DEFAULT_GROUNDING_WEIGHTS[k] * v for k, v in losses.items())
    total = total + MatchingLoss()(out["match_embeds"], torch.randn(2, 12))
    total.backward()
    assert adapter.queries.weight.grad.abs().sum() > 0
    assert adapter.ground_box_head.layers[0].weight.grad.abs().sum() > 0


def test_matching_loss_treats_a_repeated_caption_as_a_positive():
    loss = MatchingLoss()
    with torch.no_grad():
        loss.logit_scale.fill_(0.0)  # scale 1: logits are the cosines
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # captions 0 and 1 are the same text
    h = torch.tensor([[[1.0, 0.0]], [[0.8, 0.6]], [[0.0, 1.0]]], requires_grad=True)
    sim = torch.tensor([[1.0, 1.0, 0.0], [0.8, 0.8, 0.6], [0.0, 0.0, 1.0]])  # (image, text)
    target = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected = (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2
    value = loss(h, y)
    assert torch.allclose(value, expected)
    value.backward()
    # image 1 is pulled towards its caption, which text 0 also is (one-hot targets would
    # push it away in the text-to-image direction)
    assert float(h.grad[1, 0] @ y[0]) < 0


def test_matching_loss_counts_a_negative_equal_to_the_caption_as_positive():
    loss = MatchingLoss()
    with torch.no_grad():
        loss.logit_scale.fill_(0.0)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negatives = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])  # image 1's negative is caption 0
    h = y[:, None, :].clone()
    logits_i = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    target_i = torch.tensor([[0.5, 0.0, 0.0, 0.5], [0.0, 0.5, 0.5, 0.0]])
    expected = (F.cross_entropy(logits_i, target_i)
                + F.cross_entropy(torch.eye(2), torch.arange(2))) / 2
    assert torch.allclose(loss(h, y, negatives), expected)
