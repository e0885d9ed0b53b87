"""The samplers' and dense losses' config defaults are the published values: Detectron2's
sampling, the OHEM paper, Libra R-CNN, mmdetection's PISA config
(configs/pisa/faster-rcnn_r50_fpn_pisa_1x_coco.py), and the GHM authors' RetinaNet config
(GHM_Detection experiments/cfg_retinanet_ghm_r50_fpn_1x.py and its per-level loss calls)."""
import pytest
from detectron2.config import get_cfg

import imbalance
from imbalance.samplers import build_roi_sampler
from imbalance.samplers.base import RandomSampler, register_alias


@pytest.fixture
def cfg():
    c = get_cfg()
    imbalance.add_imbalance_config(c)
    return c


def test_sampler_defaults(cfg):
    h = cfg.MODEL.ROI_HEADS
    assert h.SAMPLER == "random"
    assert (h.OHEM.VARIANT, h.OHEM.NMS_THRESH) == ("paper", 0.7)  # OHEM paper, Sec. 4.1
    assert (h.IOU_BALANCED.NUM_BINS, h.IOU_BALANCED.INSTANCE_BALANCED_POS) == (3, True)
    # mmdetection's PISA: isr k 2 bias 0; ScoreHLRSampler k 0.5 bias 0, score_thr 0.05,
    # iou_thr 0.5; carl k 1 bias 0.2
    p = h.PISA
    assert (p.POS_GAMMA, p.POS_BETA, p.NEG_GAMMA, p.NEG_BETA) == (2.0, 0.0, 0.5, 0.0)
    assert (p.NEG_SCORE_THRESH, p.NEG_NMS_THRESH) == (0.05, 0.5)
    assert (p.CARL, p.CARL_K, p.CARL_BIAS) == (True, 1.0, 0.2)


def test_dense_loss_defaults(cfg):
    r = cfg.MODEL.RETINANET
    assert (r.CLS_LOSS, r.BBOX_LOSS) == ("focal", "retinanet")  # Detectron2's RetinaNet
    assert (r.GHMC.BINS, r.GHMC.MOMENTUM, r.GHMC.PER_LEVEL) == (30, 0.75, True)
    assert (r.GHMR.MU, r.GHMR.BINS, r.GHMR.MOMENTUM, r.GHMR.LOSS_WEIGHT, r.GHMR.PER_LEVEL) == (
        0.02, 10, 0.7, 10.0, True)


def test_register_alias_names_a_registered_sampler(cfg):
    c = cfg.clone()
    register_alias("uniform_for_test", "RandomSampler")
    c.MODEL.ROI_HEADS.SAMPLER = "uniform_for_test"
    assert type(build_roi_sampler(c)) is RandomSampler
    c.MODEL.ROI_HEADS.SAMPLER = "OHEMSampler"  # a registered class name works too
    assert type(build_roi_sampler(c)).__name__ == "OHEMSampler"
    c.MODEL.ROI_HEADS.SAMPLER = "no_such_sampler"
    with pytest.raises(ValueError, match=r"SAMPLER='no_such_sampler' is not a registered RoI "
                                         r"sampler; known: \[.*'ohem'.*'pisa'.*\]"):
        build_roi_sampler(c)
