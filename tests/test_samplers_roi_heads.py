"""The sampling ROI heads: Detectron2's sampling with ``random``, OHEM's candidate predictions, and
Cascade R-CNN through the registry."""
import logging

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, build_roi_heads
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

import imbalance
from d2infra.modeling import ROI_BOX_PREDICTOR_REGISTRY
from imbalance.samplers import SamplingCascadeROIHeads, SamplingStandardROIHeads
from imbalance.samplers.roi_heads import _cached_head

K = 3
SHAPES = {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(channels=8, stride=8)}


def head_cfg(name, sampler="random", batch=16):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.NAME = name
    cfg.MODEL.ROI_HEADS.SAMPLER = sampler
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = batch
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    if "Cascade" in name:
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_roi_heads(cfg, SHAPES)


def batch():
    """Two 64x64 images: two ground-truth boxes and 40 proposals, and an empty image."""
    g = torch.Generator().manual_seed(7)
    proposals, targets = [], []
    for num_gt in (2, 0):
        t = Instances((64, 64))
        t.gt_boxes = Boxes(torch.tensor([[4.0, 4, 30, 34], [28, 20, 60, 58]])[:num_gt])
        t.gt_classes = torch.tensor([1, 2])[:num_gt]
        p = Instances((64, 64))
        xy = torch.rand(40, 2, generator=g) * 40
        p.proposal_boxes = Boxes(torch.cat([xy, xy + 6 + torch.rand(40, 2, generator=g) * 20], 1))
        # some proposals near the ground truth, so there are positives
        if num_gt:
            p.proposal_boxes.tensor[:6] = t.gt_boxes.tensor.repeat(3, 1) + torch.randn(
                6, 4, generator=g) * 3
        p.objectness_logits = torch.randn(40, generator=g)
        proposals.append(p)
        targets.append(t)
    features = {"p2": torch.randn(2, 8, 16, 16, generator=g),
                "p3": torch.randn(2, 8, 8, 8, generator=g)}
    return features, proposals, targets


def test_random_sampling_head_equals_standard_roi_heads():
    _, proposals, targets = batch()
    ours = build(head_cfg("SamplingStandardROIHeads"))
    theirs = build(head_cfg("StandardROIHeads"))
    assert isinstance(ours, SamplingStandardROIHeads)
    assert type(ours.box_predictor) is FastRCNNOutputLayers
    for seed in range(3):
        with EventStorage():
            torch.manual_seed(seed)
            a = theirs.label_and_sample_proposals(proposals, targets)
            torch.manual_seed(seed)
            b = ours.label_and_sample_proposals(proposals, targets)
        for x, y in zip(a, b):
            assert torch.equal(x.proposal_boxes.tensor, y.proposal_boxes.tensor)
            assert torch.equal(x.gt_classes, y.gt_classes)
            assert x.has("gt_boxes") == y.has("gt_boxes")
            if x.has("gt_boxes"):
                assert torch.equal(x.gt_boxes.tensor, y.gt_boxes.tensor)
            assert torch.equal(y.loss_weights, torch.ones(len(y)))


def test_random_sampling_head_same_losses_and_weights_as_standard():
    features, proposals, targets = batch()
    ours = build(head_cfg("SamplingStandardROIHeads"))
    theirs = build(head_cfg("StandardROIHeads"))
    ours.train(), theirs.train()
    with EventStorage():
        torch.manual_seed(0)
        _, la = theirs(None, features, proposals, targets)
        torch.manual_seed(0)
        _, lb = ours(None, features, proposals, targets)
    assert la.keys() == lb.keys()
    for k in la:
        assert torch.equal(la[k], lb[k]), k


def single_roi_loss(head, features, image, proposal: Instances) -> float:
    """Detectron2's own loss of one RoI: pool, box head, FastRCNNOutputLayers.losses with R=1."""
    x = [features[f][image:image + 1] for f in ("p2", "p3")]
    with torch.no_grad():
        pred = head.box_predictor(head.box_head(head.box_pooler(x, [proposal.proposal_boxes])))
        losses = FastRCNNOutputLayers.losses(head.box_predictor, pred, [proposal])
    return float(losses["loss_cls"] + losses["loss_box_reg"])


