"""Tests of iou_aware.iou_branch: Eq. 5 confidence, Eq. 3 losses and the IoU target, by hand."""
import math
import os

import pytest
import torch

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, pairwise_iou

from iou_aware.iou_branch import (
    check_alpha,
    detection_confidence,
    iou_branch_loss,
    iou_prediction_loss,
)


def test_confidence_formula_by_hand():
    p = torch.tensor([[0.81, 0.16]])
    iou = torch.tensor([[0.25]])
    # Eq. 5 with alpha 0.5: sqrt(0.81 * 0.25) = 0.45, sqrt(0.16 * 0.25) = 0.2
    assert torch.allclose(detection_confidence(p, iou, 0.5), torch.tensor([[0.45, 0.2]]))
    # alpha 0.25: 0.81^0.25 * 0.25^0.75 = 0.9487 * 0.35355 = 0.33541
    assert torch.allclose(
        detection_confidence(p, iou, 0.25)[0, 0], torch.tensor(0.81**0.25 * 0.25**0.75)
    )
    assert torch.allclose(detection_confidence(p, iou, 0.25)[0, 0], torch.tensor(0.335410), atol=1e-6)
    # Negative alpha: plain product (Table 3, "none")
    assert torch.allclose(detection_confidence(p, iou, -1.0), torch.tensor([[0.2025, 0.04]]))
    # alpha 1: the classification score, bit for bit; alpha 0: the IoU
    assert torch.equal(detection_confidence(p, iou, 1.0), p)
    assert torch.equal(detection_confidence(p, iou, 0.0), torch.tensor([[0.25, 0.25]]))


def test_confidence_ranking_effect():
    # A: confident class, poor box; B: less confident class, good box.
    p = torch.tensor([[0.9], [0.6]])
    iou = torch.tensor([[0.4], [0.9]])
    assert detection_confidence(p, iou, 1.0).argmax() == 0  # classification alone prefers A
    s = detection_confidence(p, iou, 0.5)  # A: sqrt(0.36) = 0.6, B: sqrt(0.54) = 0.7348
    assert torch.allclose(s[:, 0], torch.tensor([0.6, math.sqrt(0.54)]))
    assert s.argmax() == 1
    assert detection_confidence(p, iou, -1).argmax() == 1  # 0.36 < 0.54


def test_check_alpha():
    assert check_alpha(0.5) == 0.5
    assert check_alpha(0.0) == 0.0 and check_alpha(1.0) == 1.0
    assert check_alpha(-1) == -1.0
    # None: the detector's default (0.3 for IoUAwareFCOS, 0.5 for IoUAwareRetinaNet)
    assert check_alpha(None, default=0.3) == 0.3
    with pytest.raises(ValueError, match="ALPHA"):
        check_alpha(None)
    for bad in (1.5, float("nan")):
        with pytest.raises(ValueError):
            check_alpha(bad)


def test_bce_and_l2_losses_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5, 0.75
    targets = torch.tensor([0.8, 0.5])
    # BCE: -(0.8 ln 0.5 + 0.2 ln 0.5) = ln 2; -(0.5 ln 0.75 + 0.5 ln 0.25)
    bce = math.log(2.0) - 0.5 * (math.log(0.75) + math.log(0.25))
    assert iou_prediction_loss(logits, targets, "bce").item() == pytest.approx(bce, rel=1e-6)
    assert bce == pytest.approx(0.693147 + 0.836988, rel=1e-5)
    # L2 on the sigmoid: (0.5 - 0.8)^2 + (0.75 - 0.5)^2 = 0.09 + 0.0625
    assert iou_prediction_loss(logits, targets, "l2").item() == pytest.approx(0.1525, rel=1e-6)
    with pytest.raises(ValueError):
        iou_prediction_loss(logits, targets, "l1")


def _one_image_example(dx: float):
    # Two anchors on one level; the first is positive with gt [0, 0, 10, 10]. A delta dx = 0.5 shifts
    # the 10-px anchor by 5 px: predicted box [5, 0, 15, 10], IoU with the gt = 50 / 150 = 1/3.
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]))]
    deltas = torch.tensor([[[dx, 0.0, 0.0, 0.0], [0.3, 0.2, 0.1, 0.0]]], requires_grad=True)
    gt_boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]]])
    pos_mask = torch.tensor([[True, False]])
    iou_logits = torch.tensor([[[0.0], [5.0]]], requires_grad=True)
    return anchors, deltas, gt_boxes, pos_mask, iou_logits


