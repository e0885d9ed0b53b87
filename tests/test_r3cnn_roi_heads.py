"""Tests of r3cnn.roi_heads.R3CNNROIHeads against Detectron2's StandardROIHeads on the same weights
and against hand-built proposals of known IoU and known regressions. Tiny seeded CPU inputs."""
import copy
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import StandardROIHeads, build_roi_heads
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from imbalance import add_imbalance_config
from d2infra.modeling.box_predictor import ROI_BOX_PREDICTOR_REGISTRY

import r3cnn
from r3cnn import R3CNNROIHeads, add_r3cnn_config

IMAGE_SIZE = (64, 64)
CHANNELS = 8
INPUT_SHAPE = {"p2": ShapeSpec(channels=CHANNELS, stride=4)}


def make_cfg(**r3):
    cfg = get_cfg()
    add_imbalance_config(cfg)
    add_r3cnn_config(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "R3CNNROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 6
    cfg.MODEL.R3CNN.MASKIOU_NUM_CONV = 2
    cfg.MODEL.R3CNN.MASKIOU_CONV_DIM = 8
    for k, v in r3.items():
        cfg.MODEL.R3CNN[k] = v
    return cfg


def build(cfg):
    torch.manual_seed(0)
    return build_roi_heads(cfg, INPUT_SHAPE)


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def make_targets(with_empty=False):
    g = torch.Generator().manual_seed(1)
    targets = []
    for i in range(2):
        inst = Instances(IMAGE_SIZE)
        if with_empty and i == 1:
            boxes = torch.zeros((0, 4))
        else:
            boxes = torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 20.0, 60.0, 50.0]])
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, 3, (len(boxes),), generator=g)
        masks = torch.zeros((len(boxes),) + IMAGE_SIZE, dtype=torch.bool)
        for j, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[j, y0 + 2:y1 - 2, x0 + 3:x1 - 1] = True
        inst.gt_masks = BitMasks(masks)
        targets.append(inst)
    return targets


def make_proposals(n=20, near_gt=0):
    """``n`` random boxes per image, then ``near_gt`` boxes around each of make_targets' boxes
    (jittered by up to 3 px: positives at IoU 0.5)."""
    g = torch.Generator().manual_seed(2)
    proposals = []
    for _ in range(2):
        xy = torch.rand(n, 2, generator=g) * 40
        wh = torch.rand(n, 2, generator=g) * 20 + 6
        boxes = torch.cat([xy, (xy + wh).clamp(max=63)], dim=1)
        if near_gt:
            gt = torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 20.0, 60.0, 50.0]])
            jitter = (torch.rand(2, near_gt, 4, generator=g) - 0.5) * 6
            boxes = torch.cat([boxes, (gt[:, None] + jitter).reshape(-1, 4).clamp(0, 63)])
            n = len(boxes)
        inst = Instances(IMAGE_SIZE)
        inst.proposal_boxes = Boxes(boxes)
        inst.objectness_logits = torch.rand(n, generator=g)
        proposals.append(inst)
    return proposals


def make_features():
    g = torch.Generator().manual_seed(3)
    return {"p2": torch.rand(2, CHANNELS, 16, 16, generator=g)}


def randomize_regression(heads, scale=0.05):
    """Give the predictor's regressor non-trivial weights (a "trained" model moves boxes)."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.copy_(
            torch.randn(heads.box_predictor.bbox_pred.weight.shape, generator=g) * scale)
        heads.box_predictor.cls_score.weight.copy_(
            torch.randn(heads.box_predictor.cls_score.weight.shape, generator=g) * scale * 4)


def standard_twin(cfg, heads):
    """StandardROIHeads with the same config and the same weights as ``heads``."""
    std = StandardROIHeads(cfg, INPUT_SHAPE)
    std.load_state_dict(heads.state_dict(), strict=False)
    for name, p in std.state_dict().items():
        assert torch.equal(p, heads.state_dict()[name]), name
    return std


# ---------------------------------------------------------------- parameters
@pytest.mark.parametrize("loops", [1, 3, 4])
def test_params_equal_one_mask_rcnn_head_without_flow(loops):
    cfg = make_cfg(NUM_LOOPS_TRAIN=loops, IOU_THRESHOLDS=[0.5] * loops,
                   LOOP_LOSS_WEIGHTS=[1.0] * loops, MASK_INFO_FLOW=False)
    heads = build(cfg)
    assert isinstance(heads, R3CNNROIHeads)
    std = StandardROIHeads(cfg, INPUT_SHAPE)
    # weights are shared by the loops, not copied per loop
    assert num_params(heads) == num_params(std)
    assert num_params(heads) == (num_params(std.box_head) + num_params(std.box_predictor)
                                 + num_params(std.mask_head))


def test_params_with_info_flow_add_one_1x1_conv():
    cfg = make_cfg(MASK_INFO_FLOW=True)  # 3 loops, info flow on
    heads = build(cfg)
    std = StandardROIHeads(cfg, INPUT_SHAPE)
    conv_dim = cfg.MODEL.ROI_MASK_HEAD.CONV_DIM
    flow = conv_dim * CHANNELS + CHANNELS  # 1x1 conv conv_dim -> FPN channels, with bias
    assert num_params(heads) == num_params(std) + flow


# ---------------------------------------------------------------- training
def test_one_loop_box_losses_equal_standard_roi_heads():
    cfg = make_cfg(NUM_LOOPS_TRAIN=1, IOU_THRESHOLDS=[0.5], LOOP_LOSS_WEIGHTS=[1.0])
    heads = build(cfg)
    randomize_regression(heads)
    std = standard_twin(cfg, heads)
    features, proposals, targets = make_features(), make_proposals(), make_targets()
    with EventStorage():
        torch.manual_seed(7)
        _, ours = heads(None, features, copy.deepcopy(proposals), targets)
        torch.manual_seed(7)
        _, ref = std(None, features, copy.deepcopy(proposals), targets)
    assert ref["loss_cls"] > 0 and ref["loss_box_reg"] > 0
    assert torch.allclose(ours["loss_cls_loop0"], ref["loss_cls"], rtol=0, atol=1e-7)
    assert torch.allclose(ours["loss_box_reg_loop0"], ref["loss_box_reg"], rtol=0, atol=1e-7)
    assert "loss_mask_loop0" in ours


def zero_regression(heads):
    """No box moves: every loop sees the boxes of the previous one (the ground-truth copies aside)."""
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.zero_()


def test_one_loop_without_flow_all_losses_equal_standard_roi_heads():
    """1 loop, no flow: box, class and mask losses are StandardROIHeads' (class-agnostic) on the
    same weights. The batch holds every proposal, so both sample the same RoIs; with zero
    regression the mask branch's re-sampled positives are Detectron2's sampled positives."""
    cfg = make_cfg(NUM_LOOPS_TRAIN=1, IOU_THRESHOLDS=[0.5], LOOP_LOSS_WEIGHTS=[1.0])
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 256  # > 20 proposals + 2 gt: all sampled
    heads = build(cfg)
    randomize_regression(heads)
    zero_regression(heads)
    std = standard_twin(cfg, heads)
    features, proposals, targets = make_features(), make_proposals(near_gt=3), make_targets()
    with EventStorage() as storage:
        _, ours = heads(None, features, copy.deepcopy(proposals), targets)
        num_fg = storage.latest()["imbalance/loop0/num_fg"][0]
        _, ref = std(None, features, copy.deepcopy(proposals), targets)
    assert 4 < num_fg <= 2 * 64  # positives besides the gt boxes, all under the mask cap
    assert set(ours) == {"loss_cls_loop0", "loss_box_reg_loop0", "loss_mask_loop0"}
    for k in ("loss_cls", "loss_box_reg", "loss_mask"):
        assert ref[k] > 0
        assert torch.allclose(ours[f"{k}_loop0"], ref[k], rtol=0, atol=1e-6), k


def test_every_loop_takes_its_own_weight():
    """Zero regression and one threshold: every loop sees the same RoIs, so loop t's losses are
    LOOP_LOSS_WEIGHTS[t] x StandardROIHeads' (box, class and mask)."""
    weights = [1.0, 0.75, 0.3]
    cfg = make_cfg(IOU_THRESHOLDS=[0.5, 0.5, 0.5], LOOP_LOSS_WEIGHTS=weights)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 256
    heads = build(cfg)
    randomize_regression(heads)
    zero_regression(heads)
    std = standard_twin(cfg, heads)
    features, proposals, targets = make_features(), make_proposals(near_gt=3), make_targets()
    with EventStorage():
        _, ours = heads(None, features, copy.deepcopy(proposals), targets)
        _, ref = std(None, features, copy.deepcopy(proposals), targets)
    assert ref["loss_box_reg"] > 0
    for t, w in enumerate(weights):
        for k in ("loss_cls", "loss_box_reg", "loss_mask"):
            assert torch.allclose(ours[f"{k}_loop{t}"], w * ref[k], rtol=0, atol=1e-6), (t, k)


