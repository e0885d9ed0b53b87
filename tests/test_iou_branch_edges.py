"""iou_aware.iou_branch where its common-path tests do not reach (found by mutation testing, see
tests/README.md): the loss type the detector is configured with, the defaults of the loss
functions, Detectron2's decoding when no quality is given, the score threshold's strictness,
per-class extra fields with two classes, the NMS shortcut against Detectron2's ``batched_nms`` on
tied scores, and the error messages."""
import os

import pytest
import torch
from detectron2.layers import batched_nms
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.structures import Boxes

from iou_aware.iou_branch import (
    IoUConfidenceDecodingMixin,
    check_alpha,
    iou_branch_loss,
    iou_prediction_loss,
    nms_top_detections,
)
from train_net import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def retinanets():
    """Detectron2's RetinaNet and IoU-aware RetinaNet of the embedded configs (same thresholds)."""
    def build(name):
        cfg = build_cfg(os.path.join(REPO, "configs", name), ["MODEL.DEVICE", "cpu"])
        torch.manual_seed(0)
        return build_model(cfg).eval()

    plain = build("baselines/retinanet_smallR_FPN_shapes.yaml")
    iou_aware = build("iou_aware/iou_aware_retinanet_smallR_FPN_shapes.yaml")
    assert type(plain) is RetinaNet
    for attr in ("test_score_thresh", "test_topk_candidates", "test_nms_thresh",
                 "max_detections_per_image", "num_classes"):
        assert getattr(plain, attr) == getattr(iou_aware, attr), attr
    return plain, iou_aware


def level_inputs(num_classes, sizes=(40, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    anchors, cls, deltas = [], [], []
    for n in sizes:
        xy = torch.rand(n, 2, generator=g) * 50
        anchors.append(Boxes(torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 20], 1)))
        cls.append(torch.rand(n, num_classes, generator=g))
        deltas.append(torch.randn(n, 4, generator=g) * 0.1)
    return anchors, cls, deltas


def test_without_quality_the_decoding_is_detectron2s():
    plain, iou_aware = retinanets()
    anchors, cls, deltas = level_inputs(plain.num_classes)
    expected = plain.inference_single_image(anchors, cls, deltas, (64, 72))
    result = iou_aware.inference_single_image(anchors, cls, deltas, (64, 72))
    assert len(expected) > 0 and result.image_size == (64, 72)
    assert torch.equal(result.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(result.scores, expected.scores)
    assert torch.equal(result.pred_classes, expected.pred_classes)


def test_quality_without_extra_fields():
    _, iou_aware = retinanets()
    anchors, cls, deltas = level_inputs(iou_aware.num_classes)
    quality = [torch.ones(len(a), 1) for a in anchors]
    result = iou_aware.inference_single_image(anchors, cls, deltas, (64, 72), quality=quality)
    assert set(result.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert result.image_size == (64, 72) and len(result) > 0


class _Decoder(IoUConfidenceDecodingMixin):
    """The mixin's per-level decoding alone, with the product confidence S = p * q (alpha < 0)."""

    iou_alpha = -1.0
    box2box_transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))


def test_score_threshold_is_strict_and_extra_fields_follow_the_class():
    """As Detectron2 (``score > thresh``): a confidence equal to the threshold is dropped. A
    per-class extra field with two classes is read at the detection's class."""
    anchors = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]))
    p = torch.tensor([[1.0, 0.75], [0.25, 0.75]])
    q = torch.tensor([[0.5], [1.0]])  # S = p * q: [[0.5, 0.375], [0.25, 0.75]], exact in binary
    per_class = torch.tensor([[10.0, 11.0], [20.0, 21.0]])
    out = _Decoder()._decode_per_level_predictions(
        anchors, p, torch.zeros(2, 4), 0.5, 100, (32, 32), quality=q,
        extra_fields={"per_class": per_class, "per_anchor": torch.tensor([[7.0], [8.0]])})
    assert out.scores.tolist() == [0.75]  # S = 0.5 equals the threshold: out
    assert out.pred_classes.tolist() == [1]
    assert out.per_class.tolist() == [21.0] and out.per_anchor.tolist() == [8.0]


