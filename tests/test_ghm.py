"""GHM-C against hand-computed values, and the RetinaNet option that uses it."""
import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import imbalance
from imbalance.losses import GHMCLoss, GHMRLoss
from imbalance.modeling.retinanet import ImbalanceRetinaNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def logit(p):
    return math.log(p / (1 - p))


# p = sigmoid(logit), target t: g = |p - t|, CE = -log(p) if t else -log(1 - p)
P1 = [0.91, 0.96, 0.09, 0.52, 0.21]
T1 = [1, 1, 0, 0, 1]
# g = .09 .04 .09 .52 .79 -> bins (M = 30) 2, 1, 2, 15, 23: 4 of the 30 bins hold elements
CE1 = [-math.log(0.91), -math.log(0.96), -math.log(0.91), -math.log(0.48), -math.log(0.21)]


def test_ghmc_single_batch_by_hand_normalised_by_non_empty_bins():
    # The authors' code: w_i = tot / (R_bin * n) with n = 4 non-empty bins, L = sum w_i CE_i / tot
    loss = GHMCLoss(bins=30, momentum=0.0)
    x = torch.tensor([logit(p) for p in P1], dtype=torch.float64, requires_grad=True)
    got = loss(x, torch.tensor(T1, dtype=torch.float64))
    expected = (CE1[0] + CE1[2]) / (2 * 4) + CE1[1] / 4 + CE1[3] / 4 + CE1[4] / 4
    assert float(got) == pytest.approx(expected, rel=1e-6)
    got.backward()
    # d CE / d x = p - t, scaled by 1 / (R_bin * n) (the density is a constant)
    d = [8, 4, 8, 4, 4]
    assert x.grad.tolist() == pytest.approx([(p - t) / k for p, t, k in zip(P1, T1, d)], rel=1e-6)


def test_ghmc_one_element_per_bin_gives_mean_cross_entropy():
    # every bin holds one element: R = 1, n = M = N, so w_i = 1 and L is the mean CE
    loss = GHMCLoss(bins=4, momentum=0.0)
    p = torch.tensor([0.9, 0.7, 0.4, 0.1], dtype=torch.float64)  # g = .1 .3 .6 .9 for target 1
    x = torch.log(p / (1 - p))
    got = loss(x, torch.ones(4, dtype=torch.float64))
    assert float(got) == pytest.approx(float(-torch.log(p).mean()), rel=1e-6)


def test_ghmc_moving_average_starts_from_zero_and_skips_empty_bins():
    loss = GHMCLoss(bins=30, momentum=0.75)
    first = loss(torch.tensor([logit(p) for p in P1]), torch.tensor(T1, dtype=torch.float32))
    # first batch: S = 0.25 * R from S = 0, so the loss is 4x the plain counts' (n = 4)
    s1 = {1: 0.25, 2: 0.5, 15: 0.25, 23: 0.25}
    assert float(first) == pytest.approx(
        (CE1[0] + CE1[2]) / (s1[2] * 4) + CE1[1] / (s1[1] * 4) + CE1[3] / (s1[15] * 4)
        + CE1[4] / (s1[23] * 4), rel=1e-5)
    # second batch: g = .09 .52 .52 -> bins 2, 15, 15 (n = 2); bins 1 and 23 keep their values
    p2, t2 = [0.91, 0.48, 0.52], [1, 1, 0]
    got = loss(torch.tensor([logit(p) for p in p2]), torch.tensor(t2, dtype=torch.float32))
    s2 = {2: 0.75 * s1[2] + 0.25 * 1, 15: 0.75 * s1[15] + 0.25 * 2}
    ce = [-math.log(0.91), -math.log(0.48), -math.log(0.48)]
    assert float(got) == pytest.approx(ce[0] / (s2[2] * 2) + (ce[1] + ce[2]) / (s2[15] * 2),
                                       rel=1e-5)
    expected_s = [0.0] * 30
    expected_s[1], expected_s[23], expected_s[2], expected_s[15] = 0.25, 0.25, s2[2], s2[15]
    assert loss.acc_counts.tolist() == pytest.approx(expected_s)


def test_ghm_empty():
    assert float(GHMCLoss()(torch.zeros(0, 3), torch.zeros(0, 3))) == 0.0
    assert float(GHMRLoss()(torch.zeros(0, 4), torch.zeros(0, 4))) == 0.0


def asl1(d, mu=0.02):
    return math.sqrt(d * d + mu * mu) - mu


# GHM-R: d = prediction - target; g = |d| / sqrt(d^2 + mu^2) with mu = 0.02:
# d = 0 -> g 0 (bin 0); 0.01 -> 0.447 (bin 4); -0.05 -> 0.928, 0.3 -> 0.998, 2.0 -> 0.99995,
# -0.5 -> 0.9992 (bin 9): 3 non-empty bins of 10
D = [0.0, 0.01, -0.05, 0.3, 2.0, -0.5]


