"""Mixed precision (``SOLVER.AMP.ENABLED``): every method trains and infers under autocast, and the
heads' losses are float32 whatever the dtype of the predictions.

CPU autocast (bfloat16) is not CUDA's (float16) (tests/amp_emulation.py). So a CPU test alone
cannot see a CUDA-only failure. Three checks stand in for the GPU:

- :class:`amp_emulation.CudaAutocastRules` runs, inside CPU autocast, the ops of CUDA's float32
  list in float32 and refuses what CUDA's autocast refuses (``index_copy`` of mixed dtypes,
  ``binary_cross_entropy`` of half inputs), so the models' steps below meet CUDA's dtypes;
- it also records which of this project's functions pass a half tensor to an op that neither
  autocast casts (masked assignment / ``index_put_``, ``scatter*``, ``index_copy``, ``index_add``,
  ``where``, ``cat``, ``stack``): every such function must be in :data:`HALF_SITES`, which names
  the test that calls it with half inputs; every other call site of these ops met only float32 (or
  integer) tensors in every embedded config's training step and inference;
- the loss functions are called directly, outside autocast, with bfloat16/float16 predictions and
  float32 targets (and the other way round): their results must be float32 and equal the float32
  losses computed here with torch from the same (rounded) values.

Models: every embedded config (``configs/*/*_shapes.yaml``, ``configs/nuclei/*_nuclei.yaml``),
one training step (finite float32 losses, finite gradients) and one inference pass compared with
the float32 pass on the same weights. The weights
of the classification layers are scaled so the classes are confident (largest logit 5 on the test
image: data-dependent classes, scores not saturated), and each of the float32 pass's 3 best
detections must be found in the bfloat16 pass with its class, overlapping it (IoU >= 0.5: a box
NMS kept instead of it overlaps it that much) and with its score within 0.05 (bfloat16 keeps 8
significant bits; these scores moved by at most 0.015 on these models, on both Detectron2s).
"""
import copy
import glob
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import BitMasks, Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from amp_emulation import HALF, HALF_SITES, CudaAutocastRules, cuda_like_autocast
from imbalance.losses import GHMCLoss, GHMRLoss, fast_rcnn_per_roi_losses
from imbalance.modeling.weighted_fast_rcnn import (
    PISAFastRCNNOutputLayers,
    WeightedFastRCNNOutputLayers,
)
from iou_aware.iou_branch import IoUConfidenceDecodingMixin, iou_branch_loss
from offset_bin import OffsetBinOutputLayers
from r3cnn.maskiou_head import MaskIoUHead
from test_ghm import two_level_anchor_labels
from train_net import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cuda_rules_catch_what_cpu_autocast_hides():
    """A half buffer filled with cross-entropies by ``index_copy`` (the offset-bin loss before it
    was made dtype-explicit) passes under CPU autocast and fails under CUDA's rules."""
    scores = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 1])

    def old_offset_bin_ce():
        logits = F.linear(scores, torch.eye(3))  # bfloat16 under autocast
        ce = F.cross_entropy(logits, labels, reduction="none")  # float32 under autocast
        return logits.new_zeros(4).index_copy(0, torch.arange(4), ce)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert old_offset_bin_ce().dtype == torch.float32  # CPU autocast promotes index_copy
        with CudaAutocastRules(), pytest.raises(RuntimeError, match="index_copy"):
            old_offset_bin_ce()
        with CudaAutocastRules():  # and runs CUDA's float32 ops in float32
            assert F.softmax(F.linear(scores, torch.eye(3)), dim=1).dtype == torch.float32
        assert F.softmax(F.linear(scores, torch.eye(3)), dim=1).dtype == torch.bfloat16
        # grid_sample (Detectron2's mask pasting): CUDA's promotes to the widest input, the CPU's
        # runs it in float32
        masks, grid = torch.rand(1, 1, 4, 4).bfloat16(), torch.zeros(1, 2, 2, 2).bfloat16()
        assert F.grid_sample(masks, grid, align_corners=False).dtype == torch.float32
        with CudaAutocastRules():
            assert F.grid_sample(masks, grid, align_corners=False).dtype == torch.bfloat16
            assert F.grid_sample(masks, grid.float(), align_corners=False).dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# Every method's embedded model under autocast