def test_three_loops_weight_each_loop_and_keep_loop0_as_standard():
    cfg = make_cfg(LOOP_LOSS_WEIGHTS=[2.0, 0.75, 0.5])
    heads = build(cfg)
    randomize_regression(heads)
    std = standard_twin(cfg, heads)
    features, proposals, targets = make_features(), make_proposals(), make_targets()
    with EventStorage() as storage:
        torch.manual_seed(7)
        _, ours = heads(None, features, copy.deepcopy(proposals), targets)
        torch.manual_seed(7)
        _, ref = std(None, features, copy.deepcopy(proposals), targets)
        latest = storage.latest()
    expected = {f"{k}_loop{t}" for t in range(3) for k in ("loss_cls", "loss_box_reg", "loss_mask")}
    assert set(ours) == expected
    assert torch.allclose(ours["loss_cls_loop0"], 2.0 * ref["loss_cls"], atol=1e-6)
    assert torch.allclose(ours["loss_box_reg_loop0"], 2.0 * ref["loss_box_reg"], atol=1e-6)
    # diagnostics per loop: 10-bin histogram over [0.5, 1] and fg:bg
    for t in range(3):
        assert f"imbalance/loop{t}/num_fg" in latest
        assert f"imbalance/loop{t}/fg_bg_ratio" in latest
        assert f"imbalance/loop{t}/iou_0.95" in latest
    assert heads.mask_flow_conv is None  # the authors' mask branch: no flow by default


def test_info_flow_conv_learns_from_loops_after_the_first():
    heads = build(make_cfg(MASK_INFO_FLOW=True))
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(), make_targets())
    losses["loss_mask_loop1"].backward()
    assert heads.mask_flow_conv.weight.grad.abs().sum() > 0


def _loop_labels(cfg, ious, thresholds):
    """Train once on hand-built proposals of the given IoUs with one gt box, with zero box
    regression (so every loop sees the same boxes); return per loop the sampled (iou, label)."""
    cfg = copy.deepcopy(cfg)
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.R3CNN.IOU_THRESHOLDS = thresholds
    heads = build(cfg)
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.zero_()
    gt_box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])  # 40 x 40
    # [10, 10, 50, 10 + 40 r] lies inside the gt box: IoU = r exactly
    boxes = torch.tensor([[10.0, 10.0, 50.0, 10.0 + 40.0 * r] for r in ious])
    target = Instances(IMAGE_SIZE, gt_boxes=Boxes(gt_box), gt_classes=torch.tensor([2]))
    prop = Instances(IMAGE_SIZE, proposal_boxes=Boxes(boxes),
                     objectness_logits=torch.zeros(len(ious)))

    recorded = []
    original = heads.label_and_sample_proposals

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        recorded.append((kwargs["stage"], out[0]))
        return out

    heads.label_and_sample_proposals = spy
    with EventStorage() as storage:
        heads(None, {"p2": make_features()["p2"][:1]}, [prop], [target])
        latest = storage.latest()
    return recorded, latest, gt_box


@pytest.mark.parametrize("thresholds", [[0.5, 0.6, 0.7], [0.7, 0.6, 0.5]])
def test_per_loop_labels_use_the_loops_threshold(thresholds):
    ious = [0.3, 0.55, 0.65, 0.75, 0.95]
    recorded, latest, gt_box = _loop_labels(make_cfg(), ious, thresholds)
    assert [stage for stage, _ in recorded] == ["loop0", "loop1", "loop2"]
    for t, (_, sampled) in enumerate(recorded):
        # every loop: the 5 hand-built boxes + the gt box, added once (not accumulated)
        assert len(sampled) == len(ious) + 1
        true_iou = torch.tensor([r for r in ious] + [1.0])
        order = torch.argsort(sampled.proposal_boxes.tensor[:, 3])  # boxes sorted by height
        labels = sampled.gt_classes[order]
        expected = torch.where(true_iou >= thresholds[t], torch.tensor(2), torch.tensor(3))
        assert torch.equal(labels, expected), (t, labels, expected)
        n_fg = int((true_iou >= thresholds[t]).sum())
        assert latest[f"imbalance/loop{t}/num_fg"][0] == n_fg
        assert latest[f"imbalance/loop{t}/num_bg"][0] == len(ious) + 1 - n_fg


def _one_image(boxes, gt_box=(10.0, 10.0, 50.0, 50.0), gt_class=2, mask_box=None):
    """One 64x64 image: the given proposals and one ground-truth box whose mask fills
    ``mask_box`` (default: the whole box)."""
    gt = torch.tensor([gt_box])
    mask = torch.zeros((1,) + IMAGE_SIZE, dtype=torch.bool)
    x0, y0, x1, y1 = [int(v) for v in (mask_box or gt_box)]
    mask[0, y0:y1, x0:x1] = True
    target = Instances(IMAGE_SIZE, gt_boxes=Boxes(gt), gt_classes=torch.tensor([gt_class]),
                       gt_masks=BitMasks(mask))
    prop = Instances(IMAGE_SIZE, proposal_boxes=Boxes(torch.tensor(boxes)),
                     objectness_logits=torch.zeros(len(boxes)))
    return prop, target


def _spy_sampling(heads):
    """Record the proposals each loop hands to label_and_sample_proposals (before sampling)."""
    seen = []
    original = heads.label_and_sample_proposals

    def spy(proposals, targets, **kwargs):
        seen.append((kwargs["stage"], [copy.deepcopy(p) for p in proposals]))
        return original(proposals, targets, **kwargs)

    heads.label_and_sample_proposals = spy
    return seen