def test_ghmr_against_asl1_by_hand():
    loss = GHMRLoss(mu=0.02, bins=10, momentum=0.0, loss_weight=10.0)
    target = torch.tensor([[0.5, -0.2, 0.1], [0.0, 1.0, -1.0]], dtype=torch.float64)
    pred = (target + torch.tensor(D, dtype=torch.float64).view(2, 3)).requires_grad_()
    got = loss(pred, target)
    expected = 10.0 * (asl1(D[0]) / (1 * 3) + asl1(D[1]) / (1 * 3)
                       + sum(asl1(d) for d in D[2:]) / (4 * 3))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    got.backward()
    # d ASL1 / d d = d / sqrt(d^2 + mu^2), scaled by loss_weight / (R_bin * n)
    k = [3, 3, 12, 12, 12, 12]
    assert pred.grad.flatten().tolist() == pytest.approx(
        [10.0 * d / math.sqrt(d * d + 0.02 ** 2) / r for d, r in zip(D, k)], rel=1e-6)


def test_ghmr_momentum_from_zero():
    loss = GHMRLoss(mu=0.02, bins=10, momentum=0.7, loss_weight=1.0)
    target = torch.zeros(6, dtype=torch.float64)
    got = loss(torch.tensor(D, dtype=torch.float64), target)
    # first batch: S = 0.3 * R
    expected = (asl1(D[0]) / (0.3 * 3) + asl1(D[1]) / (0.3 * 3)
                + sum(asl1(d) for d in D[2:]) / (1.2 * 3))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def retinanet_cfg(config="retinanet_ghmc_smallR_FPN_shapes.yaml", **opts):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "samplers", config))
    for k, v in opts.items():
        cfg.merge_from_list([k, v])
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SMALL_RESNET.STAGE_OUT_CHANNELS = [8, 16, 24, 32]
    cfg.MODEL.SMALL_RESNET.STEM_OUT_CHANNELS = 8
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    return cfg


def inputs():
    g = torch.Generator().manual_seed(0)
    out = []
    for boxes, classes in (([[4.0, 6, 40, 50], [30, 10, 60, 30]], [1, 4]), ([], [])):
        inst = Instances((64, 64), gt_boxes=Boxes(torch.tensor(boxes).reshape(-1, 4)),
                         gt_classes=torch.tensor(classes, dtype=torch.long))
        out.append({"image": torch.rand(3, 64, 64, generator=g) * 255, "instances": inst})
    return out


def test_imbalance_retinanet_focal_equals_detectron2():
    torch.manual_seed(0)
    ref = build_model(retinanet_cfg(**{"MODEL.META_ARCHITECTURE": "RetinaNet"}))
    torch.manual_seed(0)
    ours = build_model(retinanet_cfg(**{"MODEL.RETINANET.CLS_LOSS": "focal"}))
    assert type(ref) is RetinaNet and isinstance(ours, ImbalanceRetinaNet)
    ours.load_state_dict(ref.state_dict())
    ref.train(), ours.train()
    batch = inputs()
    with EventStorage():
        a = ref(batch)
    with EventStorage() as storage:
        b = ours(batch)
        latest = storage.latest()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert latest["imbalance/anchors/num_fg"][0] == 2 * latest["num_pos_anchors"][0]
    assert latest["imbalance/anchors/num_bg"][0] > 0


@pytest.mark.parametrize("config", ["retinanet_ghmc_smallR_FPN_shapes.yaml",
                                    "retinanet_ghm_smallR_FPN_shapes.yaml"])
def test_imbalance_retinanet_ghm_step(config):
    torch.manual_seed(0)
    model = build_model(retinanet_cfg(config))
    assert model.cls_loss == "ghmc" and model.ghmc.bins == 30 and model.ghmc.momentum == 0.75
    if "ghmc" not in config:
        assert model.bbox_loss == "ghmr"
        r = model.ghmr
        assert (r.mu, r.bins, r.momentum, r.loss_weight) == (0.02, 10, 0.7, 10.0)
    model.train()
    with EventStorage() as storage:
        losses = model(inputs())
        sum(losses.values()).backward()
        assert "imbalance/anchors/fg_bg_ratio" in storage.latest()
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    assert torch.isfinite(losses["loss_box_reg"]) and losses["loss_box_reg"] > 0
    # the authors' per-level counting by default; the moving averages are in the checkpoint
    assert model.ghmc_per_level and model.ghmr_per_level
    assert "ghmc.acc_counts" in model.state_dict()
    assert "ghmc.inner_edges" not in model.state_dict()  # derived from BINS