# ------------------------------------------------------------------------------------------------
EMBEDDED = sorted(
    os.path.relpath(p, os.path.join(REPO, "configs"))
    for p in glob.glob(os.path.join(REPO, "configs", "*", "*_shapes.yaml"))
    + glob.glob(os.path.join(REPO, "configs", "nuclei", "*_nuclei.yaml"))
    if not os.path.basename(p).startswith("Base-"))

def num_classes(cfg) -> int:
    arch = cfg.MODEL.META_ARCHITECTURE
    if "RCNN" in arch:
        return cfg.MODEL.ROI_HEADS.NUM_CLASSES
    return cfg.MODEL.FCOS.NUM_CLASSES if "FCOS" in arch else cfg.MODEL.RETINANET.NUM_CLASSES


def test_every_embedded_config_is_covered():
    assert len(EMBEDDED) >= 40 and len({os.path.dirname(p) for p in EMBEDDED}) == 6
    assert "nuclei/r3cnn_naive_smallR_FPN_nuclei.yaml" in EMBEDDED
    assert "r3cnn/r3cnn_naive_flow_smallR_FPN_shapes.yaml" in EMBEDDED


# 96: P6 of the dense heads is 2 x 2. At 64 it is 1 x 1, and PyTorch's CPU bfloat16 convolution
# then gives P7's 3x3 stride-2 weight a non-finite gradient in some runs (a 1 x 1 input: 28 of 200
# seeded runs of that conv alone, none at 2 x 2; not our code, and not CUDA's).
SIZE = 96


def training_batch(classes: int = 6):
    """An image with two objects (masks: an L shape and a box) and an image without any; the
    objects' classes are 0 and 2 (0 and 0 with one class)."""
    g = torch.Generator().manual_seed(0)
    inst = Instances((SIZE, SIZE))
    inst.gt_boxes = Boxes(torch.tensor([[6.0, 8.0, 30.0, 34.0], [34.0, 20.0, 60.0, 58.0]]))
    inst.gt_classes = torch.tensor([0, 2 if classes > 2 else 0])
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 8:34, 6:14] = masks[0, 26:34, 6:30] = True
    masks[1, 20:58, 34:60] = True
    inst.gt_masks = BitMasks(masks)
    empty = Instances((SIZE, SIZE), gt_boxes=Boxes(torch.zeros(0, 4)),
                      gt_classes=torch.zeros(0, dtype=torch.long),
                      gt_masks=BitMasks(torch.zeros(0, SIZE, SIZE, dtype=torch.bool)))
    return [{"image": torch.rand(3, SIZE, SIZE, generator=g) * 255, "height": SIZE,
             "width": SIZE, "instances": i} for i in (inst, empty)]


def confident(model, batch, max_logit: float = 5.0):
    """Scale every classification layer (``*cls_score``), zero bias, so that its largest logit on
    ``batch`` is ``max_logit``: data-dependent, confident classes, and sigmoid scores up to 0.993,
    not saturated (no ties at 1)."""
    layers = [m for name, m in model.named_modules() if name.endswith("cls_score")]
    assert layers
    largest = {}
    hooks = [m.register_forward_hook(lambda m, i, o: largest.setdefault(m, o.float().max())
                                     and None) for m in layers]
    with torch.no_grad():
        for m in layers:
            m.bias.zero_()
        model(batch)
        for h in hooks:
            h.remove()
        for m in layers:
            assert largest[m] > 0
            m.weight.mul_(max_logit / largest[m])
    return layers