def test_later_loops_resample_the_previous_loops_regressed_boxes():
    """A hand-built two-loop example with a known regression: the predictor moves every box right
    by 0.1 of its width (delta dx = 1 with weights (10, 10, 5, 5)); loop 1's proposals are the
    loop-0 boxes moved once, loop 2's moved twice, plus the ground truth (not its regression)."""
    cfg = make_cfg(MASK_INFO_FLOW=False)
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64  # all 4 + 1 boxes sampled in every loop
    heads = build(cfg)
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    boxes = [[2.0, 4.0, 22.0, 24.0], [10.0, 12.0, 30.0, 40.0], [6.0, 30.0, 16.0, 50.0],
             [20.0, 20.0, 40.0, 30.0]]
    prop, target = _one_image(boxes)
    seen = _spy_sampling(heads)
    with EventStorage():
        heads(None, {"p2": make_features()["p2"][:1]}, [prop], [target])
    assert [stage for stage, _ in seen] == ["loop0", "loop1", "loop2"]
    for t, (_, props) in enumerate(seen):
        got = props[0]
        # hand-decoded: x0 and x1 move by 0.1 w per loop, w unchanged
        expected = torch.tensor([[x0 + 0.1 * t * (x1 - x0), y0, x1 + 0.1 * t * (x1 - x0), y1]
                                 for x0, y0, x1, y1 in boxes])
        ours = got.proposal_boxes.tensor[~got.from_gt]
        order = torch.argsort(ours[:, 1] * 100 + ours[:, 3])  # the boxes differ in y
        ref_order = torch.argsort(expected[:, 1] * 100 + expected[:, 3])
        assert torch.allclose(ours[order], expected[ref_order], atol=1e-4), t
        assert torch.equal(got.proposal_boxes.tensor[got.from_gt], target.gt_boxes.tensor)


def _mask_loss_reference(heads, features, boxes, target):
    """Detectron2's mask loss of the mask head on the given RoIs, all labelled as ``target``."""
    from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss

    boxes = Boxes(torch.tensor(boxes))
    inst = Instances(IMAGE_SIZE, proposal_boxes=boxes,
                     gt_classes=target.gt_classes.expand(len(boxes)).clone(),
                     gt_masks=target.gt_masks[[0] * len(boxes)])
    x = heads.mask_pooler([features["p2"]], [boxes])
    return mask_rcnn_loss(heads.mask_head.layers(x), [inst], 0)


def test_mask_branch_labels_at_each_loops_threshold():
    """Proposals of known IoU 0.55, 0.65, 0.75, 0.85, 0.95 inside the one gt box, zero regression:
    loop t's mask loss is Detectron2's mask loss on exactly the boxes of IoU >= u^t (plus the
    ground-truth box), times the loop's weight. The object fills the top half of its box, so each
    RoI has another foreground fraction, and the mask logits are far from 0 (bias 2), so the loss
    depends on which RoIs enter it."""
    thresholds, weights = [0.5, 0.7, 0.9], [1.0, 0.75, 0.5]
    cfg = make_cfg(IOU_THRESHOLDS=thresholds, LOOP_LOSS_WEIGHTS=weights)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64  # cap 16 positives: all kept
    heads = build(cfg)
    zero_regression(heads)
    with torch.no_grad():
        heads.mask_head.predictor.bias.fill_(2.0)
    ious = [0.55, 0.65, 0.75, 0.85, 0.95]
    boxes = [[10.0, 10.0, 50.0, 10.0 + 40.0 * r] for r in ious]  # inside the gt box: IoU = r
    prop, target = _one_image(boxes, mask_box=(10.0, 10.0, 50.0, 30.0))
    features = {"p2": make_features()["p2"][:1]}
    with EventStorage():
        _, losses = heads(None, features, [prop], [target])
    with torch.no_grad(), EventStorage():
        for t, (u, w) in enumerate(zip(thresholds, weights)):
            positives = [b for b, r in zip(boxes, ious) if r >= u] + [[10.0, 10.0, 50.0, 50.0]]
            expected = w * _mask_loss_reference(heads, features, positives, target)
            assert torch.allclose(losses[f"loss_mask_loop{t}"], expected, atol=1e-6), t
        everything = _mask_loss_reference(heads, features, boxes, target)
        assert not torch.allclose(everything, expected / weights[-1], atol=1e-3)  # it matters


def _spy_mask_rois(heads):
    """Record each loop's mask RoIs (the output of _mask_training_rois)."""
    seen = []
    original = heads._mask_training_rois

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append([copy.deepcopy(i) for i in out])
        return out

    heads._mask_training_rois = spy
    return seen


def _spy_mask_pooler(heads):
    """Record the boxes of every mask-pooler call (one list of per-image tensors per call)."""
    pooled = []
    heads.mask_pooler.register_forward_hook(
        lambda m, inputs, out: pooled.append([b.tensor.clone() for b in inputs[1]]))
    return pooled


def test_mask_rois_per_loop_never_exceed_the_cap():
    """40 positives per image, BATCH_SIZE_PER_IMAGE 16 at POSITIVE_FRACTION 0.25: every loop's
    mask head sees 4 RoIs per image, each a positive of the loop's threshold; the mask pooler is
    called once per step, on the distinct boxes of the 3 loops' RoIs of each image."""
    cfg = make_cfg()
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    heads = build(cfg)
    zero_regression(heads)
    g = torch.Generator().manual_seed(8)
    props, targets = [], []
    for _ in range(2):
        r = 0.75 + 0.25 * torch.rand(40, generator=g)  # IoU r >= 0.75 with the gt box
        prop, target = _one_image([[10.0, 10.0, 50.0, 10.0 + 40.0 * float(v)] for v in r])
        props.append(prop)
        targets.append(target)
    rois, pooled = _spy_mask_rois(heads), _spy_mask_pooler(heads)
    with EventStorage():
        heads(None, make_features(), props, targets)
    assert len(rois) == 3 and len(pooled) == 1  # 3 loops, one batched pooler call
    for t, per_image in enumerate(rois):
        for i, inst in enumerate(per_image):
            assert len(inst) == 4  # = int(16 * 0.25)
            b = inst.proposal_boxes.tensor
            assert (((b[:, 3] - b[:, 1]) / 40.0) >= 0.7 - 1e-6).all()
    for i in range(2):
        union = {tuple(r) for t in range(3) for r in _sorted_rows(rois[t][i].proposal_boxes.tensor)}
        assert _sorted_rows(pooled[0][i]) == sorted(list(r) for r in union)


def _move_right(heads):
    """The predictor's regression is (1, 0, 0, 0) for every RoI: with weights (10, 10, 5, 5) each
    box moves right by 0.1 of its width, its size unchanged."""
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))


def _sorted_rows(boxes):
    return sorted([round(v, 4) for v in row] for row in boxes.tolist())


def test_mask_pooler_receives_each_loops_regressed_boxes():
    """Four 20-px-wide boxes inside the 40 x 40 gt box (IoU = area / 1600: 0.25, 0.35, 0.375,
    0.5), each loop moving them right by 2 px (still inside: IoU unchanged). Loop t's mask RoIs,
    by hand: the boxes moved t+1 times (loop t's regressed boxes) whose IoU >= u^t, and the gt;
    the mask pooler receives each distinct box once (the gt box once for the 3 loops)."""
    thresholds = [0.3, 0.4, 0.45]
    cfg = make_cfg(IOU_THRESHOLDS=thresholds)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64  # all 4 + 1 boxes sampled, cap 16
    heads = build(cfg)
    _move_right(heads)
    boxes = [[12.0, 12.0, 32.0, 32.0], [12.0, 20.0, 32.0, 48.0], [14.0, 14.0, 34.0, 44.0],
             [10.0, 10.0, 30.0, 50.0]]
    ious = [0.25, 0.35, 0.375, 0.5]
    prop, target = _one_image(boxes)
    pooled, rois = _spy_mask_pooler(heads), _spy_mask_rois(heads)
    with EventStorage():
        heads(None, {"p2": make_features()["p2"][:1]}, [prop], [target])
    union = []
    for t, u in enumerate(thresholds):
        expected = [[x0 + 2.0 * (t + 1), y0, x1 + 2.0 * (t + 1), y1]
                    for (x0, y0, x1, y1), r in zip(boxes, ious) if r >= u]
        union += expected
        expected.append([10.0, 10.0, 50.0, 50.0])
        got = rois[t][0].proposal_boxes.tensor
        assert _sorted_rows(got) == _sorted_rows(torch.tensor(expected)), t
    union.append([10.0, 10.0, 50.0, 50.0])
    assert len(pooled) == 1 and len(union) == 3 + 1 + 1 + 1
    assert _sorted_rows(pooled[0][0]) == _sorted_rows(torch.tensor(union))


