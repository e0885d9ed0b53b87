"""Every config under configs/ loads and builds its model, and the model is what the config's name
and keys promise: the backbone (R-50 / R-101 / X-101 32x8d / the small embedded ResNet), the
dataset and its classes, the schedule ("1x"), the head (cascade stages, masks, offset bins K and
decoding, IoU-aware confidence, sampler, R^3-CNN loops), and the thresholds the heads actually use;
the COCO configs of the imbalance methods hold the values of the reference configs they follow.

One model build per config, on PyTorch's "meta" device (parameters with shapes and no storage,
nothing initialised: the checks read the model's structure and the values its parts were
configured with, never weights; half the time of a CPU build); no training step (each project's
training is exercised by its head tests, tests/test_standalone_configs.py and
tests/test_train_net.py; one step of every COCO config by tests/test_coco_configs_step.py).
"""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.meta_arch import GeneralizedRCNN, RetinaNet
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

from d2infra.data import THING_CLASSES
from train_net import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, os.path.join(REPO, "configs"))
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-"))
INF = float("inf")


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def load(path: str):
    return build_cfg(os.path.join(REPO, "configs", path), ["MODEL.DEVICE", "meta"])


def test_configs_were_found():
    assert len(CONFIGS) >= 60
    assert {p.split("/")[0] for p in CONFIGS} >= {"baselines", "iou_aware", "offset_bin", "r3cnn",
                                                   "samplers"}


# ------------------------------------------------------------------------------------------------
# What the name says, checked on the built model
# ------------------------------------------------------------------------------------------------
def check_backbone(name, cfg, backbone):
    assert isinstance(backbone, FPN)
    bottom_up = backbone.bottom_up
    assert isinstance(bottom_up, ResNet)
    blocks = [len(stage) for stage in bottom_up.stages]
    first = bottom_up.stages[0][0]
    if "smallR" in name:  # d2infra's small ResNet of basic blocks (1 per stage)
        assert cfg.MODEL.BACKBONE.NAME.startswith("build_small_")
        assert blocks == list(cfg.MODEL.SMALL_RESNET.BLOCKS_PER_STAGE) == [1, 1, 1, 1]
        assert not hasattr(first, "conv3")  # BasicBlock: two 3x3 convs
        return
    assert not cfg.MODEL.BACKBONE.NAME.startswith("build_small_")
    assert hasattr(first, "conv3")  # Bottleneck
    if "R_50" in name:
        assert blocks == [3, 4, 6, 3] and first.conv2.groups == 1
        assert first.conv2.out_channels == 64
    elif "R_101" in name:
        assert blocks == [3, 4, 23, 3] and first.conv2.groups == 1
    elif "X_101_32x8d" in name:  # ResNeXt: 32 groups of width 8 in res2's bottleneck
        assert blocks == [3, 4, 23, 3]
        assert first.conv2.groups == 32 and first.conv2.out_channels == 32 * 8
    else:
        raise AssertionError(f"{name}: the name gives no backbone")


# The dataset a config's name ends with: its train and test splits and its number of classes.
DATASETS = {"coco": ("coco_2017_train", "coco_2017_val", 80),
            "shapes": ("shapes_train", "shapes_val", len(THING_CLASSES)),
            "nuclei": ("nuclei_train", "nuclei_val", 1)}


def check_data_and_schedule(name, cfg, num_classes):
    train, test, classes = DATASETS[name.rpartition("_")[2]]
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST, num_classes) == ((train,), (test,), classes)
    if "_1x_" in name:  # Detectron2's 1x schedule: 90k iterations of 16 images, steps at 60k, 80k
        assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.IMS_PER_BATCH) == (
            90000, (60000, 80000), 16)
    assert cfg.OUTPUT_DIR.rstrip("/").endswith(name)


def matcher_thresholds(matcher):
    """Detectron2's Matcher stores its thresholds between -inf and +inf."""
    assert matcher.thresholds[0] == -INF and matcher.thresholds[-1] == INF
    return [float(t) for t in matcher.thresholds[1:-1]]


