"""Tests of r3cnn.box_head.R3CNNLightConvHead (R^3-CNN-L's box head) against the layer sizes of the
authors' Shared2FCCBBoxHead (non-local, 7x7 conv 256->128, 7x7 conv 128->64, flatten)."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_box_head
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from r3cnn import R3CNNLightConvHead, add_r3cnn_config


def make_cfg():
    cfg = get_cfg()
    add_r3cnn_config(cfg)
    cfg.MODEL.ROI_BOX_HEAD.NAME = "R3CNNLightConvHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 0
    return cfg


def test_registered_and_shapes():
    torch.manual_seed(0)
    head = build_box_head(make_cfg(), ShapeSpec(channels=8, height=7, width=7))
    assert isinstance(head, R3CNNLightConvHead)
    assert (head.output_shape.channels, head.output_shape.height) == (2, 7)
    assert head(torch.rand(5, 8, 7, 7)).shape == (5, 2 * 7 * 7)
    assert head(torch.rand(0, 8, 7, 7)).shape == (0, 2 * 7 * 7)


def test_coco_widths_and_parameter_count_hand_computed():
    head = build_box_head(make_cfg(), ShapeSpec(channels=256, height=7, width=7))
    assert [tuple(c.weight.shape) for c in head.convs] == [(128, 256, 7, 7), (64, 128, 7, 7)]
    non_local = 3 * (256 * 128 * 49 + 128) + (128 * 256 * 49 + 256)  # four 7x7 convs
    convs = (256 * 128 * 49 + 128) + (128 * 64 * 49 + 64)
    assert sum(p.numel() for p in head.parameters()) == non_local + convs
    # the predictor reads the flattened 64 x 7 x 7 map: no hidden FC, no pooling
    predictor = FastRCNNOutputLayers(head.output_shape, box2box_transform=Box2BoxTransform((10, 10, 5, 5)), num_classes=80,
                                     cls_agnostic_bbox_reg=True)
    assert predictor.cls_score.in_features == 64 * 49 == 3136


def test_forward_is_nonlocal_then_convs_then_flatten():
    torch.manual_seed(0)
    head = build_box_head(make_cfg(), ShapeSpec(channels=4, height=7, width=7))
    torch.nn.init.normal_(head.non_local.out.weight)  # make the block matter
    x = torch.randn(3, 4, 7, 7)
    with torch.no_grad():
        h = F.relu(head.non_local(x))
        for conv in head.convs:
            h = F.relu(F.conv2d(h, conv.weight, conv.bias, padding=3))
        assert torch.allclose(head(x), h.flatten(1), atol=1e-6)
    # no global pooling: moving content inside the RoI changes the output
    assert not torch.allclose(head(x), head(torch.roll(x, 2, dims=3)), atol=1e-4)


def test_kernels_come_from_the_config():
    cfg = make_cfg()
    cfg.MODEL.R3CNN.LIGHT_HEAD_KERNEL_SIZE = 3
    head = build_box_head(cfg, ShapeSpec(channels=4, height=7, width=7))
    assert head.convs[0].weight.shape == (2, 4, 3, 3)
    assert head.non_local.theta.weight.shape[-1] == 7


def test_fc_layers_are_an_error():
    cfg = make_cfg()
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    with pytest.raises(ValueError, match="NUM_FC 0"):
        build_box_head(cfg, ShapeSpec(channels=4, height=7, width=7))