def test_ghm_moving_averages_survive_a_checkpoint(tmp_path):
    # a run saved after one step and resumed continues as the uninterrupted run: the same
    # moving averages, the same second-step losses
    from detectron2.checkpoint import DetectionCheckpointer

    cfg = retinanet_cfg("retinanet_ghm_smallR_FPN_shapes.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage():
        model(inputs())
    assert float(model.ghmc.acc_counts.sum()) > 0 and float(model.ghmr.acc_counts.sum()) > 0
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("step1")
    torch.manual_seed(1)
    resumed = build_model(cfg)
    resumed.train()
    DetectionCheckpointer(resumed).load(str(tmp_path / "step1.pth"))
    for name in ("ghmc", "ghmr"):
        assert torch.equal(getattr(resumed, name).acc_counts, getattr(model, name).acc_counts)
    with EventStorage():
        a, b = model(inputs()), resumed(inputs())
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ghm_checkpoint_without_moving_averages_loads_with_zeros():
    # a checkpoint saved while the moving averages were not persistent has no acc_counts: it
    # loads strictly, the averages start from zero, and no key is reported missing
    torch.manual_seed(0)
    model = build_model(retinanet_cfg("retinanet_ghm_smallR_FPN_shapes.yaml"))
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("acc_counts")}
    model.ghmc.acc_counts.fill_(3.0)
    fresh = build_model(retinanet_cfg("retinanet_ghm_smallR_FPN_shapes.yaml"))
    result = fresh.load_state_dict(old, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert float(fresh.ghmc.acc_counts.abs().sum()) == 0.0
    assert float(fresh.ghmr.acc_counts.abs().sum()) == 0.0


def reference_ghm(levels, bins, momentum, edges_last):
    """The authors' loop (GHM_Detection loss/ghm_loss.py), one call per level with one moving
    average for all levels: levels is a list of (loss_elements, g) pairs."""
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] = edges_last
    acc = [0.0] * bins
    total = 0.0
    for elements, g in levels:
        weights, n = [0.0] * len(g), 0
        for b in range(bins):
            members = [i for i, gi in enumerate(g) if edges[b] <= gi < edges[b + 1]]
            if members:
                n += 1
                acc[b] = momentum * acc[b] + (1 - momentum) * len(members) if momentum > 0 \
                    else len(members)
                for i in members:
                    weights[i] = 1.0 / acc[b]
        total += sum(w * e for w, e in zip(weights, elements)) / max(n, 1)
    return total


def two_level_anchor_labels(K: int):
    """Hand-set inputs of a dense head's ``losses`` for 2 images: anchors on two FPN levels (6
    and 3), their labels (classes, background ``K``, ignored -1) and ground-truth boxes, with the
    seeded generator that made them (to draw the predictions next)."""
    g = torch.Generator().manual_seed(3)
    sizes = [6, 3]  # anchors of two FPN levels
    anchors = []
    for n in sizes:
        xy = torch.rand(n, 2, generator=g) * 40
        anchors.append(Boxes(torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 20], 1)))
    labels = [torch.tensor([0, K, -1, 3, K, K, 1, K, K]), torch.tensor([K, 2, K, K, -1, K, K, 5, K])]
    gt_boxes = [torch.cat(list(a.tensor for a in anchors)) + torch.randn(9, 4, generator=g)
                for _ in range(2)]
    return g, sizes, anchors, labels, gt_boxes


@pytest.mark.parametrize("per_level", [False, True, None])
def test_imbalance_retinanet_ghm_losses_per_level_option(per_level):
    # None: the default, the authors' per-level counting
    opts = {"MODEL.RETINANET.BBOX_LOSS": "ghmr"}
    if per_level is not None:
        opts.update({"MODEL.RETINANET.GHMC.PER_LEVEL": per_level,
                     "MODEL.RETINANET.GHMR.PER_LEVEL": per_level})
    cfg = retinanet_cfg(**opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    K = model.num_classes
    g, sizes, anchors, labels, gt_boxes = two_level_anchor_labels(K)
    logits = [torch.randn(2, n, K, generator=g, dtype=torch.float64) for n in sizes]
    deltas = [torch.randn(2, n, 4, generator=g, dtype=torch.float64) * 0.3 for n in sizes]
    with EventStorage():
        got = model.losses(anchors, logits, labels, deltas, gt_boxes)

    # reference: the authors' per-element loops over the valid anchors' K sigmoid outputs, and
    # over the positive anchors' 4 deltas, level by level or all at once
    all_anchors = torch.cat([a.tensor for a in anchors])
    cls_levels, reg_levels = [], []
    bounds = [(0, 6), (6, 9)] if per_level in (True, None) else [(0, 9)]
    for lo, hi in bounds:
        ce, gc, asl, gr = [], [], [], []
        for i in range(2):
            x = torch.cat(logits, dim=1)[i]
            d = torch.cat(deltas, dim=1)[i]
            t = model.box2box_transform.get_deltas(all_anchors, gt_boxes[i])
            for a in range(lo, hi):
                label = int(labels[i][a])
                if label < 0:
                    continue
                for k in range(K):
                    p, y = float(torch.sigmoid(x[a, k])), float(label == k)
                    ce.append(-math.log(p) if y else -math.log(1 - p))
                    gc.append(abs(p - y))
                if label != K:
                    for c in range(4):
                        diff = float(d[a, c] - t[a, c])
                        asl.append(asl1(diff))
                        gr.append(abs(diff) / math.sqrt(diff * diff + 0.02 ** 2))
        cls_levels.append((ce, gc))
        reg_levels.append((asl, gr))
    assert float(got["loss_cls"]) == pytest.approx(
        reference_ghm(cls_levels, 30, 0.75, 1 + 1e-6), rel=1e-5)
    assert float(got["loss_box_reg"]) == pytest.approx(
        10.0 * reference_ghm(reg_levels, 10, 0.7, 1e3), rel=1e-5)