def test_ohem_head_keeps_top_loss_candidates_of_each_image():
    features, proposals, targets = batch()
    cfg = head_cfg("SamplingStandardROIHeads", "ohem", batch=10)
    cfg.MODEL.ROI_HEADS.OHEM.NMS_THRESH = 0.0
    head = build(cfg)
    head.train()
    with EventStorage():
        head._sampling_features = features  # as forward() does
        sampled = head.label_and_sample_proposals(proposals, targets)
        candidates = add_ground_truth_to_proposals(targets, proposals)
        for image, (cands, t, s) in enumerate(zip(candidates, targets, sampled)):
            if len(t):
                iou = pairwise_iou(t.gt_boxes, cands.proposal_boxes)
                best, idx = iou.max(dim=0)
                cands.gt_classes = torch.where(best >= 0.5, t.gt_classes[idx], torch.tensor(K))
                cands.gt_boxes = t.gt_boxes[idx]
            else:
                cands.gt_classes = torch.full((len(cands),), K)
            ref = torch.tensor([single_roi_loss(head, features, image, cands[i:i + 1])
                                for i in range(len(cands))])
            top = set(torch.sort(ref, descending=True).indices[:10].tolist())
            kept = {tuple(b) for b in s.proposal_boxes.tensor.tolist()}
            assert kept == {tuple(cands.proposal_boxes.tensor[i].tolist()) for i in top}


def test_candidate_predictions_are_the_head_on_every_candidate():
    # called with its defaults (image 0, the single stage), on an image with one ground-truth box:
    # softmax scores, and each RoI's loss as Detectron2's FastRCNNOutputLayers.losses on that RoI
    features, proposals, targets = batch()
    head = build(head_cfg("SamplingStandardROIHeads", "ohem"))
    target = targets[0][:1]
    cands = proposals[0][:12]
    iou = pairwise_iou(target.gt_boxes, cands.proposal_boxes)[0]
    labels = torch.where(iou >= 0.5, target.gt_classes[0], torch.tensor(K))
    assert 0 < int((labels < K).sum()) < 12
    with head.sampling_features(features):
        matched = torch.zeros(12, dtype=torch.long)
        scores, ce, box = head.candidate_predictions(cands, labels, matched, target)
    x = [features[f][0:1] for f in ("p2", "p3")]
    with torch.no_grad():
        logits, _ = head.box_predictor(head.box_head(head.box_pooler(x, [cands.proposal_boxes])))
    assert torch.allclose(scores, torch.softmax(logits, dim=1))
    ref = []
    with EventStorage():
        for i in range(12):
            one = cands[i:i + 1]
            one.gt_classes, one.gt_boxes = labels[i:i + 1], target.gt_boxes
            ref.append(single_roi_loss(head, features, 0, one))
    assert (ce + box).tolist() == pytest.approx(ref, rel=1e-5)


class HandLossesOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN's layers whose per-RoI losses are set by hand: the i-th candidate's
    classification loss is i, its box loss 0 (OHEM must rank by these when a predictor has them)."""

    def per_roi_losses(self, predictions, proposals):
        n = sum(len(p) for p in proposals)
        assert n == len(predictions[0])
        return torch.arange(n, dtype=torch.float32), torch.zeros(n)


if "HandLossesOutputLayers" not in ROI_BOX_PREDICTOR_REGISTRY:
    ROI_BOX_PREDICTOR_REGISTRY.register(HandLossesOutputLayers)


def test_ohem_ranks_by_the_predictors_own_per_roi_losses():
    features, proposals, targets = batch()
    cfg = head_cfg("SamplingStandardROIHeads", "ohem", batch=5)
    cfg.MODEL.ROI_HEADS.OHEM.NMS_THRESH = 0.0
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "HandLossesOutputLayers"
    cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = False
    head = build(cfg)
    with EventStorage(), head.sampling_features(features):
        sampled = head.label_and_sample_proposals(proposals, targets)
    for p, s in zip(proposals, sampled):  # the 5 last candidates, the "hardest"
        assert {tuple(b) for b in s.proposal_boxes.tensor.tolist()} == {
            tuple(b) for b in p.proposal_boxes.tensor[-5:].tolist()}


def test_cascade_candidates_go_through_the_asked_stage():
    features, proposals, targets = batch()
    head = build(head_cfg("SamplingCascadeROIHeads", "ohem"))
    idx = torch.tensor([2, 7])
    x = [features[f][1:2] for f in ("p2", "p3")]
    subset = proposals[1].proposal_boxes[idx]
    with head.sampling_features(features):
        logits, _ = head.candidate_head(proposals[1], idx, image_index=1, stage="stage2")
        scores, _, _ = head.candidate_predictions(
            proposals[1][idx], torch.full((2,), K), torch.zeros(2, dtype=torch.long), targets[1],
            image_index=1, stage="stage1")
    with torch.no_grad():
        ref2 = head.box_predictor[2](head.box_head[2](head.box_pooler(x, [subset])))[0]
        ref1 = head.box_predictor[1](head.box_head[1](head.box_pooler(x, [subset])))[0]
    assert torch.allclose(logits, ref2) and torch.allclose(scores, torch.softmax(ref1, dim=1))
    assert not torch.allclose(ref1, ref2)


def test_candidate_head_defaults_to_image_0():
    features, proposals, _ = batch()
    head = build(head_cfg("SamplingStandardROIHeads", "pisa"))
    idx = torch.tensor([0, 5])
    with head.sampling_features(features):
        logits, _ = head.candidate_head(proposals[0], idx)
    x = [features[f][0:1] for f in ("p2", "p3")]
    with torch.no_grad():
        ref = head.box_predictor(head.box_head(head.box_pooler(
            x, [proposals[0].proposal_boxes[idx]])))[0]
    assert torch.allclose(logits, ref)


@pytest.mark.parametrize("sampler", ["ohem", "iou_balanced", "pisa"])
def test_every_sampler_trains_a_step_with_an_empty_image(sampler):
    features, proposals, targets = batch()
    cfg = head_cfg("SamplingStandardROIHeads", sampler)
    if sampler == "pisa":
        cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "PISAFastRCNNOutputLayers"
    head = build(cfg)
    head.train()
    with EventStorage() as storage:
        sampled, losses = head(None, features, proposals, targets)
        sum(losses.values()).backward()
        assert storage.latest()["imbalance/roi_head/num_fg"][0] > 0
    assert all(torch.isfinite(v) for v in losses.values())
    assert head._sampling_features is None
    # every sampler keeps at most BATCH_SIZE_PER_IMAGE RoIs per image
    assert all(len(p) <= 16 for p in sampled)
    if sampler == "pisa":
        assert "loss_carl" in losses


def test_candidate_head_is_the_box_head_on_the_asked_candidates():
    features, proposals, _ = batch()
    head = build(head_cfg("SamplingStandardROIHeads", "pisa"))
    idx = torch.tensor([3, 0, 17])
    with head.sampling_features(features):
        logits, boxes = head.candidate_head(proposals[1], idx, image_index=1)
    # reference: Detectron2's pooler, box head and predictor on those boxes of image 1
    x = [features[f][1:2] for f in ("p2", "p3")]
    subset = proposals[1].proposal_boxes[idx]
    with torch.no_grad():
        pred = head.box_predictor(head.box_head(head.box_pooler(x, [subset])))
        ref_boxes = head.box_predictor.box2box_transform.apply_deltas(pred[1], subset.tensor)
    assert torch.allclose(logits, pred[0]) and torch.allclose(boxes, ref_boxes)
    assert boxes.shape == (3, 4 * K)


def test_cascade_with_random_equals_detectron2_cascade():
    features, proposals, targets = batch()
    ours = build(head_cfg("SamplingCascadeROIHeads"))
    theirs = build(head_cfg("CascadeROIHeads"))
    assert isinstance(ours, SamplingCascadeROIHeads)
    ours.load_state_dict(theirs.state_dict())
    ours.train(), theirs.train()
    with EventStorage():
        torch.manual_seed(0)
        _, la = theirs(None, features, proposals, targets)
    with EventStorage() as storage:
        torch.manual_seed(0)
        _, lb = ours(None, features, proposals, targets)
        latest = storage.latest()
    assert la.keys() == lb.keys()
    for k in la:
        assert torch.allclose(la[k], lb[k], rtol=0, atol=0), k
    for stage in ("stage0", "stage1", "stage2"):
        assert f"imbalance/{stage}/num_fg" in latest and f"imbalance/{stage}/iou_0.95" in latest
    # later stages label every box: fg + bg = all boxes of both images
    ours_total = latest["imbalance/stage1/num_fg"][0] + latest["imbalance/stage1/num_bg"][0]
    d2_per_image = (latest["stage1/roi_head/num_fg_samples"][0]
                    + latest["stage1/roi_head/num_bg_samples"][0])
    assert ours_total == d2_per_image * 2


@pytest.mark.parametrize("name", ["SamplingCascadeROIHeads", "SamplingStandardROIHeads"])
@pytest.mark.parametrize("key", ["USE_SIGMOID_CE", "USE_FED_LOSS"])
def test_sampling_heads_refuse_main_classification_keys(name, key):
    # Detectron2 main's sigmoid / federated classification (keys absent in v0.6, set by hand):
    # the sampling heads classify (and OHEM, PISA score candidates) with the softmax, so the
    # default predictor is refused too, naming the key and the head
    cfg = head_cfg(name)
    assert cfg.MODEL.ROI_BOX_HEAD.PREDICTOR == "FastRCNNOutputLayers"
    setattr(cfg.MODEL.ROI_BOX_HEAD, key, True)
    with pytest.raises(ValueError, match=f"MODEL.ROI_BOX_HEAD.{key}=True is not supported by "
                                         f"{name}: it classifies with the softmax"):
        build(cfg)
    setattr(cfg.MODEL.ROI_BOX_HEAD, key, False)
    assert type(build(cfg)).__name__ == name


def test_cascade_with_default_predictor_is_initialised_as_detectron2():
    # under one seed, the same weights as CascadeROIHeads without copying them
    ours, theirs = build(head_cfg("SamplingCascadeROIHeads")), build(head_cfg("CascadeROIHeads"))
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cascade_weighted_predictors_keep_each_stage_box_transform():
    # a predictor rebuilt by MODEL.ROI_BOX_HEAD.PREDICTOR keeps its stage's box-delta weights
    # (Cascade R-CNN's (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)), not the head's default
    cfg = head_cfg("SamplingCascadeROIHeads")
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "WeightedFastRCNNOutputLayers"
    head = build(cfg)
    assert [p.box2box_transform.weights for p in head.box_predictor] == [
        tuple(w) for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS]
    assert [tuple(w) for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS][1] == (
        20.0, 20.0, 10.0, 10.0)


def test_cascade_stage0_sampling_takes_the_given_matcher_and_append_gt():
    # a matcher at IoU 0.99 and no ground truth appended: no proposal of batch() comes that close
    # to a ground-truth box, so every sampled RoI is background; with the head's own matcher
    # (0.5) or the ground truth appended (IoU 1), some would be foreground
    _, proposals, targets = batch()
    head = build(head_cfg("SamplingCascadeROIHeads"))
    strict = Matcher([0.99], [0, 1], allow_low_quality_matches=False)
    with EventStorage():
        sampled = head.label_and_sample_proposals(proposals, targets, matcher=strict,
                                                  append_gt=False)
        default = head.label_and_sample_proposals(proposals, targets)
    assert all(bool((p.gt_classes == K).all()) for p in sampled)
    assert sum(len(p) for p in sampled) == 32  # 16 per image, all background
    assert any(bool((p.gt_classes < K).any()) for p in default)


def test_cached_head_answers_its_candidates_and_passes_others_on():
    cached, logits, boxes = torch.tensor([4, 1]), torch.ones(2, 3), torch.zeros(2, 4)
    asked = []

    def fallback(indices):
        asked.append(indices.tolist())
        return "own pass"

    got = _cached_head(cached, logits, boxes, fallback, torch.tensor([4, 1]))
    assert got[0] is logits and got[1] is boxes
    assert _cached_head(cached, logits, boxes, fallback, torch.tensor([1, 4])) == "own pass"
    assert asked == [[1, 4]]


def test_cascade_pisa_uses_stage0_modules_and_pisa_predictors():
    features, proposals, targets = batch()
    cfg = head_cfg("SamplingCascadeROIHeads", "pisa")
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "PISAFastRCNNOutputLayers"
    head = build(cfg)
    assert all(getattr(p, "applies_pisa", False) for p in head.box_predictor)
    assert head.sampling_box_modules("stage0")[0] is head.box_head[0]
    head.train()
    with EventStorage():
        _, losses = head(None, features, proposals, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_pisa_batched_head_pass_samples_as_one_pass_per_image():
    # the sampling heads evaluate every image's negatives in one pooler/box-head call; the
    # sampled RoIs and weights are those of a pass per image (the sampler asking candidate_head)
    features, proposals, targets = batch()
    cfg = head_cfg("SamplingStandardROIHeads", "pisa", batch=8)
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "PISAFastRCNNOutputLayers"
    head = build(cfg)
    head.train()
    runs, calls = [], []
    box_head_forward = head.box_head.forward

    def counting_forward(x):
        calls[-1] += 1
        return box_head_forward(x)

    head.box_head.forward = counting_forward
    for batched in (True, False):
        if not batched:
            head.roi_sampler.head_candidates = lambda candidates: None
        calls.append(0)
        with EventStorage(), head.sampling_features(features):
            torch.manual_seed(0)
            runs.append(head.label_and_sample_proposals(proposals, targets))
    assert calls == [1, 2]  # one box-head pass for the batch, or one per image
    for a, b in zip(*runs):
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
        assert torch.allclose(a.loss_weights, b.loss_weights, rtol=1e-5, atol=0)
        assert (a.loss_weights != 1).any() or len(a) == 0


class RecordingHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", ["SamplingStandardROIHeads", "SamplingCascadeROIHeads"])
def test_weighting_sampler_without_its_predictor_warns(name):
    handler = RecordingHandler()
    logger = logging.getLogger("imbalance.samplers.roi_heads")
    logger.addHandler(handler)
    try:
        build(head_cfg(name, "pisa"))
        cfg = head_cfg(name, "pisa")
        cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "PISAFastRCNNOutputLayers"
        build(cfg)
        build(head_cfg(name, "ohem"))  # OHEM weighs nothing
    finally:
        logger.removeHandler(handler)
    assert handler.messages == [
        "MODEL.ROI_HEADS.SAMPLER='pisa' weighs RoIs, but the box predictor (FastRCNNOutputLayers) "
        "does not apply its weights (no applies_pisa); set MODEL.ROI_BOX_HEAD.PREDICTOR to "
        "'PISAFastRCNNOutputLayers'."]


def test_candidates_outside_forward_are_refused():
    _, proposals, _ = batch()
    head = build(head_cfg("SamplingStandardROIHeads", "pisa"))
    with pytest.raises(RuntimeError, match=r"^SamplingStandardROIHeads evaluates the candidates "
                                           r"with the features of the current forward; the "
                                           r"PISASampler sampler works only inside forward\(\)$"):
        head.candidate_head(proposals[0], torch.tensor([0]))


def test_sampling_box_modules_of_a_cascade():
    head = build(head_cfg("SamplingCascadeROIHeads"))
    for stage, k in (("stage0", 0), ("stage2", 2), ("loop1", 1), ("roi_head", 0)):
        box_head, predictor = head.sampling_box_modules(stage)
        assert box_head is head.box_head[k] and predictor is head.box_predictor[k], stage


def test_sampled_proposals_carry_their_iou_by_hand():
    # gt_ious: the IoU of each sampled proposal with the ground-truth box it is matched to
    # (0 in the image without ground truth), as pairwise_iou of the two boxes
    _, proposals, targets = batch()
    head = build(head_cfg("SamplingStandardROIHeads"))
    with EventStorage():
        sampled = head.label_and_sample_proposals(proposals, targets)
    s = sampled[0]
    ref = pairwise_iou(s.proposal_boxes, s.gt_boxes).diagonal()
    assert torch.allclose(s.gt_ious, ref) and bool((s.gt_ious[s.gt_classes < K] >= 0.5).all())
    assert not sampled[1].has("gt_boxes") and sampled[1].gt_ious.tolist() == [0.0] * 16
    assert sampled[1].gt_ious.dtype == s.gt_ious.dtype == torch.float32
    assert sampled[1].gt_classes.tolist() == [K] * 16


@pytest.mark.parametrize("num_gt", [1, 2])
@pytest.mark.parametrize("ignore_zone", [False, True])
def test_labels_as_detectron2_with_one_gt_and_an_ignore_zone(num_gt, ignore_zone):
    # an image with a single ground-truth box, and IoUs in [0.3, 0.5) ignored (label -1): the
    # random sampler's RoIs and labels are Detectron2's StandardROIHeads'
    _, proposals, targets = batch()
    targets = [targets[0][:num_gt], targets[1]]
    cfgs = [head_cfg("SamplingStandardROIHeads"), head_cfg("StandardROIHeads")]
    for cfg in cfgs:
        if ignore_zone:
            cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.3, 0.5]
            cfg.MODEL.ROI_HEADS.IOU_LABELS = [0, -1, 1]
    ours, theirs = build(cfgs[0]), build(cfgs[1])
    with EventStorage():
        torch.manual_seed(0)
        a = ours.label_and_sample_proposals(proposals, targets)
        torch.manual_seed(0)
        b = theirs.label_and_sample_proposals(proposals, targets)
    assert bool((a[0].gt_classes < K).any())
    for x, y in zip(a, b):
        assert torch.equal(x.proposal_boxes.tensor, y.proposal_boxes.tensor)
        assert torch.equal(x.gt_classes, y.gt_classes)


def test_cascade_ohem_trains_a_step_on_stage0_candidates():
    features, proposals, targets = batch()
    head = build(head_cfg("SamplingCascadeROIHeads", "ohem"))
    head.train()
    with EventStorage() as storage:
        _, losses = head(None, features, proposals, targets)
        latest = storage.latest()
    assert all(torch.isfinite(v) for v in losses.values())
    # stage 0 kept BATCH_SIZE_PER_IMAGE = 16 RoIs per image (OHEM, no foreground fraction)
    assert latest["imbalance/stage0/num_fg"][0] + latest["imbalance/stage0/num_bg"][0] == 32


def test_ohem_head_nms_by_loss_leaves_no_overlap_above_the_threshold():
    features, proposals, targets = batch()
    cfg = head_cfg("SamplingStandardROIHeads", "ohem", batch=10)
    head = build(cfg)
    with EventStorage(), head.sampling_features(features):
        sampled = head.label_and_sample_proposals(proposals, targets)
    for s in sampled:
        iou = pairwise_iou(s.proposal_boxes, s.proposal_boxes)
        iou.fill_diagonal_(0)
        assert len(s) == 10 and float(iou.max()) <= 0.7
    # without the NMS the same heads keep overlapping RoIs (the test above is not vacuous)
    cfg.MODEL.ROI_HEADS.OHEM.NMS_THRESH = 0.0
    head = build(cfg)
    with EventStorage(), head.sampling_features(features):
        sampled = head.label_and_sample_proposals(proposals, targets)
    iou = pairwise_iou(sampled[0].proposal_boxes, sampled[0].proposal_boxes).fill_diagonal_(0)
    assert float(iou.max()) > 0.7
