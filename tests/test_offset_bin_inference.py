"""Offset-bin inference decodes the bins only where a class score passes the threshold: its
detections equal those of the straightforward computation (every RoI and class decoded by Eqs. 6,
10 and 11 written out here, then Detectron2's ``fast_rcnn_inference``) on fixed scores."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances

from d2infra.modeling import build_box_predictor
from offset_bin import add_offset_bin_config

NUM_CLASSES = 4
A, N = 3.0, 20  # the paper's a and n
SIZE = (120, 160)


def representatives(stage: int) -> torch.Tensor:
    """Eq. 5 by hand: stage 1 on (-3, 3) with m = 18 inner bins of width 1/3; stage 2 on
    (-1/6, 1/6) (half a stage-1 bin) with width 1/54; outer bins at -a and a."""
    a = A if stage == 0 else A / 18
    w = 2 * a / 18
    return torch.tensor([-a] + [-a + (j + 0.5) * w for j in range(18)] + [a])


def straightforward_boxes(bin_logits, proposal_boxes, num_reg_classes, stages, expectation):
    """Every RoI and class: softmax per coordinate and stage (Eq. 6), expectation (Eq. 10) or the
    argmax bin's representative, summed over the stages (Eq. 11), applied to the proposal."""
    logits = bin_logits.view(len(proposal_boxes), num_reg_classes, 4, stages, N)
    probs = logits.softmax(dim=-1)
    deltas = 0
    for k in range(stages):
        reps = representatives(k)
        deltas = deltas + ((probs[..., k, :] * reps).sum(-1) if expectation
                           else reps[probs[..., k, :].argmax(-1)])
    transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    return transform.apply_deltas(deltas.reshape(len(proposal_boxes), -1), proposal_boxes)


def make_predictor(cls_agnostic, stages, expectation):
    cfg = get_cfg()
    add_offset_bin_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "OffsetBinOutputLayers"
    cfg.MODEL.OFFSET_BIN.NUM_STAGES = stages
    cfg.MODEL.OFFSET_BIN.EXPECTATION = expectation
    cfg.MODEL.OFFSET_BIN.CLS_AGNOSTIC = cls_agnostic
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
    return build_box_predictor(cfg, ShapeSpec(channels=8))


def fixed_inputs(num_rois, num_reg_classes, stages, seed=0):
    """Class scores where about half the RoIs have no class above 0.05 (a high background logit)
    and bin scores spread enough for boxes to differ."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(num_rois, NUM_CLASSES + 1, generator=g) * 2
    scores[::2, -1] += 9.0  # background: every class probability far below 0.05
    bin_logits = torch.randn(num_rois, num_reg_classes * 4 * stages * N, generator=g) * 3
    xy = torch.rand(num_rois, 2, generator=g) * 100
    wh = 8 + torch.rand(num_rois, 2, generator=g) * 50
    proposals = Instances(SIZE)
    proposals.proposal_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    return scores, bin_logits, proposals


@pytest.mark.parametrize("expectation", [True, False])
@pytest.mark.parametrize("stages", [1, 2])
@pytest.mark.parametrize("cls_agnostic", [True, False])
def test_detections_equal_decoding_every_box(cls_agnostic, stages, expectation):
    predictor = make_predictor(cls_agnostic, stages, expectation)
    num_reg_classes = 1 if cls_agnostic else NUM_CLASSES
    scores, bin_logits, proposals = fixed_inputs(60, num_reg_classes, stages)
    probs = scores.softmax(dim=-1)
    assert ((probs[:, :-1] > 0.05).any(dim=1)).float().mean() < 0.6  # the fast path skips RoIs

    (ours,), (ours_rois,) = predictor.inference((scores, bin_logits), [proposals])
    boxes = straightforward_boxes(bin_logits, proposals.proposal_boxes.tensor, num_reg_classes,
                                  stages, expectation)
    (ref,), (ref_rois,) = fast_rcnn_inference([boxes], [probs], [SIZE], 0.05, 0.5, 100)
    assert len(ref) > 10
    assert len(ours) == len(ref)
    assert torch.equal(ours.pred_classes, ref.pred_classes)
    assert torch.equal(ours_rois, ref_rois)
    assert torch.allclose(ours.scores, ref.scores)
    assert torch.allclose(ours.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-4)


def test_no_candidate_at_all():
    predictor = make_predictor(True, 1, True)
    scores, bin_logits, proposals = fixed_inputs(6, 1, 1)
    scores[:, -1] = 20.0  # background everywhere
    (ours,), _ = predictor.inference((scores, bin_logits), [proposals])
    assert len(ours) == 0
