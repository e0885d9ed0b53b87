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
from imbalance.losses import GHMCLoss
from imbalance.modeling.retinanet import ImbalanceRetinaNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def logit(p):
    return math.log(p / (1 - p))


# p = sigmoid(logit), target t: g = |p - t|, CE = -log(p) if t else -log(1 - p)
P1 = [0.91, 0.96, 0.09, 0.52, 0.21]
T1 = [1, 1, 0, 0, 1]
# g = .09 .04 .09 .52 .79 -> bins (M = 30) 2, 1, 2, 15, 23
CE1 = [-math.log(0.91), -math.log(0.96), -math.log(0.91), -math.log(0.48), -math.log(0.21)]


def test_ghmc_single_batch_by_hand():
    loss = GHMCLoss(bins=30, momentum=0.0)
    x = torch.tensor([logit(p) for p in P1], dtype=torch.float64, requires_grad=True)
    got = loss(x, torch.tensor(T1, dtype=torch.float64))
    # GD = R_bin * M; L = sum CE_i / GD_i; bin 2 holds two elements
    expected = (CE1[0] + CE1[2]) / (2 * 30) + CE1[1] / 30 + CE1[3] / 30 + CE1[4] / 30
    assert float(got) == pytest.approx(expected, rel=1e-9)
    got.backward()
    # d CE / d x = p - t, scaled by 1 / GD (the density is a constant)
    gd = [60, 30, 60, 30, 30]
    assert x.grad.tolist() == pytest.approx([(p - t) / d for p, t, d in zip(P1, T1, gd)], rel=1e-9)


def test_ghmc_uniform_gradients_give_mean_cross_entropy():
    # one element per bin: every beta_i = N / GD = 1 when N = M
    loss = GHMCLoss(bins=4, momentum=0.0)
    p = torch.tensor([0.9, 0.7, 0.4, 0.1], dtype=torch.float64)  # g = .1 .3 .6 .9 for target 1
    x = torch.log(p / (1 - p))
    got = loss(x, torch.ones(4, dtype=torch.float64))
    assert float(got) == pytest.approx(float(-torch.log(p).mean()), rel=1e-9)


def test_ghmc_momentum():
    loss = GHMCLoss(bins=30, momentum=0.75)
    loss(torch.tensor([logit(p) for p in P1]), torch.tensor(T1, dtype=torch.float32))
    # second batch: g = .09 .52 .52 -> bins 2, 15, 15
    p2, t2 = [0.91, 0.48, 0.52], [1, 1, 0]
    got = loss(torch.tensor([logit(p) for p in p2]), torch.tensor(t2, dtype=torch.float32))
    s_first = {1: 1, 2: 2, 15: 1, 23: 1}  # the first batch starts the average at its counts
    r_second = {2: 1, 15: 2}
    s = {b: 0.75 * s_first.get(b, 0) + 0.25 * r_second.get(b, 0) for b in (2, 15)}
    ce = [-math.log(0.91), -math.log(0.48), -math.log(0.48)]
    expected = ce[0] / (s[2] * 30) + (ce[1] + ce[2]) / (s[15] * 30)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_ghmc_empty():
    assert float(GHMCLoss()(torch.zeros(0, 3), torch.zeros(0, 3))) == 0.0


def retinanet_cfg(**opts):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.merge_from_file(
        os.path.join(ROOT, "configs", "samplers", "retinanet_ghmc_smallR_FPN_shapes.yaml"))
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


def test_imbalance_retinanet_ghmc_step():
    torch.manual_seed(0)
    model = build_model(retinanet_cfg())
    assert model.cls_loss == "ghmc" and model.ghmc.bins == 30 and model.ghmc.momentum == 0.75
    model.train()
    with EventStorage() as storage:
        losses = model(inputs())
        sum(losses.values()).backward()
        assert "imbalance/anchors/fg_bg_ratio" in storage.latest()
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    # GHM-C's moving average is not part of the checkpoint: it loads into Detectron2's RetinaNet
    assert not any("ghmc" in k for k in model.state_dict())
