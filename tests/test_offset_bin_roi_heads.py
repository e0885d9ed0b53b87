"""OffsetBinROIHeads and OffsetBinCascadeROIHeads: build, one training step (with an image without
ground truth) and inference on tiny random features."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from imbalance import add_imbalance_config
from offset_bin import (
    OffsetBinCascadeROIHeads,
    OffsetBinOutputLayers,
    OffsetBinROIHeads,
    add_offset_bin_config,
)

IMAGE_SIZE = (64, 64)


def make_cfg(head: str):
    cfg = get_cfg()
    add_imbalance_config(cfg)
    add_offset_bin_config(cfg)
    cfg.MODEL.ROI_HEADS.NAME = head
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    if head == "OffsetBinCascadeROIHeads":
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = [0.5, 0.7]  # the paper's 2 stages
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = [[10.0, 10.0, 5.0, 5.0],
                                                           [20.0, 20.0, 10.0, 10.0]]
    return cfg


SHAPES = {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(channels=8, stride=8)}


def inputs():
    g = torch.Generator().manual_seed(0)
    features = {
        "p2": torch.randn(2, 8, 16, 16, generator=g),
        "p3": torch.randn(2, 8, 8, 8, generator=g),
    }
    gt = torch.tensor([[5.0, 5.0, 30.0, 40.0], [30.0, 20.0, 60.0, 50.0]])
    proposals = []
    for _ in range(2):
        jitter = torch.rand(10, 4, generator=g) * 8 - 4
        p = Instances(IMAGE_SIZE)
        p.proposal_boxes = Boxes(torch.cat([gt, gt]).repeat(3, 1)[:10] + jitter)
        p.objectness_logits = torch.randn(10, generator=g)
        proposals.append(p)
    with_gt = Instances(IMAGE_SIZE)
    with_gt.gt_boxes = Boxes(gt)
    with_gt.gt_classes = torch.tensor([0, 2])
    no_gt = Instances(IMAGE_SIZE)  # an image without ground truth
    no_gt.gt_boxes = Boxes(torch.zeros(0, 4))
    no_gt.gt_classes = torch.zeros(0, dtype=torch.long)
    return features, proposals, [with_gt, no_gt]


@pytest.mark.parametrize(
    "head, cls, expected_keys",
    [
        ("OffsetBinROIHeads", OffsetBinROIHeads,
         {"loss_cls", "loss_bin_stage0", "loss_bin_stage1"}),
        ("OffsetBinCascadeROIHeads", OffsetBinCascadeROIHeads,
         {f"{name}_stage{s}" for s in (0, 1)
          for name in ("loss_cls", "loss_bin_stage0", "loss_bin_stage1")}),
    ],
)
def test_train_step_and_inference(head, cls, expected_keys):
    torch.manual_seed(0)
    roi_heads = build_roi_heads(make_cfg(head), SHAPES)
    assert isinstance(roi_heads, cls)
    predictors = roi_heads.box_predictor
    predictors = list(predictors) if isinstance(predictors, torch.nn.ModuleList) else [predictors]
    assert all(isinstance(p, OffsetBinOutputLayers) for p in predictors)
    if head == "OffsetBinCascadeROIHeads":
        assert len(predictors) == 2
        assert [tuple(p.box2box_transform.weights) for p in predictors] == [(10.0, 10.0, 5.0, 5.0),
                                                                     (20.0, 20.0, 10.0, 10.0)]

    features, proposals, targets = inputs()
    roi_heads.train()
    with EventStorage():
        _, losses = roi_heads(None, features, proposals, targets)
    assert set(losses) == expected_keys
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(v.item() > 0 for k, v in losses.items() if "loss_bin" in k)  # image 1 has fg
    sum(losses.values()).backward()
    assert all(p.bin_pred.weight.grad is not None for p in predictors)

    roi_heads.eval()
    with torch.no_grad():
        results, _ = roi_heads(None, features, proposals)
    assert len(results) == 2
    for r in results:
        assert r.pred_boxes.tensor.shape[1] == 4 and torch.isfinite(r.pred_boxes.tensor).all()
        assert (r.pred_classes < 3).all()


def test_predictor_defaults_to_offset_bin_and_rejects_others():
    cfg = make_cfg("OffsetBinROIHeads")
    assert cfg.MODEL.ROI_BOX_HEAD.PREDICTOR == "FastRCNNOutputLayers"  # the shared default
    assert isinstance(build_roi_heads(cfg, SHAPES).box_predictor, OffsetBinOutputLayers)
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "WeightedFastRCNNOutputLayers"
    with pytest.raises(ValueError, match="needs an OffsetBinOutputLayers"):
        build_roi_heads(cfg, SHAPES)


def test_cascade_needs_class_agnostic_bins():
    cfg = make_cfg("OffsetBinCascadeROIHeads")
    cfg.MODEL.OFFSET_BIN.CLS_AGNOSTIC = False
    with pytest.raises(ValueError, match="CLS_AGNOSTIC"):
        build_roi_heads(cfg, SHAPES)
