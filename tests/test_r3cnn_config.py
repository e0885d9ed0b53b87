"""Tests of r3cnn.config and of the configs/r3cnn files."""
import glob
import os

import pytest
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads

from r3cnn import R3CNNROIHeads, add_r3cnn_config
from train_net import build_cfg

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "r3cnn", "r3cnn_*.yaml")))


def test_defaults_are_the_authors():
    """configs/r3_cnn/r3_cnn-exp_1-row_4.py and -row_6.py of IMPLabUniPr/mmdetection (r3_cnn)."""
    cfg = get_cfg()
    add_r3cnn_config(cfg)
    r3 = cfg.MODEL.R3CNN
    assert r3.NUM_LOOPS_TRAIN == 3 and r3.NUM_LOOPS_TEST == 0
    assert list(r3.IOU_THRESHOLDS) == [0.5, 0.6, 0.7]
    assert list(r3.LOOP_LOSS_WEIGHTS) == [1.0, 0.75, 0.5]
    assert r3.MASK_INFO_FLOW is False  # their HTC flow never runs in training
    assert r3.SCORE_AVERAGING == "logits"  # mean of the cls_score logits, then softmax
    assert r3.NONLOCAL_KERNEL_SIZE == 7 and r3.NONLOCAL_REDUCTION == 2
    assert (r3.MASKIOU_NUM_CONV, r3.MASKIOU_CONV_DIM, r3.MASKIOU_NUM_LIGHT_CONV) == (4, 256, 2)
    assert r3.MASKIOU_LOSS_WEIGHT == 0.5 and r3.MASKIOU_LOGIT_THRESH == 0.5


@pytest.mark.parametrize("scale", ["smallR_FPN_shapes", "R_50_FPN_1x_coco"])
def test_four_loop_config_is_the_authors_exp_3(scale):
    cfg = build_cfg(os.path.join(ROOT, "configs", "r3cnn", f"r3cnn_naive_4loop_{scale}.yaml"), [])
    assert list(cfg.MODEL.R3CNN.IOU_THRESHOLDS) == [0.5, 0.6, 0.7, 0.8]
    assert list(cfg.MODEL.R3CNN.LOOP_LOSS_WEIGHTS) == [1.0, 0.75, 0.5, 0.3]


def test_both_scales_and_all_variants_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    for scale in ("smallR_FPN_shapes", "R_50_FPN_1x_coco"):
        for v in ("naive", "naive_dec", "L", "naive_1loop", "naive_2loop", "naive_4loop"):
            assert f"r3cnn_{v}_{scale}.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_r3cnn_heads(path):
    cfg = build_cfg(path, [])  # as train_net.py builds it, every project's keys included
    channels = cfg.MODEL.FPN.OUT_CHANNELS
    shape = {f"p{k}": ShapeSpec(channels=channels, stride=2 ** k) for k in range(2, 7)}
    heads = build_roi_heads(cfg, shape)
    assert isinstance(heads, R3CNNROIHeads)
    assert heads.num_loops_train == len(cfg.MODEL.R3CNN.IOU_THRESHOLDS)
    assert heads.num_loops_test == heads.num_loops_train
    assert [m.thresholds[1] for m in heads.loop_matchers] == list(cfg.MODEL.R3CNN.IOU_THRESHOLDS)
    assert heads.mask_flow_conv is None and heads.score_averaging == "logits"
