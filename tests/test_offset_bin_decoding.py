"""Offset-bin decoding as the model does it, against hand-computed Eqs. 5, 10 and 11 of Qiu et al.

Per-class bins with different hand-set probabilities (a decoder that reads class 0's bins for every
class fails), both decodings of the same scores (a model that ignores ``EXPECTATION: False``
fails), in the predictor built from the config and in the ROI heads' inference, and the coder's
edges: defaults, dtypes, devices, bin boundaries and bad values.
"""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, Instances

from d2infra.modeling import build_box_predictor
from offset_bin import OffsetBinCoder, add_offset_bin_config

NUM_CLASSES = 3
# a = 3, n = 5 (m = 3 inner bins of width w_1 = 2): Eq. 5's representatives, by hand.
REPS_1 = [-3.0, -2.0, 0.0, 2.0, 3.0]
# Stage 2 (section 3.2.4): a_2 = w_1 / 2 = 1, w_2 = 2/3.
REPS_2 = [-1.0, -2.0 / 3, 0.0, 2.0 / 3, 1.0]
# Three probability vectors over the 5 bins; each has a different argmax bin and an expectation
# (Eq. 10) that differs from its argmax representative.
PROBS = {
    "A": [0.1, 0.1, 0.2, 0.5, 0.1],  # argmax bin 3
    "B": [0.5, 0.2, 0.1, 0.1, 0.1],  # argmax bin 0
    "C": [0.1, 0.6, 0.1, 0.1, 0.1],  # argmax bin 1
}
# Eq. 10 by hand, stage 1: A: -0.3 - 0.2 + 0 + 1.0 + 0.3; B: -1.5 - 0.4 + 0 + 0.2 + 0.3;
# C: -0.3 - 1.2 + 0 + 0.2 + 0.3.
EXPECT_1 = {"A": 0.8, "B": -1.4, "C": -1.0}
ARGMAX_1 = {"A": 2.0, "B": -3.0, "C": -2.0}
# Stage 2 (a_2 = 1): A: -0.1 - 0.2/3 + 0 + 1/3 + 0.1; B: -0.5 - 0.4/3 + 0.2/3 + 0.1;
# C: -0.1 - 1.2/3 + 0.2/3 + 0.1.
EXPECT_2 = {"A": 0.8 / 3, "B": -0.4 - 0.2 / 3, "C": -1.0 / 3}
ARGMAX_2 = {"A": 2.0 / 3, "B": -1.0, "C": -2.0 / 3}
# Per class (rows) and coordinate (dx, dy, dw, dh): which vector, at stage 1 and at stage 2.
LAYOUT_1 = ["ABCA", "BCAB", "CABC"]
LAYOUT_2 = ["CCAB", "ABBA", "BACC"]


def make_cfg(expectation: bool, num_stages: int = 2, cls_agnostic: bool = False):
    cfg = get_cfg()
    add_offset_bin_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "OffsetBinOutputLayers"
    cfg.MODEL.OFFSET_BIN.RANGE = 3.0
    cfg.MODEL.OFFSET_BIN.NUM_BINS = 5
    cfg.MODEL.OFFSET_BIN.NUM_STAGES = num_stages
    cfg.MODEL.OFFSET_BIN.EXPECTATION = expectation
    cfg.MODEL.OFFSET_BIN.CLS_AGNOSTIC = cls_agnostic
    return cfg


def hand_logits(num_stages: int) -> torch.Tensor:
    """(C, 4, K, n) bin scores whose softmax is exactly the chosen PROBS (s = log p)."""
    logits = torch.empty(NUM_CLASSES, 4, num_stages, 5)
    for c in range(NUM_CLASSES):
        for i in range(4):
            for k, layout in enumerate((LAYOUT_1, LAYOUT_2)[:num_stages]):
                logits[c, i, k] = torch.tensor(PROBS[layout[c][i]]).log()
    return logits


def hand_deltas(expectation: bool, num_stages: int) -> torch.Tensor:
    """(C, 4) offsets of Eq. 11: the sum over stages of Eq. 10 (or the argmax representative)."""
    first, second = (EXPECT_1, EXPECT_2) if expectation else (ARGMAX_1, ARGMAX_2)
    return torch.tensor([
        [first[LAYOUT_1[c][i]] + (second[LAYOUT_2[c][i]] if num_stages == 2 else 0.0)
         for i in range(4)]
        for c in range(NUM_CLASSES)
    ])


PROPOSALS = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 30.0, 60.0]])


def proposals():
    inst = Instances((100, 100))
    inst.proposal_boxes = Boxes(PROPOSALS.clone())
    return [inst]


def test_hand_values_are_the_papers_formulas():
    """The literals above follow Eq. 10 (a check of the test's own arithmetic)."""
    for name, p in PROBS.items():
        assert sum(p) == pytest.approx(1.0)
        assert sum(pi * r for pi, r in zip(p, REPS_1)) == pytest.approx(EXPECT_1[name])
        assert sum(pi * r for pi, r in zip(p, REPS_2)) == pytest.approx(EXPECT_2[name])
        assert REPS_1[p.index(max(p))] == ARGMAX_1[name]
        assert REPS_2[p.index(max(p))] == pytest.approx(ARGMAX_2[name])


