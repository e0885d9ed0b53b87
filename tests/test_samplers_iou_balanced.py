"""IoU-balanced sampling: equal counts per IoU bin when every bin has enough negatives, filled from
the other bins when one lacks them; positives spread evenly over ground-truth boxes."""
import pytest
import torch
from detectron2.config import get_cfg

import imbalance
from imbalance.samplers import Candidates, build_roi_sampler
from imbalance.samplers.iou_balanced import balanced_draw, balanced_quotas

K = 2


def sampler(batch=32, fraction=0.25, bins=3):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.SAMPLER = "iou_balanced"
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = batch
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = fraction
    cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.6]
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.NUM_BINS = bins
    return build_roi_sampler(cfg)


def negatives(per_bin):
    """Negatives with IoUs inside each of the 3 bins [0, .2), [.2, .4), [.4, .6)."""
    ious = torch.cat([torch.full((n,), 0.2 * b + 0.1) for b, n in enumerate(per_bin)])
    return ious


def make(neg_per_bin, pos_per_gt=()):
    neg_ious = negatives(neg_per_bin)
    pos_ious = torch.full((sum(pos_per_gt),), 0.8)
    pos_gt = torch.cat([torch.full((n,), g, dtype=torch.long) for g, n in enumerate(pos_per_gt)]
                       ) if pos_per_gt else torch.zeros(0, dtype=torch.long)
    labels = torch.cat([torch.zeros(len(pos_ious), dtype=torch.long),
                        torch.full((len(neg_ious),), K)])
    ious = torch.cat([pos_ious, neg_ious])
    matched = torch.cat([pos_gt, torch.zeros(len(neg_ious), dtype=torch.long)])
    return Candidates(labels, ious, matched, K)


def neg_bin_counts(c, idx):
    neg = idx[c.labels[idx] == K]
    return torch.bincount((c.ious[neg] / 0.2).long(), minlength=3).tolist()


def test_equal_counts_per_bin_when_each_bin_has_enough():
    c = make([100, 30, 20])
    for seed in range(5):
        torch.manual_seed(seed)
        idx = sampler(batch=24)(c).indices  # no positives: 24 negatives, 8 per bin
        assert neg_bin_counts(c, idx) == [8, 8, 8]
        assert len(set(idx.tolist())) == 24


def test_fills_from_other_bins_when_one_lacks():
    c = make([100, 30, 3])
    torch.manual_seed(0)
    idx = sampler(batch=24)(c).indices
    # bin 2 gives its 3; the other 21 are shared evenly by bins 0 and 1 (one gets the odd one)
    counts = neg_bin_counts(c, idx)
    assert counts[2] == 3 and sorted(counts[:2]) == [10, 11]
    c = make([100, 4, 3])
    idx = sampler(batch=24)(c).indices
    assert neg_bin_counts(c, idx) == [17, 4, 3]


def test_instance_balanced_positives_and_random_counts():
    c = make([50, 50, 50], pos_per_gt=(30, 2, 10))
    torch.manual_seed(1)
    idx = sampler(batch=32, fraction=0.25)(c).indices
    pos = idx[c.labels[idx] == 0]
    # 8 positives as Detectron2's 1:3 split; gt 1 has only 2, gts 0 and 2 share the rest: 3 each
    assert torch.bincount(c.matched_idxs[pos], minlength=3).tolist() == [3, 2, 3]
    assert neg_bin_counts(c, idx) == [8, 8, 8]


def test_balanced_quotas_water_filling():
    assert balanced_quotas(torch.tensor([10, 10, 10]), 9).tolist() == [3, 3, 3]
    assert balanced_quotas(torch.tensor([1, 10, 10]), 9).tolist() == [1, 4, 4]
    assert balanced_quotas(torch.tensor([1, 2, 0]), 9).tolist() == [1, 2, 0]
    q = balanced_quotas(torch.tensor([5, 5, 5]), 4)
    assert sorted(q.tolist()) == [1, 1, 2]


def test_one_bin_is_uniform_and_zero_bins_are_refused():
    # K = 1: one bin over [0, 0.6), the negatives drawn uniformly, as Detectron2's
    c = make([10, 10, 10])
    idx = sampler(batch=12, bins=1)(c).indices
    assert len(set(idx.tolist())) == 12 and bool((c.labels[idx] == K).all())
    assert sampler(bins=1).iou_bins(torch.tensor([0.0, 0.3, 0.59])).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"IOU_BALANCED.NUM_BINS must be >= 1, got 0"):
        sampler(bins=0)


