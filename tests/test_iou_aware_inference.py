"""Tests of the IoU-aware detectors' inference: the decoding (one topk of Eq. 5 over every location
and class, then the threshold; NMS of the best candidates first) gives the detections of the
straightforward computation (Eq. 5 on every location and class, then Detectron2's own decoding:
threshold, sort, top k, batched_nms) on fixed weights."""
import os

import numpy as np
import pytest
import torch

import d2infra.modeling  # noqa: F401  registers the small backbone
from detectron2.config import get_cfg
from detectron2.layers import batched_nms
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from imbalance.config import add_imbalance_config

import iou_aware
from iou_aware.iou_branch import nms_top_detections

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "iou_aware")
SIZE = 128


def make_cfg(config, **overrides):
    cfg = get_cfg()
    add_imbalance_config(cfg)
    iou_aware.add_iou_aware_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SMALL_RESNET.STEM_OUT_CHANNELS = 8
    cfg.MODEL.SMALL_RESNET.STAGE_OUT_CHANNELS = [8, 16, 24, 32]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.FCOS.NUM_CLASSES = 3
    # Few candidates per level, so that the top-k selection binds.
    cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 60
    cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST = 60
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.05
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def trained_like(model, seed=0, iou_near_1=False, young=False):
    """Fixed weights whose scores look like a trained model's: most classification scores far
    below the threshold, a few above it, predicted IoUs spread over (0, 1) (or all near 1, the
    largest confidence a classification score can reach). ``young``: like a model after a few
    hundred iterations, every classification score near 0.1, so that every confidence passes the
    threshold and the top k of each level are chosen among all pairs."""
    torch.manual_seed(seed)
    head = model.head
    with torch.no_grad():
        head.cls_score.weight.normal_(0, 0.01 if young else 0.3)
        head.cls_score.bias.normal_(-4.0, 2.0)
        if young:
            head.cls_score.bias.uniform_(-2.5, -1.5)
        for conv in (head.bbox_pred, head.iou_pred, getattr(head, "ctrness", None)):
            if conv is not None:
                conv.weight.normal_(0, 0.3)
                conv.bias.normal_(0, 0.5)
        if iou_near_1:
            head.iou_pred.weight.normal_(0, 0.01)
            head.iou_pred.bias.fill_(6.0)  # sigmoid(6) = 0.9975
    return model.eval()


def images(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, SIZE, SIZE, generator=g) * 255} for _ in range(2)]


def straightforward(model, batch, quality_of):
    """Eq. 5 on every location and class (written out here), then Detectron2's decoding
    (``RetinaNet.inference_single_image``: threshold, top-k per level, per-class NMS)."""
    imgs = model.preprocess_image(batch)
    features = model.backbone(imgs.tensor)
    features = [features[f] for f in model.head_in_features]
    outputs = model.head(features)
    logits, deltas, *rest = outputs
    n = model.num_classes
    splits = [n, 4] + [1] * len(rest)
    transposed = model._transpose_dense_predictions(outputs, splits)
    logits, deltas, extra = transposed[0], transposed[1], transposed[2:]
    anchors = model.anchor_generator(features)
    a = model.iou_alpha
    results = []
    for i, size in enumerate(imgs.image_sizes):
        confidences = []
        for lvl in range(len(logits)):
            p = logits[lvl][i].sigmoid()
            q = quality_of([e[lvl][i].sigmoid() for e in extra])
            confidences.append(p * q if a < 0 else p ** a * q ** (1 - a))
        results.append(RetinaNet.inference_single_image(
            model, anchors, confidences, [d[i] for d in deltas], size))
    return imgs, features, outputs, results


def canonical(inst):
    """(score, class, box) rows sorted by score, then class and box: the order of detections of
    equal score is arbitrary (Detectron2 main selects the top k with topk, v0.6 with sort)."""
    rows = torch.cat([inst.scores[:, None], inst.pred_classes[:, None].float(),
                      inst.pred_boxes.tensor], dim=1).numpy()
    return torch.from_numpy(rows[np.lexsort(rows.T[::-1])])


