"""OffsetBinOutputLayers' losses and construction beyond the common path: the per-RoI terms OHEM
ranks by, ignored RoIs, class-agnostic bins, no RoI at all, Fast R-CNN's loss weights, the
initialisation that starts from the proposals, and the values the constructor refuses.
References: cross-entropies computed here with torch (Eq. 7 per coordinate, Eq. 9's weights)."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform, Box2BoxTransformRotated
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from offset_bin import OffsetBinOutputLayers

NUM_CLASSES = 3
WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def predictor(**kwargs) -> OffsetBinOutputLayers:
    torch.manual_seed(0)
    args = dict(box2box_transform=Box2BoxTransform(WEIGHTS), num_classes=NUM_CLASSES,
                offset_range=3.0, num_bins=5, num_focusing_stages=1)
    args.update(kwargs)
    return OffsetBinOutputLayers(ShapeSpec(channels=8), **args)


def image(boxes, gt_boxes, gt_classes):
    inst = Instances((100, 100))
    inst.proposal_boxes = Boxes(torch.tensor(boxes))
    inst.gt_boxes = Boxes(torch.tensor(gt_boxes))
    inst.gt_classes = torch.tensor(gt_classes)
    return inst


# One image: a foreground RoI of class 2 whose gt offsets are (dx, dy, dw, dh) = (2, 0, 0, -2)
# (proposal 40 x 20: dx = 10 * 8 / 40; dh = 5 log(h'/h) with h' = 20 e^-0.4), a background RoI,
# and an ignored one (label -1).
GT = [18.0 + 8.0, 20.0 + 10.0 - 10.0 * 0.6703200460356393, 58.0 + 8.0,
      20.0 + 10.0 + 10.0 * 0.6703200460356393]
PROPOSALS = [[18.0, 20.0, 58.0, 40.0], [60.0, 60.0, 90.0, 90.0], [0.0, 0.0, 10.0, 10.0]]
LABELS = [3, 2, 2, 1]  # bins of (2, 0, 0, -2) with a = 3, n = 5: [1,3) [-1,1) [-1,1) [-3,-1)


def training_image():
    return image(PROPOSALS, [GT, GT, GT], [2, NUM_CLASSES, -1])


def test_per_roi_losses_by_hand():
    layer = predictor()
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(3, NUM_CLASSES + 1, generator=g)
    bin_logits = torch.randn(3, NUM_CLASSES * 4 * 5, generator=g)
    ce, loc = layer.per_roi_losses((scores, bin_logits), [training_image()])
    expected_ce = F.cross_entropy(scores[:2], torch.tensor([2, NUM_CLASSES]), reduction="none")
    assert torch.allclose(ce, torch.cat([expected_ce, torch.zeros(1)]), atol=1e-6)
    logits = bin_logits[0].view(NUM_CLASSES, 4, 5)[2]  # RoI 0's class-2 scores
    expected_loc = -logits.log_softmax(-1)[torch.arange(4), torch.tensor(LABELS)].sum()
    assert torch.allclose(loc, torch.stack([expected_loc, torch.tensor(0.0), torch.tensor(0.0)]),
                          atol=1e-5)
    # losses(): the same terms, summed and divided by the 3 sampled RoIs (ignored ones count).
    with EventStorage():
        losses = layer.losses((scores, bin_logits), [training_image()])
    assert losses["loss_cls"].item() == pytest.approx(expected_ce.sum().item() / 3, rel=1e-5)
    assert losses["loss_bin_stage0"].item() == pytest.approx(expected_loc.item() / 3, rel=1e-5)


def test_class_agnostic_bins_use_the_one_set():
    layer = predictor(cls_agnostic_bbox_reg=True)
    assert layer.bin_pred.out_features == 4 * 5
    g = torch.Generator().manual_seed(4)
    bin_logits = torch.randn(3, 4 * 5, generator=g)
    _, loc = layer.per_roi_losses((torch.zeros(3, NUM_CLASSES + 1), bin_logits),
                                  [training_image()])
    expected = -bin_logits[0].view(4, 5).log_softmax(-1)[torch.arange(4),
                                                          torch.tensor(LABELS)].sum()
    assert loc[0].item() == pytest.approx(expected.item(), rel=1e-5)


def test_fast_rcnn_loss_weight_scales_loss_cls():
    plain, halved = predictor(), predictor(loss_weight={"loss_cls": 0.5})
    g = torch.Generator().manual_seed(5)
    predictions = (torch.randn(3, NUM_CLASSES + 1, generator=g),
                   torch.randn(3, NUM_CLASSES * 20, generator=g))
    with EventStorage():
        a = plain.losses(predictions, [training_image()])
        b = halved.losses(predictions, [training_image()])
    assert b["loss_cls"].item() == pytest.approx(0.5 * a["loss_cls"].item(), rel=1e-6)
    assert b["loss_bin_stage0"].item() == pytest.approx(a["loss_bin_stage0"].item(), rel=1e-6)


def test_no_roi_gives_zero_losses_with_a_gradient():
    layer = predictor(num_focusing_stages=2)
    scores, bin_logits = layer(torch.randn(0, 8))
    with EventStorage():
        losses = layer.losses((scores, bin_logits), [])
    assert set(losses) == {"loss_cls", "loss_bin_stage0", "loss_bin_stage1"}
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    assert layer.bin_pred.weight.grad is not None and layer.cls_score.weight.grad is not None
    ce, loc = layer.per_roi_losses((scores, bin_logits), [])
    assert ce.shape == (0,) and loc.shape == (0,)


def test_forward_flattens_pooled_features():
    x = torch.randn(2, 2, 2, 2)
    layer = OffsetBinOutputLayers(ShapeSpec(channels=2, height=2, width=2),
                                  box2box_transform=Box2BoxTransform(WEIGHTS),
                                  num_classes=NUM_CLASSES, num_bins=5, num_focusing_stages=1)
    scores, bins = layer(x)
    flat_scores, flat_bins = layer(x.flatten(1))
    assert torch.equal(scores, flat_scores) and torch.equal(bins, flat_bins)
    assert bins.shape == (2, NUM_CLASSES * 4 * 5)


def test_initial_scores_keep_the_proposals():
    """A classifier's initialisation (N(0, 0.01), bias 0): zero features give uniform bins, whose
    expectation is 0 (Eq. 10 over symmetric representatives), so the boxes are the proposals."""
    torch.manual_seed(0)
    layer = OffsetBinOutputLayers(ShapeSpec(channels=1024), box2box_transform=Box2BoxTransform(
        WEIGHTS), num_classes=NUM_CLASSES)
    assert torch.equal(layer.bin_pred.bias, torch.zeros_like(layer.bin_pred.bias))
    assert layer.bin_pred.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert layer.bin_pred.weight.mean().abs().item() < 1e-3
    inst = Instances((100, 100))
    inst.proposal_boxes = Boxes(torch.tensor([[10.0, 20.0, 50.0, 40.0]]))
    (boxes,) = layer.predict_boxes(layer(torch.zeros(1, 1024)), [inst])
    assert torch.allclose(boxes, inst.proposal_boxes.tensor.repeat(1, NUM_CLASSES), atol=1e-4)


def test_zero_loss_weight_is_valid():
    assert predictor(bin_loss_weight=0).bin_loss_weight == 0.0


@pytest.mark.parametrize("kwargs, message", [
    ({"bin_loss_weight": True}, r"^MODEL\.OFFSET_BIN\.LOSS_WEIGHT \(lambda_bin\) must be >= 0"),
    ({"bin_loss_weight": "1"}, r"^MODEL\.OFFSET_BIN\.LOSS_WEIGHT \(lambda_bin\) must be >= 0"),
    ({"expectation": 1}, r"^MODEL\.OFFSET_BIN\.EXPECTATION must be a bool"),
    ({"box2box_transform": Box2BoxTransformRotated((10.0, 10.0, 5.0, 5.0, 1.0))},
     r"^OffsetBinOutputLayers bins the 4 offsets of Box2BoxTransform; got "
     r"Box2BoxTransformRotated"),
])
def test_refused_values_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor(**kwargs)


def test_class_zero_is_foreground():
    """Class 0 is a foreground class (Detectron2's labels: 0..C-1, C background): it has a
    cross-entropy and a bin loss."""
    layer = predictor()
    inst = image(PROPOSALS[:1], [GT], [0])
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(1, NUM_CLASSES + 1, generator=g)
    bin_logits = torch.randn(1, NUM_CLASSES * 20, generator=g)
    ce, loc = layer.per_roi_losses((scores, bin_logits), [inst])
    assert ce.item() == pytest.approx(F.cross_entropy(scores, torch.tensor([0])).item(), rel=1e-5)
    logits = bin_logits[0].view(NUM_CLASSES, 4, 5)[0]
    expected = -logits.log_softmax(-1)[torch.arange(4), torch.tensor(LABELS)].sum()
    assert loc.item() == pytest.approx(expected.item(), rel=1e-5)
    # One sampled RoI: the losses are divided by 1 (Detectron2's mean over the sampled RoIs).
    with EventStorage():
        losses = layer.losses((scores, bin_logits), [inst])
    assert losses["loss_cls"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert losses["loss_bin_stage0"].item() == pytest.approx(expected.item(), rel=1e-5)
    reg = layer.box_reg_loss(inst.proposal_boxes.tensor, inst.gt_boxes.tensor, bin_logits,
                             inst.gt_classes)
    assert reg.item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_weights_of_some_images_only():
    """An image without ``loss_weights`` weighs 1 per RoI; float64 weights do not change the
    losses' dtype."""
    layer = predictor()
    g = torch.Generator().manual_seed(7)
    predictions = (torch.randn(4, NUM_CLASSES + 1, generator=g),
                   torch.randn(4, NUM_CLASSES * 20, generator=g))
    weighted = training_image()
    weighted.loss_weights = torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64)
    plain = image(PROPOSALS[:1], [GT], [1])  # no loss_weights
    with EventStorage():
        losses = layer.losses(predictions, [weighted, plain])
    ce = F.cross_entropy(predictions[0][[0, 1, 3]], torch.tensor([2, NUM_CLASSES, 1]),
                         reduction="none")
    expected = (2.0 * ce[0] + 3.0 * ce[1] + 1.0 * ce[2]) / 4  # the ignored RoI has no loss
    assert losses["loss_cls"].dtype == torch.float32
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss_bin_stage0"].dtype == torch.float32


