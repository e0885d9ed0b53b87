"""PISA as published (mmdetection's ScoreHLRSampler, isr_p, carl_loss; Oksuz et al., Eqs. 5-6),
against hand computations on hand-made batches; and the weighted Fast R-CNN loss."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import imbalance
from d2infra.modeling import build_box_predictor
from imbalance.modeling.weighted_fast_rcnn import (
    PISAFastRCNNOutputLayers,
    WeightedFastRCNNOutputLayers,
)
from imbalance.samplers import Candidates, build_roi_sampler
from imbalance.samplers.pisa import (
    carl_loss,
    hierarchical_local_rank,
    isr_p_weights,
    nms_groups,
    prime_sample_weights,
    rank_in_groups,
    renormalised,
    two_step_order,
)

K = 2


def test_hierarchical_local_rank():
    # class 0: gt 0 with IoUs .9 .8 .7, gt 1 with .6 .55; class 1: gt 2 with .75 .65
    ious = torch.tensor([0.8, 0.6, 0.9, 0.55, 0.7, 0.65, 0.75])
    gts = torch.tensor([0, 1, 0, 1, 0, 2, 2])
    classes = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    # class 0 order: local rank 0 (.9, .6), then local rank 1 (.8, .55), then .7
    assert hierarchical_local_rank(ious, gts, classes).tolist() == [2, 1, 0, 3, 4, 1, 0]


def test_nms_groups_take_boxes_at_the_threshold():
    # mmcv's nms_match groups a box with IoU >= threshold; IoU([50,50,60,60], [50,50,60,55]) = 0.5
    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 55], [0, 0, 10, 9], [50, 50, 60, 60],
                          [100, 100, 110, 110]])
    scores = torch.tensor([0.9, 0.3, 0.8, 0.6, 0.1])
    assert nms_groups(boxes, scores, 0.5).tolist() == [0, 3, 0, 3, 4]


def test_nms_groups_box_overlapping_two_kept_boxes():
    # mmcv's nms_match (mmcv/ops/csrc/pytorch/cpu/nms.cpp nms_match_cpu), by hand, threshold 0.5:
    # by decreasing score, K1 (.9) is kept and takes X (.85, IoU(K1, X) = 70/130 = .54); K2 (.8)
    # overlaps K1 at 50/150 = .33 only, so it is kept, although X overlaps it at 80/120 = .67: a
    # box already taken neither takes others nor joins a second group, and X stays with the first
    # kept box by score, not the one it overlaps most. K2 comes first by index.
    K2, X, K1 = [5.0, 0, 15, 10], [3.0, 0, 13, 10], [0.0, 0, 10, 10]
    got = nms_groups(torch.tensor([K2, X, K1]), torch.tensor([0.8, 0.85, 0.9]), 0.5)
    assert got.tolist() == [0, 2, 2]
    # with X below K2 in score the grouping is the same: K2 is not suppressed by X either way
    got = nms_groups(torch.tensor([K2, X, K1]), torch.tensor([0.8, 0.5, 0.9]), 0.5)
    assert got.tolist() == [0, 2, 2]


def pisa_cfg(batch=8):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.SAMPLER = "pisa"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = batch
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
    return cfg


FAR = [0.0, 0.0, 200.0, 200.0]  # the box of the class that is not a negative's highest score
# Negatives: (probabilities of class 0, class 1, background; regressed box at the top class).
# The 4 ranked ones (top score > 0.05) form two NMS groups at IoU 0.5: {n0 .9, n1 .8} (IoU .9)
# and {n2 .6, n3 .3} (IoU exactly .5); n4-n6 score at most .04 and are not ranked.
NEGATIVES = [
    ([0.90, 0.02, 0.08], [0, 0, 10, 10]),
    ([0.05, 0.80, 0.15], [0, 0, 10, 9]),
    ([0.60, 0.10, 0.30], [50, 50, 60, 60]),
    ([0.10, 0.30, 0.60], [50, 50, 60, 55]),
    ([0.03, 0.04, 0.93], [100, 0, 110, 10]),
    ([0.01, 0.01, 0.98], [120, 0, 130, 10]),
    ([0.04, 0.02, 0.94], [140, 0, 150, 10]),
]


def hand_batch():
    # candidates 0-2 positive (classes 0, 0, 1), 3-9 the negatives above, 10 ignored
    labels = torch.tensor([0, 0, 1] + [K] * len(NEGATIVES) + [-1])
    n = len(labels)
    probs = torch.tensor([[0.5, 0.3, 0.2]] * 3 + [p for p, _ in NEGATIVES] + [[0.3, 0.3, 0.4]])
    boxes = []
    for i in range(n):
        box = NEGATIVES[i - 3][1] if 3 <= i < 3 + len(NEGATIVES) else [0, 0, 5, 5]
        top = int(probs[i, :K].argmax())
        boxes.append([x for c in range(K) for x in (box if c == top else FAR)])
    logits, boxes = probs.log(), torch.tensor(boxes, dtype=torch.float32)
    calls = []

    def head(indices):
        calls.append(indices.tolist())
        return logits[indices], boxes[indices]

    return Candidates(labels, torch.zeros(n), torch.zeros(n, dtype=torch.long), K,
                      head=head), calls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pisa_sampler_score_hlr_by_hand(seed):
    candidates, calls = hand_batch()
    torch.manual_seed(seed)
    sampled = build_roi_sampler(pisa_cfg())(candidates)
    torch.manual_seed(seed)
    fg, _ = subsample_labels(candidates.labels, 8, 0.25, K)
    # positives: Detectron2's random draw, 8 * 0.25 = 2 of the 3, weight 1
    assert sampled.indices[:2].tolist() == fg.tolist()
    assert sampled.weights[:2].tolist() == [1.0, 1.0]
    # the head ran once, on the negatives only
    assert calls == [list(range(3, 10))]
    # negatives: 8 - 2 = 6. Score-HLR: group ranks 0 (n0 .9, n2 .6), then ranks 1 (n1 .8, n3 .3);
    # then 2 of the 3 unranked ones at random
    neg = sampled.indices[2:].tolist()
    assert neg[:4] == [3, 5, 4, 6] and len(neg) == 6 and set(neg[4:]) < {7, 8, 9}
    # Eq. 5 with N_max = max(6 wanted, 4 ranked) = 6: r_bar = 6/6, 5/6, 4/6, 3/6, and the random
    # ones the lowest, 3/6; Eq. 6 with gamma 0.5, beta 0; renormalised so that the weighted
    # background cross-entropy keeps its total
    w = [math.sqrt(r / 6) for r in (6, 5, 4, 3, 3, 3)]
    ce = [-math.log(NEGATIVES[i - 3][0][2]) for i in neg]
    ratio = sum(ce) / sum(wi * c for wi, c in zip(w, ce))
    assert sampled.weights[2:].tolist() == pytest.approx([wi * ratio for wi in w], rel=1e-5)
    total = sum(float(x) * c for x, c in zip(sampled.weights[2:], ce))
    assert total == pytest.approx(sum(ce), rel=1e-5)


def test_pisa_sampler_without_ranked_negatives_draws_at_random():
    candidates, _ = hand_batch()
    candidates.labels[3:7] = -1  # only the unranked negatives are left
    sampled = build_roi_sampler(pisa_cfg())(candidates)
    assert sorted(sampled.indices[2:].tolist()) == [7, 8, 9]
    assert sampled.weights.tolist() == [1.0] * 5


def pisa_predictor():
    cfg = pisa_cfg()
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "PISAFastRCNNOutputLayers"
    cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0  # L1 per coordinate
    predictor = build_box_predictor(cfg, ShapeSpec(channels=8))
    assert isinstance(predictor, PISAFastRCNNOutputLayers)
    assert predictor.box2box_transform.weights == (10.0, 10.0, 5.0, 5.0)
    return predictor


def instances(proposals, gts, classes, weights):
    return Instances((64, 64), proposal_boxes=Boxes(torch.tensor(proposals)),
                     gt_boxes=Boxes(torch.tensor(gts)), gt_classes=torch.tensor(classes),
                     loss_weights=torch.tensor(weights))


def log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def test_pisa_predictor_isr_p_and_carl_by_hand():
    A, B, C = [0.0, 0, 10, 10], [20.0, 20, 40, 40], [50.0, 0, 60, 20]
    D = [0.0, 0, 10, 10]  # same box as A, in the other image: another object
    # image 0: p0 on A regressed 5 px right (IoU 1/3 though its proposal has IoU 1), p1 on A
    # (IoU 9/11), p2 on B (IoU 1), p3 on C (class 1), p5 on C too (class 1, IoU 18/20: the second
    # positive of class 1, so that its rank within the class (1) differs from its rank among all
    # positives (4) and a per-class N_max (2) differs from the batch's (4)); negatives n0, n1
    # with ISR-N weights
    img0 = instances([A, [1.0, 0, 11, 10], B, C, [50.0, 0, 60, 18], [0.0, 30, 8, 38],
                      [30.0, 0, 38, 8]],
                     [A, A, B, C, C, A, A], [0, 0, 0, 1, 1, K, K],
                     [1.0, 1.0, 1.0, 1.0, 1.0, 0.7, 1.3])
    # image 1: p4 on D regressed 2 px right (IoU 2/3); one negative
    img1 = instances([D, [40.0, 40, 50, 50]], [D, D], [0, K], [1.0, 1.0])
    logits = torch.tensor([[2.0, 0.5, 0.1], [1.0, 0.2, 0.3], [0.3, 0.1, 0.2], [0.0, 1.5, 0.5],
                           [0.4, 0.9, 0.2], [0.2, 0.3, 1.0], [1.2, 0.1, 0.4], [0.5, 0.5, 0.5],
                           [0.1, 0.6, 0.9]], requires_grad=True)
    deltas = torch.zeros(9, 4 * K)
    deltas[0, 0] = 5.0  # dx * 10 = 5 px / width 10 * 10
    deltas[7, 0] = 2.0
    predictor = pisa_predictor()
    with EventStorage():
        losses = predictor.losses((logits, deltas), [img0, img1])

    rows = [log_softmax(r) for r in logits.tolist()]
    gt = [0, 0, 0, 1, 1, K, K, 0, K]
    ce = [-rows[i][g] for i, g in enumerate(gt)]
    # IoU-HLR of class 0: rank-0 of each object by IoU: p2 (1), p1 (9/11), p4 (2/3); then rank 1:
    # p0 (1/3). Class 1: p3 (1) rank 0, p5 (0.9, second on C) rank 1. N_max = the largest class
    # count, 4 (isr_p's max_l_num), for both classes. Eq. 6 with gamma 2, beta 0
    pos, ranks = [0, 1, 2, 3, 4, 7], [3, 1, 0, 0, 1, 2]
    w = [((4 - r) / 4) ** 2 for r in ranks]
    ratio = sum(ce[i] for i in pos) / sum(wi * ce[i] for wi, i in zip(w, pos))
    weights = {i: wi * ratio for wi, i in zip(w, pos)}
    weights.update({5: 0.7, 6: 1.3, 8: 1.0})
    R = 9
    assert losses["loss_cls"].item() == pytest.approx(
        sum(weights[i] * ce[i] for i in range(R)) / R, rel=1e-5)
    # the renormalised positive weights keep the positives' classification total
    assert sum(weights[i] * ce[i] for i in pos) == pytest.approx(sum(ce[i] for i in pos))
    # so the loss value cannot tell the positives' weights apart; its gradient can: the weights
    # are constants, d loss_cls / d logits_i = w_i / R * (softmax_i - onehot(gt_i))
    grad = torch.autograd.grad(losses["loss_cls"], logits, retain_graph=True)[0]
    for i in range(R):
        expected = [weights[i] / R * (math.exp(rows[i][c]) - (c == gt[i])) for c in range(K + 1)]
        assert grad[i].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7), i
    # box loss unweighted, L1 of the deltas (weights 10, 10, 5, 5): p0 |5 - 0|, p1 |0 - (-1)|
    # (target dx of [1,0,11,10] to A), p4 |2 - 0|, p5 |0 - dy| + |0 - dh| with dy = 10 * 1/18
    # (centres 9 and 10, height 18) and dh = 5 ln(20/18)
    box = {0: 5.0, 1: 1.0, 2: 0.0, 3: 0.0, 4: 10 / 18 + 5 * math.log(20 / 18), 7: 2.0}
    assert losses["loss_box_reg"].item() == pytest.approx(sum(box.values()) / R, rel=1e-5)
    # CARL: c_i = 0.2 + 0.8 p_i (k = 1), scaled to sum to the 6 positives
    c = {i: 0.2 + 0.8 * math.exp(rows[i][gt[i]]) for i in pos}
    scale = len(pos) / sum(c.values())
    assert losses["loss_carl"].item() == pytest.approx(
        sum(c[i] * scale * box[i] for i in pos) / R, rel=1e-5)
    # CARL's gradient reaches the class scores
    losses["loss_carl"].backward()
    assert logits.grad[0].abs().sum() > 0


def test_pisa_predictor_without_positives():
    img = instances([[0.0, 0, 10, 10]], [[0.0, 0, 10, 10]], [K], [0.5])
    logits = torch.tensor([[0.2, 0.1, 1.0]], requires_grad=True)
    with EventStorage():
        losses = pisa_predictor().losses((logits, torch.zeros(1, 4 * K)), [img])
    ce = -log_softmax([0.2, 0.1, 1.0])[K]
    assert losses["loss_cls"].item() == pytest.approx(0.5 * ce, rel=1e-5)
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_carl"].item() == 0.0


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


def test_prime_sample_weights_eq6_with_beta():
    # Eq. 5: r_bar = (4 - r) / 4; Eq. 6 with beta 0.25, gamma 2: (0.75 r_bar + 0.25)^2
    got = prime_sample_weights(torch.tensor([0, 1, 2, 3]), 4, gamma=2.0, beta=0.25)
    expected = [(0.75 * r_bar + 0.25) ** 2 for r_bar in (1.0, 0.75, 0.5, 0.25)]
    assert got.tolist() == pytest.approx(expected)


def test_isr_p_weights_with_prior_weights_and_beta():
    # three positives of one class, three objects: ranks 0, 1, 2 by IoU, N_max 3; the prior
    # weight multiplies r_bar before Eq. 6 (gamma 1, beta 0.2), as isr_p's label weights do
    ious, prior = torch.tensor([0.7, 0.9, 0.8]), torch.tensor([2.0, 0.5, 1.0])
    ce = torch.tensor([0.3, 1.2, 0.6])
    got = isr_p_weights(ious, torch.tensor([0, 1, 2]), torch.tensor([1, 1, 1]), ce, 1.0, 0.2,
                        prior=prior)
    r_bar = [1 / 3, 1.0, 2 / 3]
    w = [0.2 + 0.8 * r * p for r, p in zip(r_bar, prior.tolist())]
    ratio = float((prior * ce).sum()) / sum(wi * c for wi, c in zip(w, ce.tolist()))
    assert got.tolist() == pytest.approx([wi * ratio for wi in w], rel=1e-5)


def test_pisa_sampler_one_negative_wanted():
    # batch 3 at 2/3 positive: 2 positives, 1 negative, the first by score-HLR, weight 1
    candidates, _ = hand_batch()
    cfg = pisa_cfg(batch=3)
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 2 / 3
    sampled = build_roi_sampler(cfg)(candidates)
    assert sampled.indices[2:].tolist() == [3]
    assert sampled.weights.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_prime_sample_weights_single_rank():
    # N_max 1: the only rank, 0, has r_bar = 1 and weight 1 whatever gamma and beta
    got = prime_sample_weights(torch.tensor([0]), 1, gamma=0.5, beta=0.0)
    assert got.tolist() == [1.0]
    # Eq. 5 before renormalisation, gamma 1, beta 0: r_bar = (5 - r) / 5
    got = prime_sample_weights(torch.tensor([0, 2, 4]), 5, gamma=1.0, beta=0.0)
    assert got.tolist() == pytest.approx([1.0, 0.6, 0.2])


def test_two_step_order_equal_values_keep_index_order():
    # 100 equal values (CPU's unstable sort reorders ties from about 20 elements on), each its own
    # group: all have local rank 0, and ties keep their index order, on any device
    n = 100
    assert two_step_order(torch.full((n,), 0.5), torch.arange(n)).tolist() == list(range(n))
    # one group, priority order given: the ranks are the positions in that order, ties in the
    # group ids (all equal) notwithstanding
    order = torch.arange(n).flip(0)
    assert rank_in_groups(order, torch.zeros(n, dtype=torch.long)).tolist() == list(
        range(n - 1, -1, -1))


def test_ranking_stays_on_the_device_of_its_inputs():
    # "meta" stands in for CUDA: a tensor made on the CPU inside would fail to mix with them
    values = torch.rand(6, device="meta")
    groups = torch.zeros(6, dtype=torch.long, device="meta")
    assert two_step_order(values, groups).device.type == "meta"
    assert rank_in_groups(torch.arange(6, device="meta"), groups).device.type == "meta"


def test_pisa_sampler_one_ranked_negative_then_random_ones():
    # only n0 scores above 0.05 (n1-n3 ignored): it comes first, then 3 of the unranked ones at
    # random; N_max = max(4 wanted, 1 ranked) = 4, and every rank is clamped to the last ranked
    # one (0), so all weights are 1
    for seed in range(3):
        candidates, _ = hand_batch()
        candidates.labels[4:7] = -1
        torch.manual_seed(seed)
        sampled = build_roi_sampler(pisa_cfg())(candidates)
        neg = sampled.indices[2:].tolist()
        assert neg[0] == 3 and sorted(neg[1:]) == [7, 8, 9]
        assert sampled.weights.tolist() == [1.0] * 6


def test_pisa_sampler_without_room_for_negatives_skips_the_head():
    # 3 positives, batch 2 at fraction 1: no negative wanted, the head is not evaluated
    candidates, calls = hand_batch()
    cfg = pisa_cfg(batch=2)
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 1.0
    sampler = build_roi_sampler(cfg)
    assert len(sampler.head_candidates(candidates)) == 0
    sampled = sampler(candidates)
    assert len(sampled.indices) == 2 and calls == []
    # with room, head_candidates names exactly the negatives (not the ignored candidate 10)
    assert build_roi_sampler(pisa_cfg()).head_candidates(candidates).tolist() == list(range(3, 10))


def test_nms_groups_edges_and_equal_scores():
    assert nms_groups(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    empty = nms_groups(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    # 60 pairs of boxes at IoU 9/11, every score equal: each pair is one group, headed by one of
    # its two boxes, whichever of the pair the NMS keeps
    boxes = torch.tensor([[20.0 * i + s, 0, 20 * i + s + 10, 10]
                          for i in range(60) for s in (0, 1)])
    got = nms_groups(boxes, torch.full((120,), 0.5), 0.5).view(60, 2)
    pairs = torch.arange(120).view(60, 2)
    assert bool((got[:, 0] == got[:, 1]).all())
    assert bool(((got[:, 0] == pairs[:, 0]) | (got[:, 0] == pairs[:, 1])).all())


def test_pisa_sampler_head_candidates_are_the_negatives_it_will_rank():
    # the negatives 3-9 when any negative is wanted, none otherwise (the batched head pass)
    def wanted(batch, fraction, labels=None):
        candidates, _ = hand_batch()
        if labels is not None:
            candidates.labels[:3] = labels
        cfg = pisa_cfg(batch=batch)
        cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = fraction
        return build_roi_sampler(cfg).head_candidates(candidates).tolist()

    negatives = list(range(3, 10))
    assert wanted(2, 1.0) == []  # 3 positives fill the 2
    assert wanted(2, 0.5) == negatives  # at most 1 positive: 1 negative wanted
    assert wanted(2, 1.0, labels=-1) == negatives  # no positive (all three ignored)


def test_isr_p_weights_without_positives():
    empty = torch.zeros(0)
    got = isr_p_weights(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                        empty, 2.0, 0.0)
    assert got.shape == (0,)


def test_renormalised_by_hand():
    # total 1 * 0.2 + 0.5 * 0.4 = 0.4 -> 0.6: ratio 1.5; with a prior (2, 1): 0.8 / 0.4 = 2
    w, ce = torch.tensor([1.0, 0.5]), torch.tensor([0.2, 0.4])
    assert renormalised(w, ce).tolist() == pytest.approx([1.5, 0.75])
    assert renormalised(w, ce, prior=torch.tensor([2.0, 1.0])).tolist() == pytest.approx([2.0, 1.0])
    # all losses zero: nothing to keep, the weights as they are
    assert renormalised(w, torch.zeros(2)).tolist() == [1.0, 0.5]


def test_carl_loss_by_hand():
    # k 2, b 0.2: c = (0.2 + 0.8 p)^2 = 0.36, 1 for p = 0.5, 1; scaled to sum 2: 2 / 1.36 each
    got = carl_loss(torch.tensor([0.5, 1.0]), torch.tensor([3.0, 1.0]), 2, k=2.0, bias=0.2)
    s = 2 / 1.36
    assert float(got) == pytest.approx((0.36 * s * 3.0 + 1.0 * s * 1.0) / 2)
    # one positive of low score (c = 0.28 < 1), one RoI: c normalised to 1, loss = its box loss
    got = carl_loss(torch.tensor([0.1]), torch.tensor([3.0]), 1, k=1.0, bias=0.2)
    assert float(got) == pytest.approx(3.0)


def test_pisa_sampler_score_exactly_at_the_threshold_is_not_ranked():
    # ScoreHLRSampler ranks negatives whose top foreground score is above score_thr (strictly)
    # and fills the rest at random from those at or below it. Threshold 0.25: n0 scores 0.6
    # (ranked), n1 exactly 0.25 (softmax of log(.25, .25, .5) is exact), n2 0.1; two wanted: n0,
    # then n1 or n2 at random, both at n0's weight (1)
    probs = torch.tensor([[0.6, 0.1, 0.3], [0.25, 0.25, 0.5], [0.1, 0.05, 0.85]])
    boxes = torch.tensor([[0.0, 0, 10, 10] * K, [50.0, 0, 60, 10] * K, [100.0, 0, 110, 10] * K])
    candidates = Candidates(torch.full((3,), K), torch.zeros(3), torch.zeros(3, dtype=torch.long),
                            K, head=lambda idx: (probs.log()[idx], boxes[idx]))
    cfg = pisa_cfg(batch=2)
    cfg.MODEL.ROI_HEADS.PISA.NEG_SCORE_THRESH = 0.25
    second = set()
    for seed in range(8):
        torch.manual_seed(seed)
        sampled = build_roi_sampler(cfg)(candidates)
        assert sampled.indices[0] == 0 and sampled.weights.tolist() == [1.0, 1.0]
        second.add(int(sampled.indices[1]))
    assert second == {1, 2}
