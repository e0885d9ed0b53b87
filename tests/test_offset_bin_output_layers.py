"""OffsetBinOutputLayers: box decoding against Box2BoxTransform, losses against hand-built
cross-entropies, loss weights, and config validation."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from imbalance import add_imbalance_config
from d2infra.modeling import build_box_predictor
from offset_bin import OffsetBinOutputLayers, add_offset_bin_config

NUM_CLASSES = 3
BIG = 1e4


def make_cfg(**offset_bin):
    cfg = get_cfg()
    add_imbalance_config(cfg)
    add_offset_bin_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "OffsetBinOutputLayers"
    for key, value in offset_bin.items():
        cfg.MODEL.OFFSET_BIN[key.upper()] = value
    return cfg


def build(cfg) -> OffsetBinOutputLayers:
    torch.manual_seed(0)
    return build_box_predictor(cfg, ShapeSpec(channels=8))


def test_registered_and_configured():
    predictor = build(make_cfg())
    assert isinstance(predictor, OffsetBinOutputLayers)
    assert not hasattr(predictor, "bbox_pred")
    assert predictor.coder.ranges[0] == 3.0 and predictor.coder.num_bins == 20
    assert predictor.coder.num_stages == 2 and predictor.expectation
    # Class-specific by default (Detectron2's CLS_AGNOSTIC_BBOX_REG is False): C x 4 x K x n.
    assert predictor.bin_pred.out_features == NUM_CLASSES * 4 * 2 * 20
    scores, bin_logits = predictor(torch.randn(5, 8))
    assert scores.shape == (5, NUM_CLASSES + 1) and bin_logits.shape == (5, NUM_CLASSES * 160)


@pytest.mark.parametrize(
    "inherit, override, expected",
    [(False, None, False), (True, None, True), (True, "", True), (False, True, True),
     (True, False, False)],
)
def test_cls_agnostic_inherits(inherit, override, expected):
    cfg = make_cfg(cls_agnostic=override)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = inherit
    predictor = build(cfg)
    assert predictor.cls_agnostic_bbox_reg is expected
    assert predictor.bin_pred.out_features == (1 if expected else NUM_CLASSES) * 4 * 2 * 20


@pytest.mark.parametrize(
    "key, value",
    [("NUM_BINS", 2), ("RANGE", 0.0), ("RANGE", -3.0), ("NUM_STAGES", 0), ("LOSS_WEIGHT", -1.0),
     ("EXPECTATION", "yes"), ("CLS_AGNOSTIC", "yes")],
)
def test_impossible_values_fail_at_build(key, value):
    cfg = make_cfg()
    cfg.MODEL.OFFSET_BIN[key] = value
    with pytest.raises(ValueError, match=f"MODEL.OFFSET_BIN.{key}"):
        build(cfg)


def proposals_for(boxes, image_size=(100, 100)):
    inst = Instances(image_size)
    inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    return inst


def test_one_stage_all_mass_on_bin_matches_apply_deltas():
    """K = 1, scores one-hot on chosen bins: the boxes are apply_deltas of those bins' centres."""
    # Bins: (-inf, -3], [-3, -1), [-1, 1), [1, 3), [3, inf).
    cfg = make_cfg(num_stages=1, num_bins=5, range=3.0)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    predictor = build(cfg)
    proposals = [proposals_for([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 30.0, 60.0]])]
    # Chosen bins per coordinate (dx, dy, dw, dh); representatives by hand: -3, -2, 0, 2, 3.
    chosen = torch.tensor([[3, 1, 2, 4], [0, 2, 1, 3]])
    reps = torch.tensor([-3.0, -2.0, 0.0, 2.0, 3.0])
    bin_logits = F.one_hot(chosen, 5).float().view(2, 1, 4, 1, 5) * BIG
    predictions = (torch.zeros(2, NUM_CLASSES + 1), bin_logits.view(2, -1))
    for expectation in (True, False):
        predictor.expectation = expectation
        (boxes,) = predictor.predict_boxes(predictions, proposals)
        expected = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)).apply_deltas(
            reps[chosen], proposals[0].proposal_boxes.tensor
        )
        assert torch.allclose(boxes, expected, atol=1e-4)
    # Sanity of the reference: box 0 moves right by 2/10 of its width (40 px): +8 px.
    assert expected[0, 0].item() != pytest.approx(10.0)


