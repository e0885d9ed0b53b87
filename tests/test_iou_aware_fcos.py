"""Tests of iou_aware.fcos: FCOS from yaml, and IoU-aware FCOS in its three centerness modes (the
authors' "train_only" by default)."""
import os

import pytest
import torch

import d2infra.modeling  # noqa: F401  registers the small backbone
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from imbalance.config import add_imbalance_config

import iou_aware

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "iou_aware")
SIZE = 64


def make_cfg(name, mode="replace", alpha=0.5):
    cfg = get_cfg()
    add_imbalance_config(cfg)
    iou_aware.add_iou_aware_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SMALL_RESNET.STEM_OUT_CHANNELS = 8
    cfg.MODEL.SMALL_RESNET.STAGE_OUT_CHANNELS = [8, 16, 24, 32]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FCOS.NUM_CLASSES = 3
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.05
    cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS = mode
    cfg.MODEL.IOU_AWARE.ALPHA = alpha
    return cfg


def batch(with_gt=True):
    g = torch.Generator().manual_seed(0)
    out = [{"image": torch.rand(3, SIZE, SIZE, generator=g) * 255} for _ in range(2)]
    if with_gt:
        a = Instances((SIZE, SIZE))
        a.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 18.0, 60.0, 50.0]]))
        a.gt_classes = torch.tensor([0, 2])
        empty = Instances((SIZE, SIZE))
        empty.gt_boxes = Boxes(torch.zeros(0, 4))
        empty.gt_classes = torch.zeros(0, dtype=torch.long)
        out[0]["instances"], out[1]["instances"] = a, empty
    return out


def spread(model):
    with torch.no_grad():
        model.head.cls_score.bias.fill_(0.0)
        model.head.cls_score.weight.normal_(0, 0.2)


def test_fcos_from_yaml_trains_with_an_empty_image():
    model = build_model(make_cfg("fcos_smallR_FPN_shapes.yaml")).train()
    with EventStorage():
        losses = model(batch())
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("mode", ["train_only", "replace", "multiply"])
def test_iou_aware_fcos_losses(mode):
    torch.manual_seed(0)
    model = build_model(make_cfg("iou_aware_fcos_smallR_FPN_shapes.yaml", mode)).train()
    assert hasattr(model.head, "ctrness") == (mode != "replace")
    with EventStorage():
        losses = model(batch())
    expected = {"loss_fcos_cls", "loss_fcos_loc", "loss_iou"}
    if mode != "replace":
        expected.add("loss_fcos_ctr")
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.iou_pred.weight.grad.abs().sum() > 0
    # Every parameter gets a gradient (no dead centerness conv in "replace": DDP-safe).
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_iou_aware_fcos_confidence_fields():
    for mode in ("replace", "multiply"):
        torch.manual_seed(0)
        model = build_model(make_cfg("iou_aware_fcos_smallR_FPN_shapes.yaml", mode, 0.5)).eval()
        spread(model)
        with torch.no_grad():
            inst = model(batch(False))[0]["instances"]
        assert len(inst) > 0
        quality = inst.pred_ious * (inst.centerness if mode == "multiply" else 1.0)
        assert torch.allclose(inst.scores, (inst.cls_scores * quality).sqrt(), atol=1e-6)


def test_multiply_with_unit_iou_equals_detectron2_fcos():
    """Multiply mode with the predicted IoU forced to 1 and alpha 0.5 ranks by sqrt(p * centerness),
    which is Detectron2's FCOS inference: same weights, same detections."""
    torch.manual_seed(0)
    ours = build_model(make_cfg("iou_aware_fcos_multiply_smallR_FPN_shapes.yaml", "multiply")).eval()
    spread(ours)
    with torch.no_grad():
        ours.head.iou_pred.weight.zero_()
        ours.head.iou_pred.bias.fill_(100.0)  # sigmoid = 1.0 in float32
    ref = build_model(make_cfg("fcos_smallR_FPN_shapes.yaml")).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["head.iou_pred.bias", "head.iou_pred.weight"]
    with torch.no_grad():
        o, e = ours(batch(False))[0]["instances"], ref(batch(False))[0]["instances"]
    assert len(e) > 0 and len(o) == len(e)
    assert torch.allclose(o.scores, e.scores, atol=1e-6)
    assert torch.allclose(o.pred_boxes.tensor, e.pred_boxes.tensor)
    assert torch.equal(o.pred_classes, e.pred_classes)