@pytest.mark.parametrize("num_stages", [1, 2])
@pytest.mark.parametrize("expectation", [True, False])
def test_class_specific_boxes_use_each_class_bins(expectation, num_stages):
    """Each class's boxes decode that class's bins; EXPECTATION picks Eq. 10 or the argmax."""
    torch.manual_seed(0)
    predictor = build_box_predictor(make_cfg(expectation, num_stages), ShapeSpec(channels=8))
    assert predictor.expectation is expectation
    logits = hand_logits(num_stages)
    bin_logits = logits.reshape(1, -1).repeat(2, 1)  # the same scores for both RoIs
    scores = torch.zeros(2, NUM_CLASSES + 1)
    (boxes,) = predictor.predict_boxes((scores, bin_logits), proposals())
    assert boxes.shape == (2, NUM_CLASSES * 4)
    transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    deltas = hand_deltas(expectation, num_stages)
    for c in range(NUM_CLASSES):
        expected = transform.apply_deltas(deltas[c].repeat(2, 1), PROPOSALS)
        assert torch.allclose(boxes[:, 4 * c:4 * c + 4], expected, atol=1e-4), c
    # The classes differ: a decoder reading one class's bins for all would give equal columns.
    assert not torch.allclose(boxes[:, 0:4], boxes[:, 4:8], atol=1e-2)


def test_boxes_for_gt_classes_pick_the_gt_class_bins():
    predictor = build_box_predictor(make_cfg(False), ShapeSpec(channels=8))
    inst = proposals()[0]
    inst.gt_classes = torch.tensor([2, 1])
    bin_logits = hand_logits(2).reshape(1, -1).repeat(2, 1)
    (boxes,) = predictor.predict_boxes_for_gt_classes(
        (torch.zeros(2, NUM_CLASSES + 1), bin_logits), [inst])
    deltas = hand_deltas(False, 2)
    expected = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)).apply_deltas(
        deltas[[2, 1]], PROPOSALS)
    assert torch.allclose(boxes, expected, atol=1e-4)


@pytest.mark.parametrize("expectation", [True, False])
def test_class_agnostic_decoding(expectation):
    predictor = build_box_predictor(make_cfg(expectation, cls_agnostic=True),
                                    ShapeSpec(channels=8))
    bin_logits = hand_logits(2)[1:2].reshape(1, -1).repeat(2, 1)  # class 1's vectors, shared
    (boxes,) = predictor.predict_boxes((torch.zeros(2, NUM_CLASSES + 1), bin_logits), proposals())
    expected = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)).apply_deltas(
        hand_deltas(expectation, 2)[1].repeat(2, 1), PROPOSALS)
    assert torch.allclose(boxes, expected, atol=1e-4)


SHAPES = {"p2": ShapeSpec(channels=8, stride=4)}


def small_roi_heads(cfg):
    """The ROI heads of ``cfg`` on one feature map, ``SHAPES``' p2, with a small box head (2 x 2
    ROIAlignV2 pooling, one FC of 8), seeded, in eval mode (also test_offset_bin_stages.py's)."""
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 8
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    torch.manual_seed(0)
    return build_roi_heads(cfg, SHAPES).eval()


@pytest.mark.parametrize("expectation", [True, False])
def test_roi_heads_inference_boxes_of_each_class(expectation):
    """Through OffsetBinROIHeads' inference: the bin scores come from the layer's bias (weights 0),
    the class scores make every class a detection; each class's box is its own bins' decoding."""
    cfg = make_cfg(expectation)
    cfg.MODEL.ROI_HEADS.NAME = "OffsetBinROIHeads"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0  # keep all
    heads = small_roi_heads(cfg)
    predictor = heads.box_predictor
    assert predictor.expectation is expectation
    with torch.no_grad():
        predictor.bin_pred.weight.zero_()
        predictor.bin_pred.bias.copy_(hand_logits(2).reshape(-1))
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 0.0]))
    features = {"p2": torch.randn(1, 8, 25, 25)}
    inst = Instances((100, 100))
    inst.proposal_boxes = Boxes(PROPOSALS[:1].clone())
    inst.objectness_logits = torch.zeros(1)
    with torch.no_grad():
        (result,), _ = heads(None, features, [inst])
    assert sorted(result.pred_classes.tolist()) == [0, 1, 2]
    deltas = hand_deltas(expectation, 2)
    transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    for box, c in zip(result.pred_boxes.tensor, result.pred_classes.tolist()):
        expected = transform.apply_deltas(deltas[c:c + 1], PROPOSALS[:1])[0]
        expected[0::2] = expected[0::2].clamp(0, 100)
        expected[1::2] = expected[1::2].clamp(0, 100)
        assert torch.allclose(box, expected, atol=1e-3), c