def test_iou_bins_by_hand():
    # K = 3 over [0, 0.6): floor(IoU / 0.6 * 3); an IoU at or above 0.6 (not a negative) would be
    # clamped into the last bin, a negative one into the first
    got = sampler(bins=3).iou_bins(torch.tensor([-0.1, 0.0, 0.19, 0.21, 0.45, 0.6, 0.9]))
    assert got.tolist() == [0, 0, 0, 1, 2, 2, 2]


def test_uniform_positives_skip_ignored_candidates():
    # INSTANCE_BALANCED_POS False: positives drawn uniformly, more of them (12, of classes 0 and
    # 1) than the quota (32 * 0.25 = 8); the candidates labelled -1 are neither positives nor
    # negatives
    labels = torch.tensor([0] * 6 + [1] * 6 + [-1] * 10 + [K] * 40)
    ious = torch.cat([torch.full((12,), 0.8), torch.full((10,), 0.5),
                      torch.rand(40, generator=torch.Generator().manual_seed(0)) * 0.6])
    c = Candidates(labels, ious, torch.zeros(62, dtype=torch.long), K)
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.SAMPLER = "iou_balanced"
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.INSTANCE_BALANCED_POS = False
    seen = set()
    for seed in range(4):
        torch.manual_seed(seed)
        idx = build_roi_sampler(cfg)(c).indices.tolist()
        pos, neg = idx[:8], idx[8:]
        assert len(set(pos)) == 8 and set(pos) <= set(range(12))
        assert len(neg) == 24 and set(neg) <= set(range(22, 62))
        seen |= set(pos)
    assert len(seen) > 8  # drawn at random, not the first 8


def test_balanced_draw_edges():
    assert balanced_draw(torch.tensor([5]), torch.tensor([0]), 1).tolist() == [5]
    assert balanced_draw(torch.tensor([5, 6]), torch.tensor([0, 1]), 0).tolist() == []
    # 2 draws from 3 equal groups: 2 groups get one each, the third none, wherever it is
    indices, groups = torch.arange(10, 19), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    for seed in range(6):
        torch.manual_seed(seed)
        got = balanced_draw(indices, groups, 2)
        assert len(got) == 2 and len(set(groups[got - 10].tolist())) == 2


def test_balanced_quotas_remainder_goes_to_groups_with_room():
    # counts (1, 5, 5), 4 draws: one each (group 0 is then full), and the remaining one to group
    # 1 or 2 at random, never to the full group 0
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        q = balanced_quotas(torch.tensor([1, 5, 5]), 4).tolist()
        assert q[0] == 1 and sorted(q[1:]) == [1, 2]
        seen.add(tuple(q))
    assert seen == {(1, 2, 1), (1, 1, 2)}
    assert balanced_quotas(torch.tensor([0, 0]), 3).tolist() == [0, 0]
    assert balanced_quotas(torch.tensor([4, 4]), 0).tolist() == [0, 0]


def test_balanced_quotas_fill_level_by_hand():
    # 50 draws over (0, 3, 7, 12, 40): the three small groups give all (22), the last gets 28
    assert balanced_quotas(torch.tensor([0, 3, 7, 12, 40]), 50).tolist() == [0, 3, 7, 12, 28]
    # 20 over (2, 9, 9, 9): 2 + 3 x 6
    assert balanced_quotas(torch.tensor([2, 9, 9, 9]), 20).tolist() == [2, 6, 6, 6]
    # 22: the level stays 6 (7 would need 23), the 2 left go to two of the three open groups
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        q = balanced_quotas(torch.tensor([2, 9, 9, 9]), 22).tolist()
        assert q[0] == 2 and sorted(q[1:]) == [6, 7, 7]
        seen.add(tuple(q))
    assert len(seen) == 3
    # more draws than members: everything
    assert balanced_quotas(torch.tensor([4, 0, 6]), 100).tolist() == [4, 0, 6]


def test_balanced_draw_takes_each_group_quota_from_its_own_members():
    # 40 groups (ground-truth instances) of 1 to 6 members: each group's quota is met exactly,
    # with members of that group only and no index twice
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 7, (40,), generator=g)
    groups = torch.repeat_interleave(torch.arange(40) * 3, sizes)  # group values need not be dense
    indices = torch.arange(len(groups)) + 1000
    torch.manual_seed(0)
    got = balanced_draw(indices, groups, 100)
    assert len(got) == 100 and len(set(got.tolist())) == 100
    per_group = torch.bincount(groups[got - 1000] // 3, minlength=40)
    # by hand: level L with sum(min(size, L)) <= 100 < sum(min(size, L + 1))
    level = max(L for L in range(7) if int(sizes.clamp(max=L).sum()) <= 100)
    extra = per_group - sizes.clamp(max=level)
    assert bool(((extra == 0) | ((extra == 1) & (sizes > level))).all())
