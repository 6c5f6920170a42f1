import pytest
import torch

from dpt_t2i.model.boxes import (box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh,
                                 generalized_box_iou)


def test_conversions_round_trip_and_known_value():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert torch.allclose(box_cxcywh_to_xyxy(cxcywh), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    boxes = torch.rand(10, 4)
    assert torch.allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-6)


def test_iou_half_overlap_by_hand():
    # [0,0,2,1] and [1,0,3,1]: intersection 1, union 3 -> IoU 1/3.
    iou, union = box_iou(torch.tensor([[0., 0., 2., 1.]]), torch.tensor([[1., 0., 3., 1.]]))
    assert iou.item() == pytest.approx(1 / 3)
    assert union.item() == pytest.approx(3.0)


def test_giou_identical_is_one():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    assert torch.allclose(torch.diag(generalized_box_iou(boxes, boxes)), torch.ones(2))


def test_giou_disjoint_by_hand():
    # IoU 0, enclosing area 3, union 2 -> GIoU = 0 - (3 - 2) / 3 = -1/3.
    giou = generalized_box_iou(torch.tensor([[0., 0., 1., 1.]]), torch.tensor([[2., 0., 3., 1.]]))
    assert giou.shape == (1, 1)
    assert giou.item() == pytest.approx(-1 / 3)


def test_giou_is_pairwise():
    a = box_cxcywh_to_xyxy(torch.rand(3, 4))
    b = box_cxcywh_to_xyxy(torch.rand(5, 4))
    giou = generalized_box_iou(a, b)
    assert giou.shape == (3, 5)
    assert giou[1, 2] == pytest.approx(generalized_box_iou(a[1:2], b[2:3]).item())


def test_giou_rejects_inverted_boxes():
    with pytest.raises(ValueError, match="x1 >= x0"):
        generalized_box_iou(torch.tensor([[1., 0., 0., 1.]]), torch.tensor([[0., 0., 1., 1.]]))
