"""Oksuz et al., "Imbalance Problems in Object Detection: A Review", Table 3: six boxes with their
scores, losses and IoUs, and what each sampling method selects (hard) or how it weighs them (soft).
One positive and two negatives are to be chosen; one foreground class."""
import math

import pytest
import torch
from detectron2.config import get_cfg

import imbalance
from imbalance.samplers import Candidates, build_roi_sampler

# (p_s, loss, IoU, positive?) of the six boxes, left to right as in the table. p_s is the predicted
# probability of the box's ground-truth class: class 0 for positives, background for negatives.
TABLE3 = [
    (0.8, 0.22, 0.95, True),
    (0.2, 1.61, 0.55, True),
    (0.1, 2.30, 0.35, False),
    (0.3, 1.20, 0.15, False),
    (0.6, 0.51, 0.06, False),
    (1.0, 0.00, 0.00, False),
]
NUM_CLASSES = 1


def table3_candidates() -> Candidates:
    labels = torch.tensor([0 if pos else NUM_CLASSES for *_, pos in TABLE3])
    ious = torch.tensor([iou for _, _, iou, _ in TABLE3])
    p_fg = torch.tensor([p if pos else 1.0 - p for p, _, _, pos in TABLE3])
    scores = torch.stack([p_fg, 1.0 - p_fg], dim=1)  # (N, K+1) softmax, background last
    losses = torch.tensor([loss for _, loss, _, _ in TABLE3])  # all classification here
    # six boxes that do not overlap (the table draws them apart), as regressed boxes for PISA
    boxes = torch.tensor([[20.0 * i, 0, 20.0 * i + 10, 10] for i in range(6)])
    return Candidates(labels, ious, torch.zeros(6, dtype=torch.long), NUM_CLASSES,
                      predictions=lambda: (scores, losses, torch.zeros(6)),
                      head=lambda idx: (scores[idx].log(), boxes[idx]))


def sampler_cfg(name: str):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.SAMPLER = name
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 3  # one positive and two negatives
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 1.0 / 3.0
    cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
    return cfg


def test_ohem_selects_the_highest_losses():
    # Table 3, OHEM row: x, check | check, check, x, x  (boxes 2, 3, 4 of highest loss)
    sampled = build_roi_sampler(sampler_cfg("ohem"))(table3_candidates())
    assert sampled.indices.tolist() == [1, 2, 3]
    assert sampled.weights.tolist() == [1.0, 1.0, 1.0]


def test_iou_based_sampling_one_negative_per_bin():
    # Table 3, IoU-based sampling with K=2 over [0, 0.5): "random sample x1" in each IoU bin, i.e.
    # box 3 (IoU 0.35, alone in [0.25, 0.5)) always and one of boxes 4-6 (in [0, 0.25)).
    cfg = sampler_cfg("iou_balanced")
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.NUM_BINS = 2
    sampler = build_roi_sampler(cfg)
    seen_neg, seen_pos = set(), set()
    for seed in range(40):
        torch.manual_seed(seed)
        idx = sampler(table3_candidates()).indices.tolist()
        assert len(idx) == 3
        assert idx[0] in (0, 1)  # "does not specify a criterion for positives": random
        assert 2 in idx[1:]
        (other,) = [i for i in idx[1:] if i != 2]
        assert other in (3, 4, 5)
        seen_pos.add(idx[0])
        seen_neg.add(other)
    assert seen_neg == {3, 4, 5} and seen_pos == {0, 1}


def test_pisa_as_published_with_gamma1_beta0():
    # Table 3's PISA row (1.00, 0.75 | 1.00, 0.75, 0.50, 0.25) is the review's reading: every box
    # kept, one N_max = 4 for positives and negatives. PISA as published (mmdetection's
    # ScoreHLRSampler) keeps one positive at random and the two negatives of highest foreground
    # score (.9, .7; box 6 scores 0 and is not ranked), with N_max = max(2 wanted, 3 ranked):
    # r_bar = 3/3, 2/3, renormalised on their losses (2.30, 1.20) to keep the total.
    cfg = sampler_cfg("pisa")
    c = cfg.MODEL.ROI_HEADS.PISA
    c.NEG_GAMMA, c.NEG_BETA = 1.0, 0.0
    sampled = build_roi_sampler(cfg)(table3_candidates())
    assert sampled.indices[0] in (0, 1) and sampled.indices[1:].tolist() == [2, 3]
    ce = [-math.log(0.1), -math.log(0.3)]
    ratio = sum(ce) / (1.0 * ce[0] + 2.0 / 3.0 * ce[1])
    assert sampled.weights.tolist() == pytest.approx([1.0, ratio, 2.0 / 3.0 * ratio], rel=1e-5)