@pytest.mark.parametrize("config", EMBEDDED, ids=lambda p: os.path.basename(p)[:-5])
def test_training_step_and_inference_under_autocast(config):
    cfg = build_cfg(os.path.join(REPO, "configs", config), [
        "MODEL.DEVICE", "cpu", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "TEST.DETECTIONS_PER_IMAGE", "100"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = training_batch(num_classes(cfg))
    sites = set()
    for rules in (None, CudaAutocastRules()):  # the CPU's autocast, then with CUDA's rules
        model.zero_grad()
        with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
            if rules is not None:
                with rules:
                    losses = model(batch)
                sites |= rules.half_sites()
            else:
                losses = model(batch)
        for name, loss in losses.items():
            assert loss.dtype == torch.float32 and torch.isfinite(loss), (rules, name, loss)
        sum(losses.values()).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), rules
        assert any(g.abs().sum() > 0 for g in grads), rules

    model.eval()
    images = [{k: v for k, v in d.items() if k != "instances"} for d in batch[:1]]
    layers = confident(model, images)
    seen = []
    hook = layers[-1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        ref = model(images)[0]["instances"]
        assert seen and set(seen) == {torch.float32}
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16), CudaAutocastRules() as rules:
            half = model(images)[0]["instances"]
        assert seen and set(seen) == {torch.bfloat16}  # the classifier ran in bfloat16
    hook.remove()
    sites |= rules.half_sites()
    assert sites <= set(HALF_SITES), sites - set(HALF_SITES)
    assert len(ref) >= 3
    for j in ref.scores.argsort(descending=True)[:3].tolist():
        iou = pairwise_iou(Boxes(ref.pred_boxes.tensor[j:j + 1]), half.pred_boxes)[0]
        twin = (half.pred_classes == ref.pred_classes[j]) & (iou >= 0.5) & (
            (half.scores.float() - ref.scores[j]).abs() <= 0.05)
        assert twin.any(), (j, ref[j], half)


# ------------------------------------------------------------------------------------------------
# The loss functions with half-precision predictions, outside autocast
# ------------------------------------------------------------------------------------------------
NUM_CLASSES = 3
WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# A foreground RoI of class 2 whose ground-truth offsets are (2, 0, 0, -2) with WEIGHTS (proposal
# 40 x 20: dx = 10 * 8 / 40; dh = 5 log(h'/h) with h' = 20 e^-0.4), a background RoI and an
# ignored one (label -1), as in tests/test_offset_bin_losses.py.
GT = [26.0, 30.0 - 10.0 * 0.6703200460356393, 66.0, 30.0 + 10.0 * 0.6703200460356393]
GT_DELTAS = torch.tensor([2.0, 0.0, 0.0, -2.0])


def rois():
    inst = Instances((100, 100))
    inst.proposal_boxes = Boxes(torch.tensor([[18.0, 20.0, 58.0, 40.0], [60.0, 60.0, 90.0, 90.0],
                                              [0.0, 0.0, 10.0, 10.0]]))
    inst.gt_boxes = Boxes(torch.tensor([GT, GT, GT]))
    inst.gt_classes = torch.tensor([2, NUM_CLASSES, -1])
    return inst


def predictions(score_dtype, deltas_dim, deltas_dtype, seed=3):
    """Random (scores, deltas), rounded to their dtypes, and their exact float32 values."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(3, NUM_CLASSES + 1, generator=g).to(score_dtype)
    deltas = torch.randn(3, deltas_dim, generator=g).to(deltas_dtype)
    return (scores, deltas), (scores.float(), deltas.float())


def expected_ce(scores32):
    """Cross-entropy of the foreground and background RoIs, 0 for the ignored one."""
    ce = F.cross_entropy(scores32[:2], torch.tensor([2, NUM_CLASSES]), reduction="none")
    return torch.cat([ce, torch.zeros(1)])


MIXES = [(h, h) for h in HALF] + [(torch.bfloat16, torch.float32),
                                  (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("score_dtype, deltas_dtype", MIXES)
def test_fast_rcnn_per_roi_losses_are_float32(score_dtype, deltas_dtype):
    layer = FastRCNNOutputLayers(ShapeSpec(channels=8), box2box_transform=Box2BoxTransform(WEIGHTS),
                                 num_classes=NUM_CLASSES)
    preds, (scores32, deltas32) = predictions(score_dtype, 4 * NUM_CLASSES, deltas_dtype)
    ce, box = fast_rcnn_per_roi_losses(layer, preds, [rois()])
    assert ce.dtype == box.dtype == torch.float32
    assert torch.allclose(ce, expected_ce(scores32), atol=1e-6)
    # smooth L1 with beta 0 (Detectron2's default): L1 of the class-2 deltas against the offsets
    l1 = (deltas32[0, 8:12] - GT_DELTAS).abs().sum()
    assert torch.allclose(box, torch.stack([l1, torch.tensor(0.0), torch.tensor(0.0)]), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the masked assignment that failed
        ce, box = fast_rcnn_per_roi_losses(layer, preds, [rois()])
    assert ce.dtype == box.dtype == torch.float32
    assert torch.allclose(ce, expected_ce(scores32), atol=1e-6)


@pytest.mark.parametrize("score_dtype", HALF)
def test_weighted_and_pisa_losses_are_float32(score_dtype):
    kwargs = dict(box2box_transform=Box2BoxTransform(WEIGHTS), num_classes=NUM_CLASSES)
    preds, (scores32, deltas32) = predictions(score_dtype, 4 * NUM_CLASSES, score_dtype)
    ce = expected_ce(scores32)
    l1 = (deltas32[0, 8:12] - GT_DELTAS).abs().sum()
    inst = rois()
    inst.loss_weights = torch.tensor([2.0, 0.5, 1.0])
    with EventStorage(0):
        weighted = WeightedFastRCNNOutputLayers(ShapeSpec(channels=8), **kwargs).losses(
            preds, [inst])
        inst.loss_weights = torch.ones(3)
        pisa = PISAFastRCNNOutputLayers(ShapeSpec(channels=8), **kwargs).losses(preds, [inst])
    assert all(v.dtype == torch.float32 for v in [*weighted.values(), *pisa.values()])
    assert torch.allclose(weighted["loss_cls"], (2.0 * ce[0] + 0.5 * ce[1]) / 3, atol=1e-6)
    assert torch.allclose(weighted["loss_box_reg"], 2.0 * l1 / 3, atol=1e-5)
    # One positive: ISR-P's renormalisation keeps its classification loss (loss_cls = mean CE),
    # and CARL's weights, normalised to mean 1, leave its box loss (loss_carl = loss_box_reg).
    assert torch.allclose(pisa["loss_cls"], ce.sum() / 3, atol=1e-6)
    assert torch.allclose(pisa["loss_box_reg"], l1 / 3, atol=1e-5)
    assert torch.allclose(pisa["loss_carl"], l1 / 3, atol=1e-5)


BIN_LABELS = [3, 2, 2, 1]  # bins of (2, 0, 0, -2) with a = 3, n = 5: [1,3) [-1,1) [-1,1) [-3,-1)
REPRESENTATIVES = torch.tensor([-3.0, -2.0, 0.0, 2.0, 3.0])  # Eq. 5, a = 3, n = 5: width 2


@pytest.mark.parametrize("score_dtype, bins_dtype", MIXES)
def test_offset_bin_losses_and_decoding_are_float32(score_dtype, bins_dtype):
    layer = OffsetBinOutputLayers(ShapeSpec(channels=8),
                                  box2box_transform=Box2BoxTransform(WEIGHTS),
                                  num_classes=NUM_CLASSES, offset_range=3.0, num_bins=5,
                                  num_focusing_stages=1)
    preds, (scores32, bins32) = predictions(score_dtype, NUM_CLASSES * 4 * 5, bins_dtype)
    ce, loc = layer.per_roi_losses(preds, [rois()])
    assert ce.dtype == loc.dtype == torch.float32
    assert torch.allclose(ce, expected_ce(scores32), atol=1e-6)
    logits = bins32[0].view(NUM_CLASSES, 4, 5)[2]  # the foreground RoI's class-2 bin scores
    expected_loc = -logits.log_softmax(-1)[torch.arange(4), torch.tensor(BIN_LABELS)].sum()
    assert torch.allclose(loc, torch.stack([expected_loc, torch.tensor(0.0), torch.tensor(0.0)]),
                          atol=1e-5)
    with EventStorage(0):
        losses = layer.losses(preds, [rois()])
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert torch.allclose(losses["loss_bin_stage0"], expected_loc / 3, atol=1e-5)
    # Eq. 10 in float32: the expectation over the bins' representatives.
    deltas = layer.predict_deltas(preds[1])
    assert deltas.dtype == torch.float32
    expected = (bins32.view(3, NUM_CLASSES, 4, 5).softmax(-1) * REPRESENTATIVES).sum(-1)
    assert torch.allclose(deltas, expected.view(3, -1), atol=1e-6)
    # Inference's masked assignment of the decoded boxes into the proposals' (float32) copy, from
    # half bin scores and probabilities: float32 boxes, Eq. 10's deltas applied by Detectron2's
    # Box2BoxTransform to every (RoI, class) above the score threshold (0: all of them).
    proposals = rois().proposal_boxes.tensor
    probs = F.softmax(scores32, dim=1).to(score_dtype)
    assert layer.test_score_thresh < probs.float().min()
    boxes = layer._decode_candidates(layer.bin_logits_view(preds[1]), probs, proposals)
    assert boxes.dtype == torch.float32
    reference = Box2BoxTransform(WEIGHTS).apply_deltas(expected.view(3, -1), proposals)
    assert torch.allclose(boxes, reference, atol=1e-4)


class _Detector(IoUConfidenceDecodingMixin):
    iou_alpha = 0.5
    box2box_transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("loss_type", ["bce", "l2"])
def test_iou_loss_is_float32_with_the_target_unrounded(dtype, loss_type):
    """The regressed box (the anchor: zero deltas) [0, 10] x [0, 10] against [0, 10] x [0, 6.1]:
    IoU 0.61, which bfloat16 would round to 0.609375 (float16: 0.60986)."""
    deltas = torch.zeros(1, 1, 4, dtype=dtype, requires_grad=True)
    x = torch.tensor([[[0.3]]], dtype=dtype)
    loss = iou_branch_loss([Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))],
                           Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), [deltas],
                           torch.tensor([[[0.0, 0.0, 10.0, 6.1]]]), torch.tensor([[True]]), [x],
                           loss_type=loss_type)
    assert loss.dtype == torch.float32
    x32, t = x.float().flatten(), torch.tensor([0.61])
    expected = (F.softplus(x32) - t * x32 if loss_type == "bce" else (x32.sigmoid() - t) ** 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()  # the target's gradient reaches the (half) deltas
    assert deltas.grad.dtype == dtype and deltas.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", HALF)
def test_confidence_is_float32(dtype):
    """Eq. 5, S = p^0.5 q^0.5, in float32 from half p and q: CUDA computes ``pow`` in float32."""
    p = torch.tensor([[0.3, 0.9], [0.7, 0.2]]).to(dtype)
    q = torch.tensor([[0.8], [0.45]]).to(dtype)
    out = _Detector()._decode_per_level_predictions(
        Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])), p,
        torch.zeros(2, 4, dtype=dtype), 0.05, 100, (32, 32), quality=q)
    assert out.scores.dtype == torch.float32
    expected = (p.float() * q.float()).sqrt().flatten().sort(descending=True).values
    assert torch.allclose(out.scores, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", HALF)
def test_ghm_losses_are_float32(dtype):
    """GHM-C (M = 30, no momentum) on 5 logits whose gradient norms fall in 4 bins: L = sum_i
    CE_i / (R_bin(i) * 4) (tests/test_ghm.py); GHM-R on one element: ASL1(d) * loss weight."""
    probs, targets = torch.tensor([0.91, 0.96, 0.09, 0.52, 0.21]), torch.tensor([1, 1, 0, 0, 1.0])
    x = torch.log(probs / (1 - probs)).to(dtype)
    got = GHMCLoss(bins=30, momentum=0.0)(x, targets)
    assert got.dtype == torch.float32
    ce = F.binary_cross_entropy_with_logits(x.float(), targets, reduction="none")
    expected = (ce[0] + ce[2]) / (2 * 4) + (ce[1] + ce[3] + ce[4]) / 4
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)

    pred, target = torch.tensor([0.37]).to(dtype), torch.tensor([0.1])
    got = GHMRLoss(mu=0.02, bins=10, momentum=0.0, loss_weight=10.0)(pred, target)
    assert got.dtype == torch.float32
    d = pred.float() - target
    assert got.item() == pytest.approx(10.0 * ((d * d + 0.02 ** 2).sqrt() - 0.02).item(), rel=1e-6)


@pytest.mark.parametrize("dtype", HALF)
def test_ghm_retinanet_losses_are_float32(dtype):
    """The GHM RetinaNet's losses (GHM-C and GHM-R, momentum 0.75 and 0.7: the retinanet_ghm
    config) from half logits and deltas, outside autocast: float32 losses, equal to its losses from
    float64 copies of the same rounded values (that float64 path is checked against the authors'
    per-element loops in tests/test_ghm.py)."""
    config = os.path.join(REPO, "configs", "samplers", "retinanet_ghm_smallR_FPN_shapes.yaml")
    cfg = build_cfg(config, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg)
    K = model.num_classes
    g, sizes, anchors, labels, gt_boxes = two_level_anchor_labels(K)
    logits = [torch.randn(2, n, K, generator=g).to(dtype) for n in sizes]
    deltas = [(torch.randn(2, n, 4, generator=g) * 0.3).to(dtype) for n in sizes]
    with EventStorage():  # copies: the moving averages of GHM and of the normaliser change
        half = copy.deepcopy(model).losses(anchors, logits, labels, deltas, gt_boxes)
        ref = copy.deepcopy(model).losses(anchors, [x.double() for x in logits], labels,
                                          [d.double() for d in deltas], gt_boxes)
    for key in ("loss_cls", "loss_box_reg"):
        assert half[key].dtype == torch.float32, key
        assert half[key].item() == pytest.approx(ref[key].item(), rel=1e-5), key


@pytest.mark.parametrize("features_dtype, logits_dtype", [
    (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.float32)])
def test_maskiou_head_takes_mixed_dtypes(features_dtype, logits_dtype):
    """The MaskIoU head concatenates the RoI features and the max-pooled mask probabilities (Sec.
    4.3). ``cat`` promotes to the widest input under both autocasts (CPU's by its promote list,
    CUDA's by cat's own type promotion), so CPU autocast shows CUDA's case here: with any mix of
    bfloat16 and float32 inputs the head runs, in autocast's bfloat16 (its convolutions and linear
    layer), and its output is the float32 output up to bfloat16's rounding."""
    torch.manual_seed(0)
    head = MaskIoUHead(8, 14, 3, num_conv=2, conv_dim=16, num_light_conv=1, light_kernel_size=3,
                       nonlocal_kernel_size=3)
    torch.nn.init.normal_(head.maskiou.weight, std=0.1)  # outputs of order 1, not 0.01
    features, logits = torch.randn(4, 8, 14, 14), torch.randn(4, 28, 28)
    with torch.no_grad():
        ref = head(features, logits)
        with cuda_like_autocast() as rules:
            out = head(features.to(features_dtype), logits.to(logits_dtype))
            torch.cat([out, out])  # not this project's code: not a site
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape == (4, 3)
    # the census of the training steps above sees this function's cat of half tensors
    assert rules.half_sites() == set(rules.sites) == {"r3cnn/maskiou_head.py:forward"}
    assert torch.allclose(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