def _spy_sampling_io(heads):
    """Record, per loop, the proposals given to label_and_sample_proposals and the sampled ones."""
    seen = []
    original = heads.label_and_sample_proposals

    def spy(proposals, targets, **kwargs):
        before = [copy.deepcopy(p) for p in proposals]
        out = original(proposals, targets, **kwargs)
        seen.append((before, [copy.deepcopy(p) for p in out]))
        return out

    heads.label_and_sample_proposals = spy
    return seen


def test_batch_smaller_than_the_proposals():
    """BATCH_SIZE_PER_IMAGE 8 (cap 2 positives) with 26 proposals + 2 gt boxes per image and every
    box moving right by 0.1 of its width: loop t+1 gets exactly loop t's sampled boxes (the gt
    copies aside) moved once, clipped to the image, plus the gt; loop t's mask RoIs are
    min(2, #positives) positives at u^t of those moved boxes plus the gt."""
    cfg = make_cfg()
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 8
    heads = build(cfg)
    _move_right(heads)
    proposals, targets = make_proposals(near_gt=3), make_targets()
    sampling, mask_rois = _spy_sampling_io(heads), _spy_mask_rois(heads)
    with EventStorage():
        heads(None, make_features(), copy.deepcopy(proposals), targets)
    assert len(sampling) == 3 and len(mask_rois) == 3
    for t, u in enumerate(cfg.MODEL.R3CNN.IOU_THRESHOLDS):
        for i, (sampled, tgt) in enumerate(zip(sampling[t][1], targets)):
            assert len(sampled) <= 8 < len(sampling[t][0][i])
            b = sampled.proposal_boxes.tensor[~sampled.from_gt]
            moved = b + torch.stack([0.1 * (b[:, 2] - b[:, 0]), 0 * b[:, 1],
                                     0.1 * (b[:, 2] - b[:, 0]), 0 * b[:, 3]], dim=1)
            moved = moved.clamp(min=0, max=IMAGE_SIZE[1])
            moved = moved[(moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])]
            candidates = torch.cat([moved, tgt.gt_boxes.tensor])
            if t + 1 < 3:  # the next loop's proposals
                nxt = sampling[t + 1][0][i].proposal_boxes.tensor
                assert _sorted_rows(nxt) == _sorted_rows(candidates), (t, i)
            from detectron2.structures import pairwise_iou
            best = pairwise_iou(Boxes(candidates), tgt.gt_boxes).max(dim=1).values
            positives = candidates[best >= u]
            got = mask_rois[t][i].proposal_boxes.tensor
            assert len(got) == min(2, len(positives)) > 0, (t, i)
            pos_rows = _sorted_rows(positives)
            assert all(r in pos_rows for r in _sorted_rows(got)), (t, i)


def test_batched_mask_branch_equals_one_pass_per_loop():
    """The one pooler call and mask-head pass over all loops' RoIs gives each loop the loss (and
    the mask head the gradient) of Detectron2's pooler, mask head and mask loss run on that loop's
    RoIs alone, with moving boxes and sampling."""
    weights = [1.0, 0.75, 0.5]
    heads = build(make_cfg(LOOP_LOSS_WEIGHTS=weights))
    randomize_regression(heads, scale=0.2)
    features = make_features()
    rois = _spy_mask_rois(heads)
    with EventStorage():
        _, losses = heads(None, features, make_proposals(near_gt=3), make_targets())
        ours = sum(losses[f"loss_mask_loop{t}"] for t in range(3))
        ours.backward()
        grads = [p.grad.clone() for p in heads.mask_head.parameters()]
        heads.zero_grad()
        from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
        refs = []
        for t, loop in enumerate(rois):
            assert sum(len(i) for i in loop) > 0
            x = heads.mask_pooler([features["p2"]], [i.proposal_boxes for i in loop])
            refs.append(weights[t] * mask_rcnn_loss(heads.mask_head.layers(x), loop, 0))
            assert torch.allclose(losses[f"loss_mask_loop{t}"], refs[-1], rtol=0, atol=1e-6), t
        sum(refs).backward()
    for g, p in zip(grads, heads.mask_head.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)  # float sums: batch order


def test_batched_mask_branch_with_three_images():
    """The rows of each image's distinct boxes follow those of the images before it: with 3 images,
    every loop's mask loss is still Detectron2's on that loop's RoIs alone."""
    heads = build(make_cfg())
    randomize_regression(heads, scale=0.2)
    prop3, tgt3 = _one_image([[12.0, 12.0, 40.0, 44.0], [10.0, 14.0, 48.0, 50.0]], gt_class=1)
    proposals = make_proposals(near_gt=3) + [prop3]
    targets = make_targets() + [tgt3]
    g = torch.Generator().manual_seed(9)
    features = {"p2": torch.rand(3, CHANNELS, 16, 16, generator=g)}
    rois = _spy_mask_rois(heads)
    with EventStorage():
        _, losses = heads(None, features, proposals, targets)
        from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
        for t, loop in enumerate(rois):
            assert all(len(i) > 0 for i in loop)
            x = heads.mask_pooler([features["p2"]], [i.proposal_boxes for i in loop])
            ref = heads.loop_loss_weights[t] * mask_rcnn_loss(heads.mask_head.layers(x), loop, 0)
            assert torch.allclose(losses[f"loss_mask_loop{t}"], ref, rtol=0, atol=1e-6), t


def test_mask_visualisation_period_reaches_the_mask_loss():
    """MaskRCNNConvUpsampleHead's vis_period (VIS_PERIOD) reaches Detectron2's mask loss, which
    then stores an image of the predicted and target mask of each RoI every vis_period iterations
    (none with 0)."""
    heads = build(make_cfg())
    rois = _spy_mask_rois(heads)
    for period in (0, 1):
        heads.mask_head.vis_period = period
        rois.clear()
        with EventStorage() as storage:
            heads(None, make_features(), make_proposals(near_gt=3), make_targets())
            stored = len(storage._vis_data)
        assert stored == period * sum(len(i) for loop in rois for i in loop) and len(rois) == 3


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, inputs, out: calls.append(len(inputs[0])))
    return calls


@pytest.mark.parametrize("flow, train_passes, test_passes", [
    ({}, 1, 1),  # the authors' training: one plain pass per loop, all loops batched
    ({"MASK_INFO_FLOW": True}, 1 + 2 + 3, 3),  # ours: loop t chains t+1 passes
    ({"MASK_UNTRAINED_FLOW": True}, 1, 3),  # theirs as run: one pass, 3 chained at test
])
def test_mask_passes_per_step(flow, train_passes, test_passes):
    heads = build(make_cfg(**flow))
    convs, logits = _count_calls(heads.mask_head.conv_norm_relus[0]), _count_calls(
        heads.mask_head.deconv)
    rois = _spy_mask_rois(heads)
    with EventStorage():
        heads(None, make_features(), make_proposals(near_gt=3), make_targets())
    n = [sum(len(i) for i in loop) for loop in rois]
    distinct = sum(len(torch.unique(torch.cat([loop[i].proposal_boxes.tensor for loop in rois]),
                                    dim=0)) for i in range(2))
    assert len(convs) == train_passes
    if train_passes == 1:
        assert convs == logits == [distinct] and distinct < sum(n)  # the gt boxes pass once
    else:  # loop t: t+1 passes on its RoIs, logits of the last one only
        assert convs == [n[0], n[1], n[1], n[2], n[2], n[2]] and logits == n
    convs.clear()
    out = _detections(heads, make_proposals())
    assert len(convs) == test_passes and convs[0] == sum(len(i) for i in out) > 0


