"""OHEM keeps the highest-loss RoIs: the paper's variant by total loss after an NMS by loss, with
no foreground fraction; mmdetection's by classification loss, positives capped."""
import pytest
import torch
from detectron2.config import get_cfg

import imbalance
from imbalance.samplers import Candidates, build_roi_sampler

K = 3


def ohem(batch: int, nms: float, variant: str = "paper"):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.SAMPLER = "ohem"
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = batch
    cfg.MODEL.ROI_HEADS.OHEM.NMS_THRESH = nms
    cfg.MODEL.ROI_HEADS.OHEM.VARIANT = variant
    assert cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION == 0.25
    return build_roi_sampler(cfg)


def hand_built():
    # 7 RoIs: label, loss, box. RoI 1 nearly coincides with RoI 0 (IoU 0.9); RoI 4 is ignored.
    # Total losses 3.0 2.9 0.1 2.0 9.0 0.5 1.0; RoI 0's is mostly box loss (cls 1.0 + box 2.0).
    labels = torch.tensor([0, 0, K, K, -1, 2, K])
    ce = torch.tensor([1.0, 2.9, 0.1, 2.0, 9.0, 0.5, 1.0])
    box = torch.tensor([2.0, 0, 0, 0, 0, 0, 0])
    boxes = torch.tensor([
        [0, 0, 100, 100], [0, 0, 100, 90], [200, 200, 250, 250], [0, 150, 50, 200],
        [10, 10, 60, 60], [300, 0, 350, 50], [120, 0, 170, 50]], dtype=torch.float32)
    scores = torch.full((7, K + 1), 0.25)
    return Candidates(labels, torch.zeros(7), torch.zeros(7, dtype=torch.long), K,
                      predictions=lambda: (scores, ce, box), boxes=boxes)


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


def test_ohem_mmdetection_variant_ranks_by_classification_loss_with_a_cap():
    sampled = ohem(4, 0.7, "mmdetection")(hand_built())
    # 4 * 0.25 = 1 positive: the highest classification loss among 0 (1.0), 1 (2.9), 5 (0.5);
    # then the 3 negatives by classification loss (all there are); no NMS
    assert sampled.indices.tolist() == [1, 3, 6, 2]


@pytest.mark.parametrize("variant,expected_fg", [("paper", 16), ("mmdetection", 4)])
def test_ohem_cap_holds_when_positives_are_hardest(variant, expected_fg):
    # 30 positives all harder than 50 negatives: the paper's OHEM takes only positives, the
    # mmdetection variant at most POSITIVE_FRACTION * B = 4 of B = 16
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1] * 30 + [K] * 50)
    ce = torch.cat([2.0 + torch.rand(30, generator=g), torch.rand(50, generator=g)])
    scores = torch.full((80, K + 1), 0.25)
    c = Candidates(labels, torch.zeros(80), torch.zeros(80, dtype=torch.long), K,
                   predictions=lambda: (scores, ce, torch.zeros(80)))
    sampled = ohem(16, 0.0, variant)(c)
    is_fg = labels[sampled.indices] != K
    assert len(sampled.indices) == 16 and int(is_fg.sum()) == expected_fg
    if variant == "mmdetection":  # and the hardest of each kind
        assert set(sampled.indices[:4].tolist()) == set(torch.topk(ce[:30], 4).indices.tolist())
        assert set(sampled.indices[4:].tolist()) == set(
            (30 + torch.topk(ce[30:], 12).indices).tolist())


def test_ohem_rejects_unknown_variant():
    with pytest.raises(ValueError, match="OHEM.VARIANT"):
        ohem(4, 0.7, "ssd")


@pytest.mark.parametrize("variant,expected", [
    ("paper", list(range(16))),  # the top 16 by total loss, all equal: the first 16 by index
    ("mmdetection", list(range(4)) + list(range(100, 112))),  # 4 positives, 12 negatives
])
def test_ohem_equal_losses_keep_index_order(variant, expected):
    # 100 positives and 100 negatives with the same losses (CPU's unstable sort reorders ties of
    # this size): the lower index is kept first, on any device
    labels = torch.tensor([1] * 100 + [K] * 100)
    scores = torch.full((200, K + 1), 0.25)
    c = Candidates(labels, torch.zeros(200), torch.zeros(200, dtype=torch.long), K,
                   predictions=lambda: (scores, torch.ones(200), torch.zeros(200)))
    assert ohem(16, 0.0, variant)(c).indices.tolist() == expected