# ------------------------------------------------------------------------------------------------
# The coder on its own
# ------------------------------------------------------------------------------------------------
def test_coder_defaults_are_the_papers():
    """Section 4.1: a = 3, n = 20; K = 2 hierarchical stages (Table 1's best)."""
    coder = OffsetBinCoder()
    assert (coder.offset_range, coder.num_bins, coder.num_stages) == (3.0, 20, 2)


@pytest.mark.parametrize("expectation", [True, False])
def test_coder_decode_follows_the_flag(expectation):
    coder = OffsetBinCoder(3.0, 5, 2)
    logits = hand_logits(2)
    assert torch.allclose(coder.decode(logits, expectation), hand_deltas(expectation, 2),
                          atol=1e-6)
    probs = logits.softmax(-1)
    assert torch.allclose(coder.decode_probs(probs, expectation), hand_deltas(expectation, 2),
                          atol=1e-6)
    # decode_stage's default is the expectation of Eq. 10.
    assert torch.allclose(coder.decode_stage(probs[:, :, 0], 0),
                          hand_deltas(True, 1), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_coder_keeps_the_dtype(dtype):
    coder = OffsetBinCoder(3.0, 20, 2)
    reps = coder.representatives(0, dtype=dtype)
    assert reps.dtype == dtype
    if dtype == torch.float64:  # Eq. 5 in double precision: -3 + (j + 1/2) / 3
        exact = [-3.0] + [-3.0 + (j + 0.5) / 3 for j in range(18)] + [3.0]
        # float32 arithmetic anywhere would be off by ~1e-7.
        assert torch.allclose(reps, torch.tensor(exact, dtype=torch.float64), rtol=0, atol=1e-12)
    offsets = torch.tensor([[0.1234567, -2.5, 4.0, 0.01]], dtype=dtype)
    labels = coder.encode(offsets)
    logits = torch.randn(1, 4, 2, 20, dtype=torch.float32).to(dtype)
    assert coder.decode(logits).dtype == dtype
    if dtype == torch.float64:
        # Decoding the one-hot scores of the encoded labels recovers offsets inside the range to
        # within stage 2's half bin width, 1/108; computed in double precision throughout.
        onehot = torch.nn.functional.one_hot(labels, 20).to(dtype) * 1e4
        decoded = coder.decode(onehot, expectation=False)
        assert decoded.dtype == torch.float64
        inside = offsets.abs() < 3
        assert ((decoded - offsets).abs()[inside] <= 1 / 108 + 1e-12).all()
        stage1 = coder.representatives(0, dtype=dtype)[labels[..., 0]]
        stage2 = coder.representatives(1, dtype=dtype)[labels[..., 1]]
        assert torch.equal(decoded, stage1 + stage2)


def test_coder_keeps_the_device():
    """Device-agnostic (CUDA): every tensor the coder makes follows its input's device. The "meta"
    device stands in for CUDA here: a tensor made on the CPU by mistake fails to combine with it."""
    coder = OffsetBinCoder(3.0, 20, 2)
    meta = torch.device("meta")
    assert coder.representatives(1, device=meta).device == meta
    offsets = torch.empty(6, 4, device=meta)
    assert coder.encode(offsets).device == meta
    logits = torch.empty(6, 4, 2, 20, device=meta)
    for expectation in (True, False):
        assert coder.decode(logits, expectation).device == meta


def test_assign_edges():
    """Label 0 takes (-inf, -a], label n-1 [a, inf); the largest float below a is in the last
    inner bin [a - w, a) (label m), even where (x + a) / w rounds up to m."""
    coder = OffsetBinCoder(3.0, 20, 1)
    below_a = torch.tensor(3.0).nextafter(torch.tensor(0.0))
    above_minus_a = torch.tensor(-3.0).nextafter(torch.tensor(0.0))
    x = torch.stack([torch.tensor(-1e6), torch.tensor(-3.0), above_minus_a, torch.tensor(0.0),
                     below_a, torch.tensor(3.0), torch.tensor(1e6)])
    assert coder.assign(x, 0).tolist() == [0, 0, 1, 10, 18, 19, 19]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"offset_range": "3"}, r"^MODEL\.OFFSET_BIN\.RANGE \(a\) must be a number"),
     ({"offset_range": True}, r"^MODEL\.OFFSET_BIN\.RANGE \(a\) must be a number"),
     ({"offset_range": math.inf}, r"^MODEL\.OFFSET_BIN\.RANGE \(a\) must be finite"),
     ({"num_bins": 2}, r"^MODEL\.OFFSET_BIN\.NUM_BINS \(n\) counts the 2 outer bins"),
     ({"num_bins": 5.0}, r"^MODEL\.OFFSET_BIN\.NUM_BINS \(n\) counts the 2 outer bins"),
     ({"num_stages": True}, r"^MODEL\.OFFSET_BIN\.NUM_STAGES \(K\) must be an integer")],
)
def test_coder_rejects_bad_values_by_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OffsetBinCoder(**kwargs)


def test_coder_accepts_the_smallest_values():
    """One inner bin (n = 3) and a range below 1 are valid."""
    coder = OffsetBinCoder(0.5, 3, 1)
    assert coder.representatives(0).tolist() == [-0.5, 0.0, 0.5]