def assert_same_detections(ours, ref):
    assert len(ref) > 20  # enough detections to compare
    assert len(ours) == len(ref)
    o, r = canonical(ours), canonical(ref)
    assert torch.equal(o[:, 1], r[:, 1])  # classes
    assert torch.allclose(o[:, 0], r[:, 0], rtol=1e-6, atol=1e-7)  # scores
    assert torch.allclose(o[:, 2:], r[:, 2:])  # boxes


# Detectron2's selection as configured (top-k binds), or every candidate above the threshold kept
# to the output (no top-k, no NMS, no cap): the latter shows any candidate lost under the floor.
KEEP_ALL = {"MODEL.RETINANET.TOPK_CANDIDATES_TEST": 100000, "MODEL.RETINANET.NMS_THRESH_TEST": 1.0,
            "TEST.DETECTIONS_PER_IMAGE": 100000}


@pytest.mark.parametrize("keep_all", [False, True])
@pytest.mark.parametrize("alpha", [0.5, 0.3, -1.0, 1.0])
def test_iou_aware_retinanet_detections_equal_the_straightforward_computation(alpha, keep_all):
    model = trained_like(build_model(make_cfg(
        "iou_aware_retinanet_smallR_FPN_shapes.yaml", **{"MODEL.IOU_AWARE.ALPHA": alpha},
        **(KEEP_ALL if keep_all else {}))), iou_near_1=keep_all)
    with torch.no_grad():
        imgs, features, outputs, expected = straightforward(model, images(), lambda e: e[0])
        ours = model.forward_inference(imgs, features, outputs)
    for o, e in zip(ours, expected):
        assert_same_detections(o, e)


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_young_model_every_pair_passes_and_topk_binds(alpha):
    """Every (location, class) confidence passes the threshold and each level has more pairs than
    the top k: the top k of all pairs are the detections' candidates, as Detectron2's sort of all
    the pairs above the threshold makes them."""
    model = trained_like(build_model(make_cfg(
        "iou_aware_retinanet_smallR_FPN_shapes.yaml", **{"MODEL.IOU_AWARE.ALPHA": alpha})),
        young=True)
    with torch.no_grad():
        imgs, features, outputs, expected = straightforward(model, images(), lambda e: e[0])
        logits, _, iou_logits = model._transpose_dense_predictions(
            outputs, [model.num_classes, 4, 1])
        for p, q in zip(logits, iou_logits):  # every pair passes; top k binds on the first levels
            s = p.sigmoid() ** alpha * q.sigmoid() ** (1 - alpha)
            assert (s > model.test_score_thresh).all()
        assert logits[0].shape[1] * logits[0].shape[2] > model.test_topk_candidates
        ours = model.forward_inference(imgs, features, outputs)
    for o, e in zip(ours, expected):
        assert_same_detections(o, e)


@pytest.mark.parametrize("mode", ["train_only", "multiply"])
def test_iou_aware_fcos_detections_equal_the_straightforward_computation(mode):
    model = trained_like(build_model(make_cfg(
        "iou_aware_fcos_smallR_FPN_shapes.yaml",
        **{"MODEL.IOU_AWARE.FCOS_CENTERNESS": mode, "MODEL.IOU_AWARE.ALPHA": 0.3})))

    def quality(extra):  # extra: centerness, IoU (the head's order)
        ctrness, iou = extra
        return iou * ctrness if mode == "multiply" else iou

    with torch.no_grad():
        imgs, features, outputs, expected = straightforward(model, images(), quality)
        ours = model.forward_inference(imgs, features, outputs)
    for o, e in zip(ours, expected):
        assert_same_detections(o, e)