def test_untrained_flow_is_the_authors_mask_head():
    """MASK_UNTRAINED_FLOW, as their R3MaskHead with stage index 0 in training: the training
    losses are the plain head's (ReLU(conv(0)) = ReLU(0) = 0), the conv gets zero gradients (so
    weight decay still reaches it, and DDP sees it used); inference averages the sigmoid
    probabilities of NUM_LOOPS_TEST passes, pass k adding ReLU(conv(features of pass k-1)) and
    pass 0 ReLU(conv(zeros)), for the predicted class."""
    cfg = make_cfg(MASK_UNTRAINED_FLOW=True)
    heads = build(cfg)
    plain = build(make_cfg())
    plain.load_state_dict(heads.state_dict(), strict=False)
    assert num_params(heads) == num_params(plain) + 6 * CHANNELS + CHANNELS
    features, proposals, targets = make_features(), make_proposals(near_gt=3), make_targets()
    with EventStorage():
        torch.manual_seed(3)
        _, ours = heads(None, features, copy.deepcopy(proposals), targets)
        torch.manual_seed(3)
        _, ref = plain(None, features, copy.deepcopy(proposals), targets)
    assert set(ours) == set(ref)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], rtol=0, atol=1e-7), k
    sum(ours.values()).backward()
    conv = heads.mask_flow_conv
    assert conv.weight.grad is not None and not conv.weight.grad.any()
    assert not conv.bias.grad.any()

    randomize_regression(heads)
    with torch.no_grad():  # a trained-looking model: the flow and pass 0's ReLU(bias) matter
        conv.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
        conv.bias.fill_(0.3)
    out = _detections(heads, make_proposals())
    with torch.no_grad():
        x = heads.mask_pooler([features["p2"]], [i.pred_boxes for i in out])
        zeros = torch.zeros(1, conv.in_channels, 1, 1)
        probs, feats = [], zeros
        for _ in range(3):
            h = x + torch.relu(torch.nn.functional.conv2d(feats, conv.weight, conv.bias))
            for c in heads.mask_head.conv_norm_relus:
                h = c(h)
            feats = h
            probs.append(heads.mask_head.predictor(torch.relu(heads.mask_head.deconv(h))).sigmoid())
        classes = torch.cat([i.pred_classes for i in out])
        expected = torch.stack(probs).mean(0)[torch.arange(len(classes)), classes]
    got = torch.cat([i.pred_masks[:, 0] for i in out])
    assert torch.allclose(got, expected, atol=1e-6)


def test_both_flows_are_an_error():
    with pytest.raises(ValueError, match=r"MODEL\.R3CNN\.MASK_INFO_FLOW \(our trained flow\) and "
                       r"MASK_UNTRAINED_FLOW \(the authors' untrained one\) exclude each other"):
        build(make_cfg(MASK_INFO_FLOW=True, MASK_UNTRAINED_FLOW=True))


class _MaskHeadWithoutDeconv(BaseMaskRCNNHead):
    """A mask head that is not a MaskRCNNConvUpsampleHead: the flows have no deconv to read."""


@pytest.mark.parametrize("flow", ["MASK_INFO_FLOW", "MASK_UNTRAINED_FLOW"])
def test_flows_need_the_conv_upsample_mask_head(flow):
    name = _MaskHeadWithoutDeconv.__name__
    if name not in ROI_MASK_HEAD_REGISTRY:
        ROI_MASK_HEAD_REGISTRY.register(_MaskHeadWithoutDeconv)
    cfg = make_cfg(**{flow: True})
    cfg.MODEL.ROI_MASK_HEAD.NAME = name
    with pytest.raises(ValueError, match=r"MODEL\.R3CNN\.MASK_INFO_FLOW / MASK_UNTRAINED_FLOW need "
                       r"MODEL\.ROI_MASK_HEAD\.NAME MaskRCNNConvUpsampleHead \(or a subclass\)"):
        build(cfg)


@pytest.mark.parametrize("loops, has_flow", [(1, False), (2, True), (3, True)])
def test_the_trained_flow_needs_two_training_loops(loops, has_flow):
    """With one loop the trained flow would never see a previous pass: no flow conv is built."""
    heads = build(make_cfg(MASK_INFO_FLOW=True, NUM_LOOPS_TRAIN=loops,
                           IOU_THRESHOLDS=[0.5, 0.6, 0.7][:loops],
                           LOOP_LOSS_WEIGHTS=[1.0, 0.5, 0.25][:loops]))
    assert (heads.mask_flow_conv is not None) is has_flow
    if has_flow:
        assert heads.mask_flow_trained


def test_mask_loss_weight_scales_every_loops_mask_loss():
    heads = build(make_cfg())
    losses = []
    for weight in (1.0, 2.5):
        heads.mask_head.loss_weight = weight
        with EventStorage():
            torch.manual_seed(11)
            losses.append(heads(None, make_features(), make_proposals(near_gt=3),
                                make_targets())[1])
    for t in range(3):
        k = f"loss_mask_loop{t}"
        assert losses[0][k] > 0
        assert torch.allclose(losses[1][k], 2.5 * losses[0][k], rtol=1e-6), k


def test_append_gt_with_and_without_objectness():
    """The gt boxes come after the proposals, flagged ``from_gt``, with P(object) ~ 1; proposals
    keep their objectness logits, or get 0 when they have none (as after a previous loop)."""
    _, target = _one_image([[0.0, 0.0, 8.0, 8.0]])
    boxes = torch.tensor([[1.0, 2.0, 20.0, 30.0], [5.0, 5.0, 9.0, 9.0]])
    bare = Instances(IMAGE_SIZE, proposal_boxes=Boxes(boxes))
    scored = Instances(IMAGE_SIZE, proposal_boxes=Boxes(boxes),
                       objectness_logits=torch.tensor([0.25, -3.0]))
    for prop, logits in ((bare, [0.0, 0.0]), (scored, [0.25, -3.0])):
        out = R3CNNROIHeads._append_gt([prop], [target])[0]
        assert set(out.get_fields()) == {"proposal_boxes", "objectness_logits", "from_gt"}
        assert torch.equal(out.proposal_boxes.tensor, torch.cat([boxes, target.gt_boxes.tensor]))
        assert out.from_gt.tolist() == [False, False, True]
        assert out.objectness_logits[:2].tolist() == logits
        assert torch.sigmoid(out.objectness_logits[2]) > 1 - 1e-6


def test_append_gt_keeps_the_proposals_device():
    """Every field is made on the proposals' device, the gt boxes moved there (the "meta" device
    stands in for CUDA: mixing it with CPU tensors fails)."""
    _, target = _one_image([[0.0, 0.0, 8.0, 8.0]])  # on the CPU
    for with_logits in (False, True):
        prop = Instances(IMAGE_SIZE, proposal_boxes=Boxes(torch.zeros(2, 4, device="meta")))
        if with_logits:
            prop.objectness_logits = torch.zeros(2, device="meta")
        out = R3CNNROIHeads._append_gt([prop], [target])[0]
        assert len(out) == 3
        for value in (out.proposal_boxes.tensor, out.objectness_logits, out.from_gt):
            assert value.device.type == "meta"