def test_configured_loss_type_reaches_the_loss():
    """IoUConfidenceDecodingMixin.iou_branch_losses uses the detector's LOSS_TYPE (l2 here):
    (sigmoid(x) - IoU)^2 (Table 2) for the one positive anchor, by hand."""

    class Detector(IoUConfidenceDecodingMixin):
        num_classes = 3
        box2box_transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
        iou_loss_type = "l2"
        iou_target_gradient = True
        iou_loss_weight = 1.0
        loss_normalizer = 2.0

    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]]))]
    gt_boxes = torch.tensor([[[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 1.0, 1.0]]])  # IoU 0.5 with anchor 0
    logits = [torch.tensor([[[0.0], [3.0]]])]
    loss = Detector().iou_branch_losses(anchors, [torch.zeros(1, 2, 4)], [torch.tensor([1, 3])],
                                        gt_boxes, logits)
    assert loss.item() == pytest.approx((0.5 - 0.5) ** 2 / 2 + 0.0, abs=1e-7)
    logits = [torch.tensor([[[2.0], [3.0]]])]
    loss = Detector().iou_branch_losses(anchors, [torch.zeros(1, 2, 4)], [torch.tensor([1, 3])],
                                        gt_boxes, logits)
    s = 1 / (1 + torch.exp(torch.tensor(-2.0))).item()
    assert loss.item() == pytest.approx((s - 0.5) ** 2 / 2, rel=1e-5)


def test_loss_defaults():
    """Defaults: binary cross-entropy (the paper's), and the target's gradient reaches the
    regression (Eq. 3's IoU of the regressed box)."""
    x, t = torch.tensor([0.3, -1.2]), torch.tensor([0.6, 0.2])
    s = torch.sigmoid(x)
    bce = -(t * s.log() + (1 - t) * (1 - s).log()).sum()
    assert iou_prediction_loss(x, t).item() == pytest.approx(bce.item(), rel=1e-5)
    deltas = [torch.zeros(1, 1, 4, requires_grad=True)]
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))]
    loss = iou_branch_loss(anchors, Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), deltas,
                           torch.tensor([[[0.0, 0.0, 10.0, 6.0]]]), torch.tensor([[True]]),
                           [torch.ones(1, 1, 1)])  # d loss / d IoU = -x: non-zero
    loss.backward()
    assert deltas[0].grad.abs().sum() > 0


@pytest.mark.parametrize("num, max_det, tied", [(6, 1, True), (11, 2, True), (40, 3, False)])
def test_nms_shortcut_equals_batched_nms(num, max_det, tied):
    """More candidates than 5 x max_detections take the shortcut; the kept boxes are Detectron2's
    ``batched_nms(...)[:max_detections]``, tied scores included."""
    g = torch.Generator().manual_seed(num)
    xy = torch.rand(num, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + 10], 1)
    scores = torch.full((num,), 0.5) if tied else torch.rand(num, generator=g)
    classes = torch.randint(0, 2, (num,), generator=g)
    expected = batched_nms(boxes, scores, classes, 0.5)[:max_det]
    kept = nms_top_detections(boxes, scores, classes, 0.5, max_det)
    assert sorted(kept.tolist()) == sorted(expected.tolist())


@pytest.mark.parametrize("call, message", [
    (lambda: check_alpha(None), r"^MODEL\.IOU_AWARE\.ALPHA is None and this detector has no "
                                r"default alpha$"),
    (lambda: check_alpha(1.5), r"^MODEL\.IOU_AWARE\.ALPHA must be in \[0, 1\] \(Eq\. 5\)"),
    (lambda: iou_prediction_loss(torch.zeros(1), torch.zeros(1), "l1"),
     r"^MODEL\.IOU_AWARE\.LOSS_TYPE must be one of \('bce', 'l2'\), got 'l1'$"),
])
def test_messages_name_the_key(call, message):
    with pytest.raises(ValueError, match=message):
        call()