def clustered_candidates(num, num_classes=6, objects=8, seed=0, scattered=0.3):
    """Candidates as a dense detector makes them: many jittered boxes around a few objects, in
    several classes, plus scattered boxes; scores in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(objects, 2, generator=g) * 200
    sizes = 20 + torch.rand(objects, 2, generator=g) * 60
    which = torch.randint(0, objects, (num,), generator=g)
    ctr = centres[which] + torch.randn(num, 2, generator=g) * 6
    wh = sizes[which] * (1 + 0.2 * torch.randn(num, 2, generator=g)).clamp(min=0.3)
    scattered = torch.rand(num, generator=g) < scattered
    ctr[scattered] = torch.rand(int(scattered.sum()), 2, generator=g) * 256
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    scores = torch.rand(num, generator=g)
    classes = torch.randint(0, num_classes, (num,), generator=g)
    return boxes, scores, classes


@pytest.mark.parametrize("num,max_det,objects,scattered", [
    (2216, 100, 8, 0.3), (2216, 20, 8, 0.3), (900, 100, 8, 0.3), (300, 100, 8, 0.3),
    (2216, 400, 8, 0.3), (50, 100, 8, 0.3),
    # 3 objects, nothing scattered: 154 boxes survive, the first 100 among the best 776 (n grows
    # from 500 to 1000); with max_det 200 never enough survive (n grows to all).
    (2216, 100, 3, 0.0), (2216, 200, 3, 0.0),
])
def test_nms_of_the_best_candidates_first_equals_nms_of_all(num, max_det, objects, scattered):
    """Against Detectron2's batched_nms of every candidate, cut to max_det: the same boxes in the
    same order, whether the first n suffice, n must grow, or fewer than max_det survive."""
    boxes, scores, classes = clustered_candidates(num, objects=objects, scattered=scattered)
    expected = batched_nms(boxes, scores, classes, 0.5)[:max_det]
    ours = nms_top_detections(boxes, scores, classes, 0.5, max_det)
    assert torch.equal(ours, expected)


def test_nms_of_the_best_candidates_first_with_ties_at_the_cut():
    """Scores in steps of 1/64, so that the first cuts (500, 1000 candidates) fall inside groups of
    equal scores. Which of equally scored boxes NMS visits first is arbitrary in batched_nms too,
    so only the kept scores are compared."""
    boxes, scores, classes = clustered_candidates(2216, seed=3)
    scores = (scores * 64).floor() / 64 + 0.01
    ranked = scores.sort(descending=True).values
    assert ranked[499] == ranked[500] and ranked[999] == ranked[1000]
    expected = batched_nms(boxes, scores, classes, 0.5)[:100]
    ours = nms_top_detections(boxes, scores, classes, 0.5, 100)
    assert torch.equal(scores[ours], scores[expected])


def per_class_nms_by_hand(boxes, scores, classes, iou_threshold):
    """Greedy NMS of each class on its own (torchvision's ``nms``), the kept indices of all
    classes in decreasing score."""
    from torchvision.ops import nms

    kept = []
    for c in classes.unique().tolist():
        members = torch.nonzero(classes == c).squeeze(1)
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    kept = torch.cat(kept)
    return kept[scores[kept].sort(descending=True).indices]


@pytest.mark.parametrize("num,max_det,num_classes", [(2216, 100, 80), (2216, 100, 6),
                                                      (700, 300, 80), (3000, 1000, 80)])
def test_nms_equals_per_class_nms_by_hand(num, max_det, num_classes):
    """80 classes (COCO's) or 6: the kept boxes are those of NMS run class by class, in decreasing
    confidence, cut to max_det (boxes on the integer grid, so that the class offsets of the
    one-kernel NMS change no IoU)."""
    boxes, scores, classes = clustered_candidates(num, num_classes=num_classes, seed=5)
    boxes = boxes.round()
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    expected = per_class_nms_by_hand(boxes, scores, classes, 0.5)[:max_det]
    ours = nms_top_detections(boxes, scores, classes, 0.5, max_det)
    assert len(expected) == min(max_det, len(per_class_nms_by_hand(boxes, scores, classes, 0.5)))
    assert torch.equal(ours, expected)