def test_maskiou_with_a_class_agnostic_mask_reads_its_one_output():
    """A class-agnostic mask head (one mask for 3 classes): the MaskIoU head has one output, which
    every detection reads whatever its class, in training and at inference."""
    cfg = make_cfg(MASKIOU_ON=True)
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    heads = build(cfg)
    randomize_regression(heads)
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(near_gt=3), make_targets())
    assert torch.isfinite(losses["loss_maskiou"])
    out = _detections(heads, make_proposals())
    assert {int(c) for i in out for c in i.pred_classes} == {0, 1, 2}
    feats = make_features()
    with torch.no_grad():
        x = heads.mask_pooler([feats["p2"]], [i.pred_boxes for i in out])
        expected = heads.maskiou_head(x, heads.mask_head.layers(x)[:, 0])[:, 0]
    got = torch.cat([i.pred_maskiou for i in out])
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(torch.cat([i.mask_scores for i in out]),
                          torch.cat([i.scores for i in out]) * expected, atol=1e-6)


def test_image_without_ground_truth_trains():
    cfg = make_cfg(MASKIOU_ON=True)
    heads = build(cfg)
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(), make_targets(with_empty=True))
    assert "loss_maskiou" in losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_all_images_without_ground_truth_train():
    cfg = make_cfg(MASKIOU_ON=True)
    heads = build(cfg)
    targets = make_targets(with_empty=True)
    targets = [targets[1], targets[1]]
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(), targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


# ---------------------------------------------------------------- inference
def _detections(heads, proposals):
    heads.eval()
    with torch.no_grad():
        out, _ = heads(None, make_features(), copy.deepcopy(proposals))
    return out


def test_one_test_loop_is_the_single_pass_result():
    cfg = make_cfg(NUM_LOOPS_TEST=1)
    heads = build(cfg)
    randomize_regression(heads)
    std = standard_twin(cfg, heads)
    proposals = make_proposals()
    ours, ref = _detections(heads, proposals), _detections(std, proposals)
    for a, b in zip(ours, ref):
        assert len(a) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.allclose(a.pred_masks, b.pred_masks)


@pytest.mark.parametrize("averaging", ["logits", "probs"])
def test_test_loops_change_detections_and_follow_the_paper(averaging):
    """2 test loops == an independent re-composition of Detectron2's modules: the loops' class
    logits averaged then softmaxed (the authors' code) or their probabilities averaged, boxes of the
    last loop, then Detectron2's NMS; masks from one pass of the mask head on the final boxes."""
    cfg = make_cfg(NUM_LOOPS_TEST=2, SCORE_AVERAGING=averaging)
    heads = build(cfg)
    randomize_regression(heads, scale=0.2)
    std = standard_twin(cfg, heads).eval()
    proposals = make_proposals()
    two = _detections(heads, proposals)
    heads.num_loops_test = 1
    one = _detections(heads, proposals)
    assert any(not torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) for a, b in zip(one, two))

    feats = [make_features()["p2"]]
    with torch.no_grad():
        pred1 = std.box_predictor(std.box_head(std.box_pooler(
            feats, [p.proposal_boxes for p in proposals])))
        boxes1 = std.box_predictor.predict_boxes(pred1, proposals)
        props2 = []
        for b in boxes1:
            b = Boxes(b.clone())
            b.clip(IMAGE_SIZE)
            props2.append(Instances(IMAGE_SIZE, proposal_boxes=b))
        pred2 = std.box_predictor(std.box_head(std.box_pooler(
            feats, [p.proposal_boxes for p in props2])))
        by_logits = torch.softmax((pred1[0] + pred2[0]) / 2, -1).split(20)
        by_probs = ((torch.softmax(pred1[0], -1) + torch.softmax(pred2[0], -1)) / 2).split(20)
        probs, other = (by_logits, by_probs) if averaging == "logits" else (by_probs, by_logits)
        assert (probs[0] - other[0]).abs().max() > 1e-5  # the modes differ beyond the tolerance
        boxes = std.box_predictor.predict_boxes(pred2, props2)
        ref, _ = fast_rcnn_inference(boxes, list(probs), [IMAGE_SIZE] * 2, 0.0, 0.5, 100)
        ref = std.forward_with_given_boxes({"p2": feats[0]}, ref)  # Detectron2's mask pass
    for a, b in zip(two, ref):
        assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-5)
        assert torch.allclose(a.scores, b.scores, atol=1e-6)
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.allclose(a.pred_masks, b.pred_masks, atol=1e-6)


def test_logit_averaging_hand_computed():
    """Two loops, one RoI, 3 classes + background: logits (2, 0, 0, 0) and (0, 0, 0, 2) average
    to (1, 0, 0, 1): class-0 score e / (2e + 2) = 0.3655 ("probs" would give 0.4404)."""
    cfg = make_cfg(NUM_LOOPS_TEST=2, IOU_THRESHOLDS=[0.5, 0.6, 0.7])
    heads = build(cfg)
    zero_regression(heads)
    calls = []

    def fake_box_predictions(features, proposals):
        logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]]) if not calls else torch.tensor(
            [[0.0, 0.0, 0.0, 2.0]])
        calls.append(1)
        return logits, torch.zeros(1, 4)

    heads._box_predictions = fake_box_predictions
    prop = Instances(IMAGE_SIZE, proposal_boxes=Boxes(torch.tensor([[8.0, 8.0, 40.0, 40.0]])))
    heads.eval()
    with torch.no_grad():
        out = heads._forward_box_inference(make_features(), [prop])[0]
    e = math.e
    expected = {0: e / (2 * e + 2), 1: 1 / (2 * e + 2), 2: 1 / (2 * e + 2)}
    got = {int(c): float(s) for c, s in zip(out.pred_classes, out.scores)}
    assert got == pytest.approx(expected, abs=1e-6)
    heads.score_averaging = "probs"
    calls.clear()
    with torch.no_grad():
        out = heads._forward_box_inference(make_features(), [prop])[0]
    got = {int(c): float(s) for c, s in zip(out.pred_classes, out.scores)}
    p2 = 1 / (e * e + 3)  # softmax(2, 0, 0, 0) of a zero logit
    assert got[0] == pytest.approx((e * e * p2 + p2) / 2, abs=1e-6)


def test_score_averaging_must_be_known():
    with pytest.raises(ValueError, match="SCORE_AVERAGING"):
        build(make_cfg(SCORE_AVERAGING="mean"))


def test_num_loops_test_default_is_training_loops_and_overridable():
    assert build(make_cfg()).num_loops_test == 3
    assert build(make_cfg(NUM_LOOPS_TEST=5)).num_loops_test == 5
    assert build(make_cfg(NUM_LOOPS_TEST=-1, NUM_LOOPS_TRAIN=2, IOU_THRESHOLDS=[0.5, 0.6],
                          LOOP_LOSS_WEIGHTS=[1.0, 0.5])).num_loops_test == 2


def _flow_chain_logits(heads, x, passes):
    """An independent chain: pass k gets x + ReLU(conv1x1(features after the convs of pass k-1))."""
    head, logits, feats = heads.mask_head, [], None
    for _ in range(passes):
        h = x
        if feats is not None:
            h = x + torch.relu(torch.nn.functional.conv2d(
                feats, heads.mask_flow_conv.weight, heads.mask_flow_conv.bias))
        for conv in head.conv_norm_relus:
            h = conv(h)
        feats = h
        logits.append(head.predictor(torch.relu(head.deconv(h))))
    return logits


