"""ITM / REC scoring rules and the Shapes evaluation items."""

import numpy as np
import pytest
import torch

from dpt_t2i.data.shapes.grammar import parse_prompt, satisfied
from dpt_t2i.data.shapes.parse import parse_image
from dpt_t2i.eval.discriminative import (ITMItem, RECItem, evaluate_itm, evaluate_rec,
                                         shapes_itm_item, shapes_rec_items)


@pytest.mark.parametrize("split", ["id", "ood"])
def test_itm_items_have_negative_images_false_for_the_caption(split):
    for i in range(10):
        item = shapes_itm_item(1, i, split)
        caption = parse_prompt(item.texts[0])
        assert len(item.images) == 4 and len(item.texts) == 4
        objects = [o.to_shape_object() for o in parse_image(item.images[0])]
        assert satisfied(caption, objects)
        for text, image in zip(item.texts[1:], item.images[1:]):
            objects = [o.to_shape_object() for o in parse_image(image)]
            assert satisfied(parse_prompt(text), objects)
            assert not satisfied(caption, objects)


class FakeScorer:
    """Scores by a table: latents are item indices, so tests control every score."""

    def __init__(self, table):
        self.table = table

    def encode(self, images):
        return torch.tensor([float(im) for im in images])

    def pair_scores(self, latents, texts, pairs):
        return torch.tensor([self.table(int(latents[i]), texts[j]) for i, j in pairs])

    def rec_boxes(self, latents, refexps):
        return torch.tensor([[0.5, 0.5, 0.2, 0.2] if r == "hit" else [0.1, 0.1, 0.1, 0.1]
                             for r in refexps])


def test_itm_rules_count_i2t_and_t2i_separately():
    # item 0: image 0 prefers its caption; caption prefers image 0 -> both right
    # item 1: image 4 prefers a negative text -> i2t wrong; caption prefers image 4 -> t2i right
    def table(image, text):
        if image == 4 and text == "neg b":
            return 0.9
        return 0.8 if (image in (0, 4) and text.startswith("cap")) else 0.1

    items = [ITMItem([0, 1, 2, 3], ["cap a", "neg a", "neg a2", "neg a3"]),
             ITMItem([4, 5, 6, 7], ["cap b", "neg b", "neg b2", "neg b3"])]
    result = evaluate_itm(FakeScorer(table), items)
    assert result == {"i2t": 0.5, "t2i": 1.0, "overall": 0.75, "n": 2}


def test_ties_count_as_wrong():
    items = [ITMItem([0, 1, 2, 3], ["a", "b", "c", "d"])]
    assert evaluate_itm(FakeScorer(lambda i, t: 0.5), items)["overall"] == 0.0


def test_rec_accuracy_at_iou_half():
    box = (0.5, 0.5, 0.2, 0.2)
    items = [RECItem(0, "hit", box, "id"), RECItem(1, "miss", box, "id"),
             RECItem(2, "hit", (0.55, 0.5, 0.2, 0.2), "id")]  # IoU 0.6 with the hit box
    result = evaluate_rec(FakeScorer(None), items)
    assert result["acc"] == pytest.approx(2 / 3) and result["n"] == 3


def test_rec_items_carry_boxes_of_the_scene():
    items = shapes_rec_items(1, "ood", 5)
    assert len(items) == 5
    for it in items:
        cx, cy, w, h = it.box
        assert 0 < w <= 1 and 0 < h <= 1 and 0 <= cx - w / 2 and cx + w / 2 <= 1
        ys, xs = np.nonzero(it.image.astype(int).sum(-1) < 3 * 250)  # non-white pixels
        assert len(xs)


def test_the_grounding_pass_reads_the_expression_through_the_adapter_alone():
    # Grounding features from the empty prompt: the words reach the boxes only through the
    # adapter's token input, so two expressions on one image must give different outputs.
    from dpt_t2i.eval.discriminative import DiscriminativeScorer
    from dpt_t2i.io.bundle import default_model_path, load_bundle
    from dpt_t2i.model.adapter import AdapterConfig
    from dpt_t2i.model.config import DPTConfig
    from dpt_t2i.model.heads import DPTHeads

    bundle = load_bundle(default_model_path())
    torch.manual_seed(0)
    adapter = AdapterConfig(d_model=32, n_heads=2, ffn_dim=64, n_ground_queries=4)
    config = DPTConfig(ground_condition="empty", adapter=adapter)
    heads = DPTHeads(adapter)
    torch.nn.init.normal_(heads.adapter.text_proj.weight)
    scorer = DiscriminativeScorer(bundle, heads, config)
    item = shapes_rec_items(1, "id", 1)[0]
    latents = scorer.encode([item.image, item.image])
    empty = scorer.score.empty_states().expand(2, -1, -1)
    refs = _tokens(bundle, ["the red circle", "the square on the left"])
    with torch.no_grad():
        a, b = scorer.ground_outputs(latents, empty, refs)["ground_logits"]
    assert not torch.allclose(a, b, atol=1e-4)


def _tokens(bundle, texts):
    from dpt_t2i.model.text import encode_texts

    return encode_texts(bundle.text_encoder, bundle.tokenizer, texts)