@pytest.mark.parametrize("loss_type", ["bce", "l2"])
def test_iou_branch_loss_target_is_iou_of_decoded_box(loss_type):
    anchors, deltas, gt_boxes, pos_mask, iou_logits = _one_image_example(0.5)
    loss = iou_branch_loss(
        anchors, Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), [deltas], gt_boxes, pos_mask, [iou_logits],
        loss_type=loss_type,
    )
    t = 1.0 / 3.0  # only the positive anchor counts; its predicted IoU is sigmoid(0) = 0.5
    expected = -(t * math.log(0.5) + (1 - t) * math.log(0.5)) if loss_type == "bce" else (0.5 - t) ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("target_gradient", [True, False])
def test_target_gradient_reaches_deltas_only_when_on(target_gradient):
    anchors, deltas, gt_boxes, pos_mask, iou_logits = _one_image_example(0.5)
    loss = iou_branch_loss(
        anchors, Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), [deltas], gt_boxes, pos_mask, [iou_logits],
        loss_type="bce", target_gradient=target_gradient,
    )
    loss.backward()
    assert iou_logits.grad[0, 0, 0].item() == pytest.approx(0.5 - 1.0 / 3.0, rel=1e-5)
    assert iou_logits.grad[0, 1, 0].item() == 0.0  # negatives get no IoU loss
    if target_gradient:
        # dL/dt = -logit = 0 at logit 0: move the logit to get a non-zero target gradient
        anchors, deltas, gt_boxes, pos_mask, iou_logits = _one_image_example(0.5)
        with torch.no_grad():
            iou_logits[0, 0, 0] = 1.0
        loss = iou_branch_loss(
            anchors, Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), [deltas], gt_boxes, pos_mask,
            [iou_logits], target_gradient=True,
        )
        loss.backward()
        assert deltas.grad is not None and deltas.grad[0, 0].abs().sum() > 0
        assert deltas.grad[0, 1].abs().sum() == 0
    else:
        assert deltas.grad is None


@pytest.mark.parametrize("logit,iou_moves", [(-2.0, "down"), (2.0, "up")])
def test_target_gradient_moves_the_box_toward_the_predicted_side_of_one_half(logit, iou_moves):
    """With BCE, dL/d(target IoU) = -logit (Eq. 3): a gradient step through the target lowers the
    box's IoU with its ground truth while the predicted IoU is below 0.5. This is why the IoU-aware
    FCOS configs detach the target (their comment has the measured collapse)."""
    anchors, deltas, gt_boxes, pos_mask, iou_logits = _one_image_example(0.5)  # IoU 1/3
    with torch.no_grad():
        iou_logits[0, 0, 0] = logit
    loss = iou_branch_loss(anchors, Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), [deltas], gt_boxes,
                           pos_mask, [iou_logits], loss_type="bce", target_gradient=True)
    loss.backward()
    with torch.no_grad():
        stepped = deltas - 0.1 * deltas.grad
    # the box's IoU with the ground truth [0, 0, 10, 10] after the step: a shift by 10*dx px
    iou_after = pairwise_iou(
        Boxes(Box2BoxTransform((1.0, 1.0, 1.0, 1.0)).apply_deltas(stepped[0, :1], anchors[0].tensor[:1])),
        Boxes(gt_boxes[0, :1])).item()
    assert (iou_after < 1.0 / 3.0) if iou_moves == "down" else (iou_after > 1.0 / 3.0)


def test_iou_aware_fcos_configs_detach_the_target():
    from train_net import build_cfg

    root = os.path.join(os.path.dirname(__file__), "..", "configs", "iou_aware")
    for name in ("iou_aware_fcos_smallR_FPN_shapes.yaml", "iou_aware_fcos_multiply_smallR_FPN_shapes.yaml",
                 "iou_aware_fcos_replace_smallR_FPN_shapes.yaml", "iou_aware_fcos_R_50_FPN_1x_coco.yaml"):
        cfg = build_cfg(os.path.join(root, name), ["MODEL.DEVICE", "cpu"])  # COCO: CUDA or cpu
        assert cfg.MODEL.IOU_AWARE.TARGET_GRADIENT is False, name