def test_info_flow_inference_averages_the_loops_mask_probabilities():
    """With MASK_INFO_FLOW, the predicted masks are the mean of the sigmoid probabilities of the 3
    chained passes on the final boxes, for the predicted class (theirs: merge_aug_masks of the
    passes' sigmoid), neither the sigmoid of the mean logits nor the last pass alone."""
    cfg = make_cfg(NUM_LOOPS_TEST=3, MASK_INFO_FLOW=True)
    heads = build(cfg)
    randomize_regression(heads)
    with torch.no_grad():  # make the flow matter
        heads.mask_flow_conv.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(5))
        heads.mask_head.predictor.weight.mul_(20.0)
    out = _detections(heads, make_proposals())
    feats = make_features()
    with torch.no_grad():
        x = heads.mask_pooler([feats["p2"]], [i.pred_boxes for i in out])
        classes = torch.cat([i.pred_classes for i in out])
        logits = [p[torch.arange(len(classes)), classes]
                  for p in _flow_chain_logits(heads, x, 3)]
        expected = torch.stack([p.sigmoid() for p in logits]).mean(0)
    got = torch.cat([i.pred_masks[:, 0] for i in out])
    assert torch.allclose(got, expected, atol=1e-6)
    for other in (torch.stack(logits).mean(0).sigmoid(), logits[-1].sigmoid()):
        assert (got - other).abs().max() > 1e-3


def test_no_proposal_and_no_detection_give_empty_results():
    """Zero proposals, or none above the score threshold: empty detections with the fields of a
    non-empty result, masks of the head's resolution and MaskIoU scores included."""
    heads = build(make_cfg(MASKIOU_ON=True)).eval()
    empty = [Instances(IMAGE_SIZE, proposal_boxes=Boxes(torch.zeros(0, 4)),
                       objectness_logits=torch.zeros(0)) for _ in range(2)]
    outputs = [_detections(heads, empty)]
    heads.box_predictor.test_score_thresh = 1.0
    outputs.append(_detections(heads, make_proposals()))
    for out in outputs:
        assert len(out) == 2
        for inst in out:
            assert len(inst) == 0 and inst.image_size == IMAGE_SIZE
            assert inst.pred_masks.shape == (0, 1, 28, 28)
            assert inst.pred_maskiou.shape == inst.mask_scores.shape == (0,)


def test_box_only_r3cnn():
    cfg = make_cfg()
    cfg.MODEL.MASK_ON = False
    heads = build(cfg)
    assert not heads.mask_on
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(), make_targets())
    assert set(losses) == {f"{k}_loop{t}" for t in range(3) for k in ("loss_cls", "loss_box_reg")}
    out = _detections(heads, make_proposals())
    assert not out[0].has("pred_masks") and len(out[0]) > 0


# ---------------------------------------------------------------- composability
@ROI_BOX_PREDICTOR_REGISTRY.register()
class _R3TestPredictor(FastRCNNOutputLayers):
    """A FastRCNNOutputLayers-compatible predictor with an extra loss, to check the plug-in."""

    def losses(self, predictions, proposals):
        out = super().losses(predictions, proposals)
        out["loss_extra"] = predictions[0].sum() * 0.0
        return out


def test_box_predictor_comes_from_config():
    cfg = make_cfg()
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "_R3TestPredictor"
    heads = build(cfg)
    assert type(heads.box_predictor) is _R3TestPredictor
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(), make_targets())
    assert {"loss_extra_loop0", "loss_extra_loop2"} <= set(losses)


# ---------------------------------------------------------------- config errors
@pytest.mark.parametrize("r3, message", [
    (dict(NUM_LOOPS_TRAIN=2), "IOU_THRESHOLDS"),
    (dict(LOOP_LOSS_WEIGHTS=[1.0, 0.5]), "LOOP_LOSS_WEIGHTS"),
    (dict(IOU_THRESHOLDS=[0.5, 0.6, 1.0]), r"\(0, 1\)"),
    (dict(IOU_THRESHOLDS=[0.0, 0.6, 0.7]), r"\(0, 1\)"),
    (dict(NUM_LOOPS_TRAIN=0, IOU_THRESHOLDS=[], LOOP_LOSS_WEIGHTS=[]), ">= 1"),
])
def test_config_errors(r3, message):
    with pytest.raises(ValueError, match=message):
        build(make_cfg(**r3))


def test_class_specific_regression_is_an_error():
    cfg = make_cfg()
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
    with pytest.raises(ValueError, match=r"R3CNNROIHeads regresses class-agnostically \(one "
                       r"regressor, all loops\): set MODEL\.ROI_BOX_HEAD\.CLS_AGNOSTIC_BBOX_REG True"):
        build(cfg)


def test_training_on_predicted_boxes_is_an_error():
    cfg = make_cfg()
    cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = True
    with pytest.raises(ValueError, match=r"^MODEL\.ROI_BOX_HEAD\.TRAIN_ON_PRED_BOXES has no meaning "
                       r"in R3CNNROIHeads$"):
        build(cfg)


def test_maskiou_needs_the_mask_branch():
    cfg = make_cfg(MASKIOU_ON=True)
    cfg.MODEL.MASK_ON = False
    with pytest.raises(ValueError, match=r"^MODEL\.R3CNN\.MASKIOU_ON needs MODEL\.MASK_ON$"):
        build(cfg)


def test_test_loops_must_be_positive():
    """NUM_LOOPS_TEST 0 means "as in training" in the config; the heads themselves refuse 0."""
    with pytest.raises(ValueError, match=r"^the number of test loops must be >= 1, got 0$"):
        r3cnn.roi_heads.check_loop_config(3, 0, [0.5, 0.6, 0.7], [1.0, 0.5, 0.25])


def test_training_needs_targets():
    heads = build(make_cfg()).train()
    with pytest.raises(AssertionError, match=r"^'targets' argument is required during training$"):
        heads(None, make_features(), make_proposals(), None)


def test_maskiou_head_is_built_from_its_keys():
    """Every MASKIOU_* / LIGHT_HEAD / NONLOCAL key reaches the MaskIoU head: the layer shapes below
    are worked out by hand from the keys (input: CHANNELS + 1 mask channel, 14x14 RoIs)."""
    heads = build(make_cfg(MASKIOU_ON=True, MASKIOU_NUM_CONV=2, MASKIOU_CONV_DIM=8,
                           MASKIOU_NUM_LIGHT_CONV=1, LIGHT_HEAD_KERNEL_SIZE=3,
                           MASKIOU_NONLOCAL=True, NONLOCAL_KERNEL_SIZE=5, NONLOCAL_REDUCTION=4))
    layers = heads.maskiou_head.layers
    assert [type(m).__name__ for m in layers] == [
        "Conv2d", "Conv2d", "NonLocalBlock2d", "Conv2d", "NonLocalBlock2d"]
    assert layers[0].weight.shape == (8, CHANNELS + 1, 3, 3) and layers[0].stride == (1, 1)
    assert layers[1].weight.shape == (8, 8, 3, 3) and layers[1].stride == (2, 2)
    assert layers[2].theta.weight.shape == (2, 8, 5, 5)  # 8 channels // reduction 4, kernel 5
    assert layers[3].weight.shape == (4, 8, 3, 3)  # one light conv halving 8, kernel 3
    assert layers[4].theta.weight.shape == (1, 4, 5, 5)
    assert heads.maskiou_head.maskiou.weight.shape == (3, 4 * 7 * 7)  # 3 classes, 14 -> 7
    plain = build(make_cfg(MASKIOU_ON=True, MASKIOU_NONLOCAL=False, MASKIOU_NUM_LIGHT_CONV=2))
    assert [type(m).__name__ for m in plain.maskiou_head.layers] == ["Conv2d"] * 4