def check_two_stage(name, cfg, model):
    from offset_bin import OffsetBinOutputLayers

    assert isinstance(model, GeneralizedRCNN)
    rpn = model.proposal_generator
    assert matcher_thresholds(rpn.anchor_matcher) == list(cfg.MODEL.RPN.IOU_THRESHOLDS)
    assert rpn.nms_thresh == cfg.MODEL.RPN.NMS_THRESH
    heads = model.roi_heads
    assert heads.num_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    predictors = (list(heads.box_predictor) if isinstance(heads.box_predictor, torch.nn.ModuleList)
                  else [heads.box_predictor])
    for p in predictors:
        assert p.test_score_thresh == cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        assert p.test_nms_thresh == cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST
        assert p.test_topk_per_image == cfg.TEST.DETECTIONS_PER_IMAGE

    if "cascade" in name:
        assert isinstance(heads, CascadeROIHeads)
        ious = list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
        assert len(ious) == (2 if "2stage" in name or "offset_bin" in name else 3)
        assert ious == [0.5, 0.7] if len(ious) == 2 else ious == [0.5, 0.6, 0.7]
        assert [matcher_thresholds(m) for m in heads.proposal_matchers] == [[t] for t in ious]
        weights = [tuple(w) for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS][:len(ious)]
        assert [tuple(p.box2box_transform.weights) for p in predictors] == weights
    elif "r3cnn" not in name:
        assert isinstance(heads, StandardROIHeads) and not isinstance(heads, CascadeROIHeads)
        assert matcher_thresholds(heads.proposal_matcher) == list(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS)

    assert cfg.MODEL.MASK_ON == ("mask" in name or "r3cnn" in name)
    assert heads.mask_on == cfg.MODEL.MASK_ON

    if "offset_bin" in name:
        assert all(isinstance(p, OffsetBinOutputLayers) for p in predictors)
        ob = cfg.MODEL.OFFSET_BIN
        for p in predictors:
            # Section 4.1: a = 3, n = 20; the config's K and decoding reach every predictor.
            assert (p.coder.offset_range, p.coder.num_bins) == (3.0, 20)
            assert p.coder.num_stages == ob.NUM_STAGES
            assert p.expectation is ob.EXPECTATION is ("argmax" not in name)
            assert p.cls_agnostic_bbox_reg  # one set of 4n bin scores per RoI (section 3.2.2)
        if "K1" in name or "K2" in name:
            assert ob.NUM_STAGES == (1 if "K1" in name else 2)
        elif "r3cnn" not in name:  # Faster: the paper's K = 2; Cascade: K = 1 (section 4.2)
            assert ob.NUM_STAGES == (1 if "cascade" in name else 2)
    else:
        assert not any(isinstance(p, OffsetBinOutputLayers) for p in predictors)

    for sampler in ("ohem", "pisa", "iou_balanced", "random"):
        if f"_{sampler}_" in name:
            assert cfg.MODEL.ROI_HEADS.SAMPLER == sampler
            assert heads.roi_sampler is not None

    if "r3cnn" in name:
        from r3cnn import R3CNNROIHeads

        assert isinstance(heads, R3CNNROIHeads)
        loops = {"1loop": 1, "2loop": 2, "4loop": 4}
        expected = next((n for key, n in loops.items() if key in name), 3)
        assert len(cfg.MODEL.R3CNN.IOU_THRESHOLDS) == expected
        assert cfg.MODEL.R3CNN.MASKIOU_ON == ("r3cnn_L_" in name)