def test_class_specific_boxes_and_uniform_scores_keep_proposals():
    predictor = build(make_cfg())
    proposals = [proposals_for([[10.0, 20.0, 50.0, 40.0]]), proposals_for([[5.0, 5.0, 9.0, 9.0]])]
    bin_logits = torch.zeros(2, NUM_CLASSES * 4 * 2 * 20)
    boxes = predictor.predict_boxes((torch.zeros(2, NUM_CLASSES + 1), bin_logits), proposals)
    assert [b.shape for b in boxes] == [(1, NUM_CLASSES * 4)] * 2
    # Uniform probabilities: expectation 0 at both stages (Eqs. 10, 11), boxes = proposals.
    assert torch.allclose(boxes[0], proposals[0].proposal_boxes.tensor.repeat(1, NUM_CLASSES))
    probs = predictor.predict_probs((torch.zeros(2, NUM_CLASSES + 1), bin_logits), proposals)
    assert torch.allclose(probs[0], torch.full((1, NUM_CLASSES + 1), 0.25))


def training_proposals():
    """Image 1: one foreground RoI with hand-made offsets and one background RoI; image 2 has no
    ground truth (no gt_boxes field), one background RoI."""
    w, h = 40.0, 20.0
    proposal = [10.0, 20.0, 10.0 + w, 20.0 + h]
    # Offsets (weights 10, 10, 5, 5): dx = 10 * 8/40 = 2, dy = 0, dw = 5 log(w'/w) = -2,
    # dh = 5 log(h'/h) = 5 (beyond a = 3).
    cx, cy = 30.0 + 8.0, 30.0
    gw, gh = w * math.exp(-0.4), h * math.exp(1.0)
    gt = [cx - gw / 2, cy - gh / 2, cx + gw / 2, cy + gh / 2]
    p1 = proposals_for([proposal, [60.0, 60.0, 90.0, 90.0]])
    p1.gt_boxes = Boxes(torch.tensor([gt, gt]))
    p1.gt_classes = torch.tensor([1, NUM_CLASSES])
    p2 = proposals_for([[0.0, 0.0, 20.0, 20.0]])
    p2.gt_classes = torch.tensor([NUM_CLASSES])
    return [p1, p2]


