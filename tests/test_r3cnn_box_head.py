"""Tests of r3cnn.box_head.R3CNNLightConvHead (R^3-CNN-L's box head)."""
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_box_head
from imbalance import add_imbalance_config

from r3cnn import R3CNNLightConvHead, add_r3cnn_config


def make_cfg():
    cfg = get_cfg()
    add_imbalance_config(cfg)
    add_r3cnn_config(cfg)
    cfg.MODEL.ROI_BOX_HEAD.NAME = "R3CNNLightConvHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 6
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 10
    return cfg


def test_registered_and_shapes():
    torch.manual_seed(0)
    head = build_box_head(make_cfg(), ShapeSpec(channels=4, height=7, width=7))
    assert isinstance(head, R3CNNLightConvHead)
    assert head.output_shape.channels == 10
    out = head(torch.rand(5, 4, 7, 7))
    assert out.shape == (5, 10)
    assert head(torch.rand(0, 4, 7, 7)).shape == (0, 10)


def test_parameter_count_hand_computed():
    head = build_box_head(make_cfg(), ShapeSpec(channels=4, height=7, width=7))
    convs = (4 * 6 * 49 + 6) + (6 * 6 * 49 + 6)  # two 7x7 convs with bias (no norm)
    non_local = 3 * (6 * 3 * 49 + 3) + (3 * 6 + 6)  # theta, phi, g (7x7) + 1x1 out
    fc = 6 * 10 + 10
    assert sum(p.numel() for p in head.parameters()) == convs + non_local + fc


def test_convs_use_the_configured_kernel():
    cfg = make_cfg()
    cfg.MODEL.R3CNN.LIGHT_HEAD_KERNEL_SIZE = 3
    head = build_box_head(cfg, ShapeSpec(channels=4, height=7, width=7))
    assert head.convs[0].weight.shape == (6, 4, 3, 3)
    assert head.non_local.theta.weight.shape[-1] == 7