def constant_head(model, p_per_class, iou, ctrness):
    """Every location predicts the classification probabilities ``p_per_class``, the IoU ``iou``,
    the centerness ``ctrness`` and a box of 2 strides on a side."""
    def logit(x):
        return torch.logit(torch.as_tensor(x, dtype=torch.float32))

    with torch.no_grad():
        head = model.head
        for conv, bias in ((head.cls_score, logit(p_per_class)), (head.iou_pred, logit(iou)),
                           (head.ctrness, logit(ctrness)), (head.bbox_pred, torch.ones(4))):
            conv.weight.zero_()
            conv.bias.copy_(bias)


def test_default_iou_aware_fcos_is_the_authors():
    """The authors' iou_aware_fcos_head.py: centerness trained, confidence p^0.3 * IoU^0.7."""
    cfg = get_cfg()
    iou_aware.add_iou_aware_config(cfg)
    assert cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS == "train_only"
    assert cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS_TOWER == "box"
    cfg = make_cfg("iou_aware_fcos_smallR_FPN_shapes.yaml", mode="train_only", alpha=None)
    model = build_model(cfg)
    assert model.iou_alpha == 0.3 and model.centerness_mode == "train_only"
    assert hasattr(model.head, "ctrness")
    from train_net import build_cfg

    shapes = build_cfg(os.path.join(CONFIGS, "iou_aware_fcos_smallR_FPN_shapes.yaml"), [])
    assert shapes.MODEL.IOU_AWARE.FCOS_CENTERNESS == "train_only"
    assert shapes.MODEL.IOU_AWARE.ALPHA == 0.3


def test_train_only_trains_centerness_as_detectron2_fcos():
    """"train_only" has FCOS's centerness loss, equal to Detectron2's FCOS on the same weights, and
    its gradient reaches the centerness conv."""
    torch.manual_seed(0)
    ours = build_model(make_cfg("iou_aware_fcos_smallR_FPN_shapes.yaml", "train_only")).train()
    ref = build_model(make_cfg("fcos_smallR_FPN_shapes.yaml")).train()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["head.iou_pred.bias", "head.iou_pred.weight"]
    with EventStorage():
        losses = ours(batch())
        expected = ref(batch())
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_iou"}
    for name, value in expected.items():
        assert torch.allclose(losses[name], value), name
    assert losses["loss_fcos_ctr"] > 0
    losses["loss_fcos_ctr"].backward(retain_graph=True)
    assert ours.head.ctrness.weight.grad.abs().sum() > 0
    # On the box tower (Detectron2's FCOS): the centerness loss trains it, not the cls tower.
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in ours.head.cls_subnet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.head.bbox_subnet.parameters())


def test_centerness_on_the_classification_tower():
    """FCOS_CENTERNESS_TOWER "cls" (the authors' head): centerness reads the classification tower."""
    torch.manual_seed(0)
    cfg = make_cfg("iou_aware_fcos_smallR_FPN_shapes.yaml", "train_only")
    cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS_TOWER = "cls"
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(batch())
    losses["loss_fcos_ctr"].backward()
    assert model.head.ctrness.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.cls_subnet.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.head.bbox_subnet.parameters())
    cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS_TOWER = "reg"
    with pytest.raises(ValueError, match="FCOS_CENTERNESS_TOWER"):
        build_model(cfg)


@pytest.mark.parametrize("ctrness", [0.1, 0.9])
def test_train_only_scores_are_p_to_the_0_3_times_iou_to_the_0_7(ctrness):
    """Scores by hand: p^0.3 * IoU^0.7 with IoU = 0.6 is, for p = 0.2, 0.5, 0.9,
    exp(0.3 ln 0.2 + 0.7 ln 0.6) = 0.431534, 0.568063, 0.677608; centerness does not enter."""
    cfg = make_cfg("iou_aware_fcos_smallR_FPN_shapes.yaml", "train_only", None)
    cfg.TEST.DETECTIONS_PER_IMAGE = 1000  # every class survives
    model = build_model(cfg).eval()
    constant_head(model, [0.2, 0.5, 0.9], iou=0.6, ctrness=ctrness)
    with torch.no_grad():
        inst = model(batch(False))[0]["instances"]
    assert len(inst) > 0 and set(inst.pred_classes.tolist()) == {0, 1, 2}
    by_hand = torch.tensor([0.431534, 0.568063, 0.677608])
    assert torch.allclose(inst.scores, by_hand[inst.pred_classes], atol=1e-5)
    assert torch.allclose(inst.centerness, torch.tensor(ctrness), atol=1e-6)


def test_unknown_centerness_mode_is_refused():
    with pytest.raises(ValueError, match="FCOS_CENTERNESS"):
        build_model(make_cfg("iou_aware_fcos_smallR_FPN_shapes.yaml", "ignore"))
