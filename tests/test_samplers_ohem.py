"""OHEM keeps the highest-loss RoIs, optionally after an NMS by loss."""
import torch
from detectron2.config import get_cfg

import imbalance
from imbalance.samplers import Candidates, build_roi_sampler

K = 3


def ohem(batch: int, nms: float):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.SAMPLER = "ohem"
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = batch
    cfg.MODEL.ROI_HEADS.OHEM.NMS_THRESH = nms
    return build_roi_sampler(cfg)


def hand_built():
    # 7 RoIs: label, loss, box. RoI 1 nearly coincides with RoI 0 (IoU 0.9); RoI 4 is ignored.
    labels = torch.tensor([0, 0, K, K, -1, 2, K])
    losses = torch.tensor([3.0, 2.9, 0.1, 2.0, 9.0, 0.5, 1.0])
    boxes = torch.tensor([
        [0, 0, 100, 100], [0, 0, 100, 90], [200, 200, 250, 250], [0, 150, 50, 200],
        [10, 10, 60, 60], [300, 0, 350, 50], [120, 0, 170, 50]], dtype=torch.float32)
    scores = torch.full((7, K + 1), 0.25)
    return Candidates(labels, torch.zeros(7), torch.zeros(7, dtype=torch.long), K,
                      predictions=lambda: (scores, losses), boxes=boxes)


def test_ohem_keeps_top_losses_without_nms():
    sampled = ohem(4, 0.0)(hand_built())
    # losses by rank (ignored RoI 4 excluded): 0 (3.0), 1 (2.9), 3 (2.0), 6 (1.0); fg first
    assert sampled.indices.tolist() == [0, 1, 3, 6]
    assert sampled.weights.tolist() == [1.0] * 4


def test_ohem_nms_drops_overlapping_hard_rois():
    sampled = ohem(4, 0.7)(hand_built())
    # RoI 1 overlaps RoI 0 (harder) with IoU 0.9 > 0.7: the next hardest, RoI 5, comes in
    assert sampled.indices.tolist() == [0, 5, 3, 6]


def test_ohem_fewer_candidates_than_batch():
    sampled = ohem(64, 0.7)(hand_built())
    assert sorted(sampled.indices.tolist()) == [0, 2, 3, 5, 6]
