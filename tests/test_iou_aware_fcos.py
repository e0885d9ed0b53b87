"""Tests of iou_aware.fcos: FCOS from yaml, and IoU-aware FCOS in its two centerness modes."""
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


@pytest.mark.parametrize("mode", ["replace", "multiply"])
def test_iou_aware_fcos_losses(mode):
    torch.manual_seed(0)
    model = build_model(make_cfg("iou_aware_fcos_smallR_FPN_shapes.yaml", mode)).train()
    assert hasattr(model.head, "ctrness") == (mode == "multiply")
    with EventStorage():
        losses = model(batch())
    expected = {"loss_fcos_cls", "loss_fcos_loc", "loss_iou"}
    if mode == "multiply":
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