def test_refined_proposals_drop_empty_and_ground_truth_boxes_in_training():
    """Zero deltas: each refined box is its proposal, clipped to the 64x64 image. A box outside
    the image clips to an empty box and is dropped, ground truth or not; so is every box regressed
    from a ground-truth RoI. An image without the ``from_gt`` field drops only the empty boxes."""
    heads = build(make_cfg()).train()
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [70.0, 10.0, 90.0, 30.0],
                          [5.0, 5.0, 20.0, 20.0], [2.0, 3.0, 12.0, 13.0]])
    with_gt, without = Instances(IMAGE_SIZE), Instances(IMAGE_SIZE)
    with_gt.proposal_boxes = Boxes(boxes.clone())
    with_gt.from_gt = torch.tensor([False, False, True, False])
    without.proposal_boxes = Boxes(boxes.clone())
    predictions = (torch.zeros(8, 4), torch.zeros(8, 4))
    refined = heads._refined_proposals(predictions, [with_gt, without])
    assert torch.equal(refined[0].proposal_boxes.tensor, boxes[[0, 3]])
    assert torch.equal(refined[1].proposal_boxes.tensor, boxes[[0, 2, 3]])
    # At inference every box is kept (clipped), so that the loops' scores stay aligned.
    refined = heads.eval()._refined_proposals(predictions, [with_gt, without])
    clipped = boxes.clone()
    clipped[1] = torch.tensor([64.0, 10.0, 64.0, 30.0])
    assert torch.equal(refined[0].proposal_boxes.tensor, clipped)


def test_refined_proposals_refuse_class_specific_boxes(monkeypatch):
    heads = build(make_cfg()).train()
    monkeypatch.setattr(heads.box_predictor, "predict_boxes", lambda p, props: [torch.zeros(3, 12)])
    with pytest.raises(ValueError, match=r"^R3CNNROIHeads needs class-agnostic boxes \(R, 4\) from "
                       r"the predictor, got \(3, 12\)$"):
        heads._refined_proposals(None, make_proposals(n=3)[:1])


def test_package_exports():
    assert r3cnn.add_r3cnn_config is add_r3cnn_config
    assert r3cnn.R3CNNROIHeads is R3CNNROIHeads


@pytest.mark.parametrize("sampler", ["ohem", "iou_balanced", "pisa"])
def test_samplers_plug_into_every_loop(sampler):
    cfg = make_cfg()
    cfg.MODEL.ROI_HEADS.SAMPLER = sampler
    heads = build(cfg)
    with EventStorage() as storage:
        _, losses = heads(None, make_features(), make_proposals(), make_targets(with_empty=True))
        latest = storage.latest()
    assert all(torch.isfinite(v) for v in losses.values())
    for t in range(3):
        n = latest[f"imbalance/loop{t}/num_fg"][0] + latest[f"imbalance/loop{t}/num_bg"][0]
        if sampler != "pisa":  # PISA keeps every candidate (soft sampling)
            assert 0 < n <= 2 * 16  # at most BATCH_SIZE_PER_IMAGE RoIs per image and loop


def _shape_polygons(kind, box):
    """Polygons (lists of x, y) of an L or a ring inside ``box``, not filling it: the L is the
    box's left third plus its bottom third; the ring is the box less its middle (four bands)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if kind == "L":
        return [[x0, y0, x0 + w / 3, y0, x0 + w / 3, y1 - h / 3, x1, y1 - h / 3, x1, y1, x0, y1]]
    a, b = w / 4, h / 4

    def rect(u0, v0, u1, v1):
        return [u0, v0, u1, v0, u1, v1, u0, v1]
    return [rect(x0, y0, x1, y0 + b), rect(x0, y1 - b, x1, y1), rect(x0, y0 + b, x0 + a, y1 - b),
            rect(x1 - a, y0 + b, x1, y1 - b)]


def make_shaped_targets(kind, fmt):
    """make_targets' boxes and classes with L-shaped or ring masks, as polygons or bitmasks."""
    from detectron2.structures import PolygonMasks, polygons_to_bitmask

    targets = make_targets()
    for inst in targets:
        polygons = [_shape_polygons(kind, b) for b in inst.gt_boxes.tensor.tolist()]
        if fmt == "polygon":
            inst.gt_masks = PolygonMasks(polygons)
        else:
            inst.gt_masks = BitMasks(torch.stack([
                torch.from_numpy(polygons_to_bitmask(p, *IMAGE_SIZE)) for p in polygons]))
    return targets


@pytest.mark.parametrize("kind", ["L", "ring"])
@pytest.mark.parametrize("fmt", ["polygon", "bitmask"])
def test_mask_targets_of_shaped_masks_are_detectron2s(kind, fmt):
    """L-shaped and ring masks (not their boxes): each loop's mask loss equals Detectron2's
    mask_rcnn_loss, whose targets are the instances' own crop_and_resize per RoI, on that loop's
    RoIs; it differs from the loss against masks filling the boxes; and the targets are cropped
    once per image and step (one crop_and_resize call per image, not one per loop and MaskIoU)."""
    from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
    from detectron2.structures import PolygonMasks

    heads = build(make_cfg(MASKIOU_ON=True))
    randomize_regression(heads, scale=0.2)
    with torch.no_grad():  # logits far from 0, so that the loss tells the targets apart
        heads.mask_head.predictor.weight.copy_(torch.randn(
            heads.mask_head.predictor.weight.shape, generator=torch.Generator().manual_seed(5)))
    features = make_features()
    rois = _spy_mask_rois(heads)
    masks_type = PolygonMasks if fmt == "polygon" else BitMasks
    crops = []
    original = masks_type.crop_and_resize

    def counting(self, boxes, mask_size):
        crops.append(len(boxes))
        return original(self, boxes, mask_size)

    masks_type.crop_and_resize = counting
    try:
        with EventStorage():
            _, losses = heads(None, features, make_proposals(near_gt=3),
                              make_shaped_targets(kind, fmt))
            crops_in_step = list(crops)
            for t, loop in enumerate(rois):
                assert sum(len(i) for i in loop) > 0
                x = heads.mask_pooler([features["p2"]], [i.proposal_boxes for i in loop])
                logits = heads.mask_head.layers(x)
                ref = heads.loop_loss_weights[t] * mask_rcnn_loss(logits, loop, 0)
                assert torch.allclose(losses[f"loss_mask_loop{t}"], ref, rtol=0, atol=1e-6), t
                boxy = copy.deepcopy(loop)
                for inst in boxy:
                    inst.gt_masks = BitMasks(torch.stack([
                        torch.from_numpy(polygons_to_box_mask(b)) for b in inst.gt_boxes.tensor]))
                box_ref = heads.loop_loss_weights[t] * mask_rcnn_loss(logits, boxy, 0)
                assert (losses[f"loss_mask_loop{t}"] - box_ref).abs() > 1e-3, t
    finally:
        masks_type.crop_and_resize = original
    assert len(crops_in_step) == 2  # one call per image, for all three loops and MaskIoU


def polygons_to_box_mask(box):
    """The mask that fills ``box``: the target a box-derived computation would give."""
    import numpy as np

    mask = np.zeros(IMAGE_SIZE, dtype=bool)
    x0, y0, x1, y1 = [int(round(v)) for v in box.tolist()]
    mask[y0:y1, x0:x1] = True
    return mask
