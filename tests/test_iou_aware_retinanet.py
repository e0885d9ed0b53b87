"""Tests of iou_aware.retinanet: IoU-aware RetinaNet against Detectron2's RetinaNet on the same
weights, its IoU loss against an independent computation, the target gradient switch, and the
confidence ranking before top-k."""
import os

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import box_iou

import d2infra.modeling  # noqa: F401  registers the small backbone
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from imbalance.config import add_imbalance_config

import iou_aware
from iou_aware.iou_branch import detection_confidence

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "configs", "iou_aware", "iou_aware_retinanet_smallR_FPN_shapes.yaml"
)
SIZE = 64


def make_cfg(**overrides):
    cfg = get_cfg()
    add_imbalance_config(cfg)
    iou_aware.add_iou_aware_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SMALL_RESNET.STEM_OUT_CHANNELS = 8
    cfg.MODEL.SMALL_RESNET.STAGE_OUT_CHANNELS = [8, 16, 24, 32]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8, 12], [16, 24], [32, 48], [64, 96], [128, 192]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0]]  # A = 4 anchors per location
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, v)
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    # Spread the outputs so that scores and IoUs vary across anchors.
    with torch.no_grad():
        for conv in (model.head.cls_score, model.head.bbox_pred, getattr(model.head, "iou_pred", None)):
            if conv is not None:
                conv.weight.normal_(0, 0.3)
                conv.bias.normal_(0, 0.5)
    return model


def images(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.rand(3, SIZE, SIZE, generator=g) * 255, "height": SIZE, "width": SIZE}
        for _ in range(2)
    ]


def with_instances(batch):
    a = Instances((SIZE, SIZE))
    a.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 18.0, 60.0, 50.0]]))
    a.gt_classes = torch.tensor([0, 2])
    empty = Instances((SIZE, SIZE))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    batch[0]["instances"], batch[1]["instances"] = a, empty
    return batch


def test_alpha_one_equals_detectron2_retinanet():
    cfg = make_cfg(**{"MODEL.IOU_AWARE.ALPHA": 1.0})
    ours = build(cfg).eval()
    ref_cfg = cfg.clone()
    ref_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    ref = build_model(ref_cfg).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["head.iou_pred.bias", "head.iou_pred.weight"]
    batch = images()
    with torch.no_grad():
        out, expected = ours(batch), ref(batch)
    total = 0
    for o, e in zip(out, expected):
        o, e = o["instances"], e["instances"]
        total += len(e)
        assert len(o) == len(e)
        assert torch.equal(o.pred_boxes.tensor, e.pred_boxes.tensor)
        assert torch.equal(o.scores, e.scores)
        assert torch.equal(o.pred_classes, e.pred_classes)
        assert torch.equal(o.cls_scores, e.scores)
    assert total > 10  # the comparison is not vacuous

    # ... and at alpha 0.5 the same weights give other detections (the test can fail).
    ours.iou_alpha = 0.5
    with torch.no_grad():
        half = ours(batch)[0]["instances"]
    assert not torch.equal(half.scores, expected[0]["instances"].scores[: len(half)])
    # Output score is Eq. 5 of the output's own p and IoU.
    assert torch.allclose(half.scores, (half.cls_scores * half.pred_ious).sqrt(), atol=1e-6)


def test_confidence_ranks_before_topk():
    """With one candidate per level (TOPK 1) and no threshold, each level contributes the anchor
    and class of highest Eq. 5 confidence: computed independently from the head's raw outputs."""
    cfg = make_cfg(
        **{
            "MODEL.IOU_AWARE.ALPHA": 0.3,
            "MODEL.RETINANET.TOPK_CANDIDATES_TEST": 1,
            "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0,
            "MODEL.RETINANET.NMS_THRESH_TEST": 1.0,  # keep all: NMS suppresses IoU > 1 only
        }
    )
    model = build(cfg).eval()
    batch = images(seed=3)[:1]
    with torch.no_grad():
        out = model(batch)[0]["instances"]
        x = model.preprocess_image(batch).tensor
        feats = model.backbone(x)
        feats = [feats[f] for f in model.head_in_features]
        logits, _, iou_logits = model.head(feats)
    A, K = 4, 3
    expected, by_cls = [], []
    for lg, il in zip(logits, iou_logits):
        n, _, h, w = lg.shape
        p = lg.view(1, A, K, h, w).permute(0, 3, 4, 1, 2).reshape(-1, K).sigmoid()
        q = il.view(1, A, 1, h, w).permute(0, 3, 4, 1, 2).reshape(-1, 1).sigmoid()
        s = p ** 0.3 * q ** 0.7  # Eq. 5
        expected.append(s.max().item())
        by_cls.append(p.max().item())
    assert sorted(out.scores.tolist()) == pytest.approx(sorted(expected), rel=1e-5)
    # Ranking by p alone would keep other candidates on at least one level.
    assert sorted(out.cls_scores.tolist()) != pytest.approx(sorted(by_cls), rel=1e-5)