def test_forward_flattens_any_feature_layout():
    layer = OffsetBinOutputLayers(ShapeSpec(channels=4, width=2),
                                  box2box_transform=Box2BoxTransform(WEIGHTS),
                                  num_classes=NUM_CLASSES, num_bins=5, num_focusing_stages=1)
    x = torch.randn(2, 4, 2)  # (N, C, L)
    scores, bins = layer(x)
    assert torch.equal(bins, layer(x.flatten(1))[1]) and scores.shape == (2, NUM_CLASSES + 1)


def test_proposals_with_gradient_are_refused():
    inst = training_image()
    inst.proposal_boxes = Boxes(inst.proposal_boxes.tensor.requires_grad_())
    layer = predictor()
    with pytest.raises(AssertionError, match="^Proposals should not require gradients!$"):
        layer.per_roi_losses((torch.zeros(3, NUM_CLASSES + 1), torch.zeros(3, NUM_CLASSES * 20)),
                             [inst])


def test_bad_cls_agnostic_names_the_key():
    from detectron2.config import get_cfg

    from offset_bin import add_offset_bin_config
    from offset_bin.output_layers import _resolve_cls_agnostic

    cfg = get_cfg()
    add_offset_bin_config(cfg)
    cfg.MODEL.OFFSET_BIN.CLS_AGNOSTIC = "yes"
    with pytest.raises(ValueError, match=r"^MODEL\.OFFSET_BIN\.CLS_AGNOSTIC must be True, False, "
                                         r"or None/\"\" \(inherit MODEL\.ROI_BOX_HEAD"):
        _resolve_cls_agnostic(cfg)