def check_dense(name, cfg, model):
    if "fcos" in name:
        from iou_aware import ConfigurableFCOS, IoUAwareFCOS

        assert isinstance(model, ConfigurableFCOS)
        assert isinstance(model, IoUAwareFCOS) == ("iou_aware" in name)
        assert model.num_classes == cfg.MODEL.FCOS.NUM_CLASSES
        assert model.test_score_thresh == cfg.MODEL.FCOS.SCORE_THRESH_TEST
        assert model.test_nms_thresh == cfg.MODEL.FCOS.NMS_THRESH_TEST
        default_alpha = 0.3  # the authors' iou_aware_fcos_head.py
        if "multiply" in name:
            assert model.centerness_mode == "multiply"
        return cfg.MODEL.FCOS.NUM_CLASSES, default_alpha
    from iou_aware import IoUAwareRetinaNet

    assert isinstance(model, RetinaNet)
    assert isinstance(model, IoUAwareRetinaNet) == ("iou_aware" in name)
    assert model.num_classes == cfg.MODEL.RETINANET.NUM_CLASSES
    assert matcher_thresholds(model.anchor_matcher) == list(cfg.MODEL.RETINANET.IOU_THRESHOLDS)
    assert model.test_score_thresh == cfg.MODEL.RETINANET.SCORE_THRESH_TEST
    assert model.test_nms_thresh == cfg.MODEL.RETINANET.NMS_THRESH_TEST
    if "ghmc" in name:
        assert cfg.MODEL.RETINANET.CLS_LOSS == "ghmc"
    return cfg.MODEL.RETINANET.NUM_CLASSES, 0.5  # Table 3's alpha


def check_coco_references(name, cfg, model):
    """COCO configs of the imbalance methods: the values of the reference configs they follow
    (mmdetection's configs/pisa, configs/faster_rcnn ohem, configs/libra_rcnn, configs/ghm; the
    IoU-aware authors' FCOS test_cfg), and the members of a pair sharing their baseline's loss."""
    if "pisa" in name:  # rpn_proposal and test_cfg.rpn: max_per_img 2000 (baseline: 1000)
        rpn = model.proposal_generator
        assert (rpn.post_nms_topk[True], rpn.post_nms_topk[False]) == (2000, 2000)
        assert cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA == 1.0  # SmoothL1Loss(beta=1.0)
    elif cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and "r3cnn" not in name:
        rpn = model.proposal_generator  # the Detectron2 baseline's proposals (1000, or 2000 in
        expected = 2000 if "cascade" in name else 1000  # training for Cascade R-CNN)
        assert (rpn.post_nms_topk[True], rpn.post_nms_topk[False]) == (expected, 1000)
    for sampler in ("ohem", "pisa", "iou_balanced"):  # sampler num 512, pos_fraction 0.25
        if f"_{sampler}_" in name:
            heads = model.roi_heads
            assert (heads.batch_size_per_image, heads.positive_fraction) == (512, 0.25)
    if "_ohem_" in name:
        assert model.roi_heads.roi_sampler.variant == ("mmdetection" if "mmdet" in name
                                                       else "paper")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if "ghm" in name:  # optim_wrapper clip_grad max_norm 35, norm_type 2
        assert (model.cls_loss, model.bbox_loss) == ("ghmc", "ghmr" if "_ghm_" in name else
                                                     "retinanet")
        assert (model.ghmc.bins, model.ghmc.momentum) == (30, 0.75)
        assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (
            True, "full_model", 35.0, 2.0)
    else:
        assert not clip.ENABLED
    if "retinanet" in name:  # every RetinaNet pair keeps Detectron2's box loss (GHM-R replaces it)
        assert (model.box_reg_loss_type, model.smooth_l1_beta) == ("smooth_l1", 0.1)
    if "fcos" in name:  # the IoU-aware FCOS authors' test_cfg, for both members of the pair
        assert (model.test_score_thresh, model.test_nms_thresh) == (0.05, 0.5)


@pytest.mark.parametrize("path", CONFIGS, ids=stem)
def test_config_builds_the_model_its_name_says(path):
    name, cfg = stem(path), load(path)
    with torch.device("meta"):
        model = build_model(cfg)
    check_backbone(name, cfg, model.backbone)
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        check_two_stage(name, cfg, model)
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    else:
        num_classes, default_alpha = check_dense(name, cfg, model)
        if "iou_aware" in name:
            alpha = cfg.MODEL.IOU_AWARE.ALPHA
            if "product" in name:  # the confidence p * IoU: a negative alpha
                assert alpha is not None and alpha < 0
            assert model.iou_alpha == (default_alpha if alpha is None else alpha)
            assert model.iou_loss_type == ("l2" if "_l2_" in name else "bce")
    check_data_and_schedule(name, cfg, num_classes)
    if name.endswith("_coco"):
        check_coco_references(name, cfg, model)
