"""PISA: IoU-hierarchical local rank, Eqs. 5-6 of Oksuz et al., and the weighted Fast R-CNN loss
that applies the weights."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import imbalance
from d2infra.modeling import build_box_predictor
from imbalance.modeling.weighted_fast_rcnn import WeightedFastRCNNOutputLayers
from imbalance.samplers import Candidates, build_roi_sampler
from imbalance.samplers.pisa import hierarchical_local_rank

K = 2


def test_hierarchical_local_rank():
    # class 0: gt 0 with IoUs .9 .8 .7, gt 1 with .6 .55; class 1: gt 2 with .75 .65
    ious = torch.tensor([0.8, 0.6, 0.9, 0.55, 0.7, 0.65, 0.75])
    gts = torch.tensor([0, 1, 0, 1, 0, 2, 2])
    classes = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    # class 0 order: local rank 0 (.9, .6), then local rank 1 (.8, .55), then .7
    assert hierarchical_local_rank(ious, gts, classes).tolist() == [2, 1, 0, 3, 4, 1, 0]


def pisa_cfg(gamma, beta):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.SAMPLER = "pisa"
    c = cfg.MODEL.ROI_HEADS.PISA
    c.POS_GAMMA, c.POS_BETA, c.NEG_GAMMA, c.NEG_BETA = gamma, beta, 1.0, 0.5
    return cfg


def test_pisa_weights_per_class_and_negatives_by_score():
    # positives: 3 of class 0 (one gt), 1 of class 1; negatives: 2 scoring class 0, 1 class 1;
    # one ignored candidate, which is dropped
    labels = torch.tensor([0, 0, 0, 1, K, K, K, -1])
    ious = torch.tensor([0.7, 0.9, 0.8, 0.6, 0.1, 0.2, 0.3, 0.45])
    matched = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0])
    scores = torch.tensor([[0.3, 0.1, 0.6]] * 4 + [[0.2, 0.1, 0.7], [0.5, 0.1, 0.4],
                                                   [0.1, 0.3, 0.6], [0.3, 0.3, 0.4]])
    c = Candidates(labels, ious, matched, K, predictions=lambda: (scores, None))
    sampled = build_roi_sampler(pisa_cfg(2.0, 0.2))(c)
    assert sampled.indices.tolist() == [0, 1, 2, 3, 4, 5, 6]
    n_max = 3  # class 0 positives
    r = torch.tensor([2, 0, 1, 0]).float()
    pos_w = ((1 - 0.2) * (n_max - r) / n_max + 0.2) ** 2
    # negatives: class 0 scores .2 (rank 1), .5 (rank 0); class 1 score .3 (rank 0)
    r = torch.tensor([1, 0, 0]).float()
    neg_w = ((1 - 0.5) * (n_max - r) / n_max + 0.5) ** 1
    assert sampled.weights.tolist() == pytest.approx(torch.cat([pos_w, neg_w]).tolist())


def predictor_and_batch(cls, num_rois=12, agnostic=False, loss_type="smooth_l1"):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = agnostic
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = loss_type
    cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.5
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = cls
    torch.manual_seed(0)
    predictor = build_box_predictor(cfg, ShapeSpec(channels=8))
    g = torch.Generator().manual_seed(1)
    proposals = []
    for n in (num_rois, num_rois // 2):
        p = Instances((64, 64))
        xy = torch.rand(n, 2, generator=g) * 30
        p.proposal_boxes = Boxes(torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 20], 1))
        p.gt_boxes = Boxes(p.proposal_boxes.tensor + torch.randn(n, 4, generator=g))
        p.gt_classes = torch.randint(0, K + 1, (n,), generator=g)
        proposals.append(p)
    x = torch.randn(sum(len(p) for p in proposals), 8, generator=g)
    return predictor, predictor(x), proposals


@pytest.mark.parametrize("agnostic,loss_type", [(False, "smooth_l1"), (True, "smooth_l1"),
                                                (False, "giou")])
def test_weighted_predictor_all_ones_equals_fast_rcnn(agnostic, loss_type):
    ref_pred, ref_out, proposals = predictor_and_batch("FastRCNNOutputLayers", agnostic=agnostic,
                                                       loss_type=loss_type)
    pred, out, _ = predictor_and_batch("WeightedFastRCNNOutputLayers", agnostic=agnostic,
                                       loss_type=loss_type)
    assert type(ref_pred) is FastRCNNOutputLayers and isinstance(pred, WeightedFastRCNNOutputLayers)
    for p in proposals:
        p.loss_weights = torch.ones(len(p))
    with EventStorage():
        ref, got = ref_pred.losses(ref_out, proposals), pred.losses(out, proposals)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


@pytest.mark.parametrize("agnostic,loss_type", [(False, "smooth_l1"), (True, "giou")])
def test_weighted_predictor_equals_weighted_sum_of_single_roi_losses(agnostic, loss_type):
    pred, out, proposals = predictor_and_batch("WeightedFastRCNNOutputLayers", agnostic=agnostic,
                                               loss_type=loss_type)
    g = torch.Generator().manual_seed(5)
    for p in proposals:
        p.loss_weights = torch.rand(len(p), generator=g)
    with EventStorage():
        got = pred.losses(out, proposals)
    # reference: Detectron2's own losses on one RoI at a time (R = 1), weighted, over R RoIs
    flat = Instances.cat(proposals)
    ref = {"loss_cls": 0.0, "loss_box_reg": 0.0}
    for i in range(len(flat)):
        with EventStorage():
            single = FastRCNNOutputLayers.losses(pred, (out[0][i:i + 1], out[1][i:i + 1]),
                                                 [flat[i:i + 1]])
        for k in ref:
            ref[k] = ref[k] + flat.loss_weights[i] * single[k]
    for k in ref:
        assert float(got[k]) == pytest.approx(float(ref[k]) / len(flat), rel=1e-5), k
    # the weights carry gradient to the predictions as scaled per-RoI losses
    sum(got.values()).backward()
    assert pred.cls_score.weight.grad is not None