def test_iou_loss_matches_independent_computation():
    cfg = make_cfg(**{"MODEL.IOU_AWARE.LOSS_WEIGHT": 2.0})
    model = build(cfg).train()
    batch = with_instances(images())
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_iou"}
    assert all(torch.isfinite(v) for v in losses.values())

    # Independent: Detectron2's labelling, decode positives, torchvision IoU, torch BCE.
    model.eval()
    with torch.no_grad():
        x = model.preprocess_image(batch).tensor
        feats = model.backbone(x)
        feats = [feats[f] for f in model.head_in_features]
        _, deltas, iou_logits = model.head(feats)
        anchors = model.anchor_generator(feats)
        gt = [b["instances"] for b in batch]
        labels, gt_boxes = model.label_anchors(anchors, gt)
    # The model was in train mode for the loss (BN statistics from the batch): recompute in train.
    model.train()
    with torch.no_grad():
        feats = model.backbone(x)
        feats = [feats[f] for f in model.head_in_features]
        _, deltas, iou_logits = model.head(feats)
    all_anchors = Boxes.cat(anchors).tensor
    total, num_pos = 0.0, 0
    for i in range(2):
        d = torch.cat([t[i].permute(1, 2, 0).reshape(-1, 4) for t in deltas])
        q = torch.cat([t[i].permute(1, 2, 0).reshape(-1) for t in iou_logits])
        pos = (labels[i] >= 0) & (labels[i] < 3)
        num_pos += int(pos.sum())
        if pos.any():
            boxes = model.box2box_transform.apply_deltas(d[pos], all_anchors[pos])
            target = box_iou(boxes, gt_boxes[i][pos]).diagonal()
            total += F.binary_cross_entropy(q[pos].sigmoid(), target, reduction="sum").item()
    assert num_pos > 0
    normalizer = 0.9 * 100 + 0.1 * num_pos  # RetinaNet's EMA after one step
    assert losses["loss_iou"].item() == pytest.approx(2.0 * total / normalizer, rel=1e-4)


@pytest.mark.parametrize("target_gradient", [True, False])
def test_target_gradient_reaches_regression_weights_only_when_on(target_gradient):
    cfg = make_cfg(**{"MODEL.IOU_AWARE.TARGET_GRADIENT": target_gradient})
    model = build(cfg).train()
    with EventStorage():
        losses = model(with_instances(images()))
    losses["loss_iou"].backward()
    grad = model.head.bbox_pred.weight.grad
    assert model.head.iou_pred.weight.grad.abs().sum() > 0
    if target_gradient:
        assert grad is not None and grad.abs().sum() > 0
    else:
        assert grad is None or grad.abs().sum() == 0


@pytest.mark.parametrize(
    "key,value", [("MODEL.IOU_AWARE.ALPHA", 1.5), ("MODEL.IOU_AWARE.LOSS_TYPE", "l1")]
)
def test_bad_config_is_an_error_at_build(key, value):
    with pytest.raises(ValueError):
        build_model(make_cfg(**{key: value}))


def test_product_mode_scores():
    model = build(make_cfg(**{"MODEL.IOU_AWARE.ALPHA": -1.0})).eval()
    with torch.no_grad():
        inst = model(images())[0]["instances"]
    assert len(inst) > 0
    assert torch.allclose(inst.scores, inst.cls_scores * inst.pred_ious)
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])  # NMS output, sorted by confidence