def test_losses_by_hand():
    cfg = make_cfg(num_stages=1, num_bins=5, range=3.0, loss_weight=0.5)
    predictor = build(cfg)
    proposals = training_proposals()
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, NUM_CLASSES + 1, generator=g)
    bin_logits = torch.randn(3, NUM_CLASSES * 4 * 1 * 5, generator=g)
    with EventStorage():
        losses = predictor.losses((scores, bin_logits), proposals)
    assert set(losses) == {"loss_cls", "loss_bin_stage0"}

    gt_classes = torch.tensor([1, NUM_CLASSES, NUM_CLASSES])
    assert losses["loss_cls"].item() == pytest.approx(F.cross_entropy(scores, gt_classes).item(),
                                                      rel=1e-5)
    # Bins of (2, 0, -2, 5) with a = 3, w = 2: [1,3) -> 3, [-1,1) -> 2, [-3,-1) -> 1, [3,inf) -> 4.
    labels = torch.tensor([3, 2, 1, 4])
    logits = bin_logits[0].view(NUM_CLASSES, 4, 5)[1]  # RoI 0, its class 1
    ce = -torch.log_softmax(logits, dim=-1)[torch.arange(4), labels].sum()  # Eq. 7
    expected = 0.5 * ce / 3  # lambda = 0.5, normalised by the 3 sampled RoIs
    assert losses["loss_bin_stage0"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert predictor.box_reg_loss(
        torch.cat([p.proposal_boxes.tensor for p in proposals]),
        torch.cat([proposals[0].gt_boxes.tensor, proposals[1].proposal_boxes.tensor]),
        bin_logits, gt_classes,
    ).item() == pytest.approx(expected.item(), rel=1e-5)


def test_two_stage_loss_keys_and_targets():
    predictor = build(make_cfg(num_bins=5, range=3.0))  # K = 2: stage-2 bins on (-1, 1), w = 2/3
    proposals = training_proposals()
    bin_logits = torch.zeros(3, NUM_CLASSES * 4 * 2 * 5, requires_grad=True)
    with EventStorage():
        losses = predictor.losses((torch.zeros(3, NUM_CLASSES + 1), bin_logits), proposals)
    assert set(losses) == {"loss_cls", "loss_bin_stage0", "loss_bin_stage1"}
    # Uniform scores: each coordinate costs log(5) at each stage, 4 coordinates, 1 fg of 3 RoIs.
    for k in range(2):
        assert losses[f"loss_bin_stage{k}"].item() == pytest.approx(4 * math.log(5) / 3, rel=1e-5)
    # Stage-2 targets: residuals of (2, 0, -2, 5) after reps (2, 0, -2, 3): (0, 0, 0, 2) ->
    # labels (2, 2, 2, 4). The gradient of stage 2 is p - y (Eq. 8) on those bins only.
    losses["loss_bin_stage1"].backward()
    grad = bin_logits.grad.view(3, NUM_CLASSES, 4, 2, 5)[0, 1, :, 1] * 3  # undo the 1/3
    y = F.one_hot(torch.tensor([2, 2, 2, 4]), 5).float()
    assert torch.allclose(grad, torch.full((4, 5), 0.2) - y, atol=1e-6)
    assert bin_logits.grad.view(3, NUM_CLASSES, 4, 2, 5)[1:].abs().sum() == 0  # background


def test_loss_weights():
    predictor = build(make_cfg())
    g = torch.Generator().manual_seed(2)
    predictions = (torch.randn(3, NUM_CLASSES + 1, generator=g),
                   torch.randn(3, NUM_CLASSES * 4 * 2 * 20, generator=g))
    with EventStorage():
        plain = predictor.losses(predictions, training_proposals())
        ones = training_proposals()
        for p in ones:
            p.loss_weights = torch.ones(len(p))
        with_ones = predictor.losses(predictions, ones)
        weighted = training_proposals()
        weighted[0].loss_weights = torch.tensor([3.0, 0.5])
        weighted[1].loss_weights = torch.tensor([2.0])
        with_w = predictor.losses(predictions, weighted)
    for key in plain:
        assert with_ones[key].item() == pytest.approx(plain[key].item(), rel=1e-6)
    # Only RoI 0 is foreground: its bin loss is scaled by 3; sum_r w_r L_r / R.
    for key in ("loss_bin_stage0", "loss_bin_stage1"):
        assert with_w[key].item() == pytest.approx(3 * plain[key].item(), rel=1e-5)
    ce = F.cross_entropy(predictions[0], torch.tensor([1, NUM_CLASSES, NUM_CLASSES]),
                         reduction="none")
    assert with_w["loss_cls"].item() == pytest.approx(
        ((torch.tensor([3.0, 0.5, 2.0]) * ce).sum() / 3).item(), rel=1e-5)


def test_no_foreground_connects_gradient():
    predictor = build(make_cfg())
    proposals = [training_proposals()[1]]
    scores, bin_logits = predictor(torch.randn(1, 8))
    with EventStorage():
        losses = predictor.losses((scores, bin_logits), proposals)
    assert losses["loss_bin_stage0"].item() == 0.0
    sum(losses.values()).backward()
    assert predictor.bin_pred.weight.grad is not None
