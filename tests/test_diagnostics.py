"""Imbalance diagnostics: histogram counts of a hand-built batch, anchor counts, and the hook that
carries every iteration's counts into metrics.json."""
import json
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import HookBase
from detectron2.engine.hooks import PeriodicWriter
from detectron2.engine.train_loop import TrainerBase
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage, JSONWriter

import imbalance
from imbalance.diagnostics import (
    ImbalanceStatsHook,
    check_diagnostics_period,
    insert_imbalance_stats_hook,
    iou_bin_names,
    iou_histogram,
    log_anchor_stats,
    log_sampling_stats,
)


def test_iou_histogram_bins():
    ious = torch.tensor([0.3, 0.49, 0.5, 0.549, 0.55, 0.72, 0.999, 1.0])
    assert iou_histogram(ious).tolist() == [2, 1, 0, 0, 1, 0, 0, 0, 0, 2]
    assert iou_bin_names()[0] == "iou_0.50" and iou_bin_names()[-1] == "iou_0.95"


def test_iou_histogram_drops_nan_and_inf():
    """NaN, inf and -inf are outside [0.5, 1]: dropped, the other values counted as usual (a NaN
    used to become bin index INT64_MIN, and index_add_ failed)."""
    nan, inf = float("nan"), float("inf")
    ious = torch.tensor([nan, 0.55, inf, 1.0, -inf, nan, 0.51])
    assert iou_histogram(ious).tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    marked = torch.tensor([True, False, True, True, True, True, True])
    assert iou_histogram(ious, weights=marked).tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]


def hand_built_head(**opts):
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "SamplingStandardROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # keep every candidate
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 1.0
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 8
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return build_roi_heads(cfg, {"p2": ShapeSpec(channels=4, stride=4)})


def hand_built_batch():
    # ground truth [0, 0, 20, 20]; a proposal [0, 0, 20, w] has IoU w / 20
    widths = [[10.5, 13.5, 15.5, 19.5, 5.0, 2.0], [12.5, 12.7, 19.9, 8.0]]
    proposals, targets = [], []
    for ws in widths:
        t = Instances((32, 32), gt_boxes=Boxes(torch.tensor([[0.0, 0, 20, 20]])),
                      gt_classes=torch.tensor([1]))
        boxes = torch.tensor([[0.0, 0, 20, w] for w in ws])
        proposals.append(Instances((32, 32), proposal_boxes=Boxes(boxes),
                                   objectness_logits=torch.zeros(len(ws))))
        targets.append(t)
    return proposals, targets


def test_histogram_of_a_hand_built_batch_through_the_head():
    head = hand_built_head()
    proposals, targets = hand_built_batch()
    with EventStorage() as storage:
        sampled = head.label_and_sample_proposals(proposals, targets)
        latest = {k: v for k, (v, _) in storage.latest().items()}
    # positive IoUs: .525 .675 .775 .975 1.0(gt) | .625 .635 .995 1.0(gt); negatives: .25 .1 | .4
    expected = [1, 0, 2, 1, 0, 1, 0, 0, 0, 4]
    assert [latest[f"imbalance/roi_head/{n}"] for n in iou_bin_names()] == expected
    assert latest["imbalance/roi_head/num_fg"] == 9
    assert latest["imbalance/roi_head/num_bg"] == 3
    assert latest["imbalance/roi_head/fg_bg_ratio"] == pytest.approx(3.0)
    # Detectron2's own keys, per image
    assert latest["roi_head/num_fg_samples"] == pytest.approx(4.5)
    assert latest["roi_head/num_bg_samples"] == pytest.approx(1.5)
    assert sorted(sampled[0].gt_ious.tolist()) == pytest.approx(
        [0.1, 0.25, 0.525, 0.675, 0.775, 0.975, 1.0])


def test_anchor_stats():
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])),
               Boxes(torch.tensor([[20.0, 20, 30, 30], [50, 50, 60, 60]]))]
    gt = torch.tensor([[0.0, 0, 10, 10]] * 2 + [[20.0, 20, 30, 30]] * 2)
    labels = [torch.tensor([0, 2, 1, -1]), torch.tensor([2, 2, 2, 0])]
    with EventStorage() as storage:
        log_anchor_stats(anchors, labels, [gt, gt], num_classes=2)
        latest = {k: v for k, (v, _) in storage.latest().items()}
    # positives: anchor 0 (IoU 1), anchor 2 (IoU 1) in image 0; anchor 3 (IoU 0) in image 1
    assert latest["imbalance/anchors/num_fg"] == 3
    assert latest["imbalance/anchors/num_bg"] == 4
    assert latest["imbalance/anchors/iou_0.95"] == 2
    assert latest["imbalance/anchors/fg_bg_ratio"] == pytest.approx(0.75)


class _LoggingTrainer(TrainerBase):
    """Each iteration i logs i positives in bin 0.50 and one in bin 0.90, and 10 negatives."""

    def run_step(self):
        i = self.iter
        log_sampling_stats("stage0", torch.tensor([0.52] * i + [0.91]), i + 1, 10)


def run_logging_trainer(tmp_path, max_iter=12, period=5, with_hook=True):
    trainer = _LoggingTrainer()
    path = os.path.join(tmp_path, "metrics.json")
    hooks = [PeriodicWriter([JSONWriter(path)], period=period)]
    if with_hook:
        hooks = insert_imbalance_stats_hook(hooks)
        assert isinstance(hooks[0], ImbalanceStatsHook) and hooks[0]._period == period
    trainer.register_hooks(hooks)
    trainer.train(0, max_iter)
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_hook_carries_every_iteration_into_metrics_json(tmp_path):
    rows = run_logging_trainer(str(tmp_path))
    assert [r["iteration"] for r in rows] == [4, 9, 11]
    last = rows[-1]
    # raw keys hold only the written iteration's value (11 positives in bin 0.50 at iteration 11)
    assert last["imbalance/stage0/iou_0.50"] == 11
    # the hook's totals cover iterations 0..11
    assert last["imbalance_cum/stage0/iou_0.50"] == sum(range(12))
    assert last["imbalance_cum/stage0/iou_0.90"] == 12
    assert last["imbalance_cum/stage0/num_fg"] == sum(i + 1 for i in range(12))
    assert last["imbalance_cum/stage0/num_bg"] == 120
    assert last["imbalance_cum/stage0/num_iters"] == 12
    assert rows[0]["imbalance_cum/stage0/num_fg"] == sum(i + 1 for i in range(5))


def test_without_hook_metrics_json_misses_iterations(tmp_path):
    rows = run_logging_trainer(str(tmp_path), with_hook=False)
    assert not any(k.startswith("imbalance_cum/") for r in rows for k in r)
    assert sum(r["imbalance/stage0/num_fg"] for r in rows) < sum(i + 1 for i in range(12))


def test_insert_hook_without_writer_appends():
    hooks = insert_imbalance_stats_hook([HookBase()])
    assert isinstance(hooks[-1], ImbalanceStatsHook)


def test_histogram_counts_only_the_marked_ious():
    ious = torch.tensor([0.3, 0.52, 0.52, 0.77, 0.99, 1.0])
    marked = torch.tensor([True, True, False, True, False, True])
    assert iou_histogram(ious, weights=marked).tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]


def test_diagnostics_every_n_iterations_through_the_head():
    """MODEL.IMBALANCE_DIAGNOSTICS_PERIOD 3: the stage's keys (and Detectron2's) are put at
    iterations 0, 3 and 6 of 0..7 only, with the hand-computed counts of every logged step."""
    head = hand_built_head(**{"MODEL.IMBALANCE_DIAGNOSTICS_PERIOD": 3})
    assert head.diagnostics_period == 3
    with EventStorage() as storage:
        for it in range(8):
            storage.iter = it
            head.label_and_sample_proposals(*hand_built_batch())
        fg = storage.history("imbalance/roi_head/num_fg").values()
        d2 = storage.history("roi_head/num_fg_samples").values()
    assert fg == [(9, 0), (9, 3), (9, 6)]
    assert [i for _, i in d2] == [0, 3, 6]
    with pytest.raises(ValueError, match="MODEL.IMBALANCE_DIAGNOSTICS_PERIOD must be an integer"):
        hand_built_head(**{"MODEL.IMBALANCE_DIAGNOSTICS_PERIOD": 0})
    assert check_diagnostics_period(1) == 1


def test_anchor_stats_read_the_host_once_whatever_the_batch():
    """One host read (the final .tolist()) for 2 or 16 images and any number of positives: no
    .item(), int(), bool() or boolean indexing per image."""
    from torch.overrides import TorchFunctionMode

    reads = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "nonzero", "cpu"}

    class Count(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            boolean_index = name == "__getitem__" and isinstance(args[1], torch.Tensor) and (
                args[1].dtype == torch.bool)
            self.n += name in reads or boolean_index
            return func(*args, **kwargs)

    anchors = [Boxes(torch.rand(50, 2).repeat(1, 2) * 50 + torch.tensor([0.0, 0, 10, 10]))]
    for images in (2, 16):
        labels = [torch.randint(-1, 3, (50,)) for _ in range(images)]
        gt = [anchors[0].tensor + 1 for _ in range(images)]
        with EventStorage() as storage:
            with Count() as count:
                log_anchor_stats(anchors, labels, gt, num_classes=2)
            latest = {k: v for k, (v, _) in storage.latest().items()}
        assert count.n == 1
        assert latest["imbalance/anchors/num_fg"] == int(sum(((x >= 0) & (x < 2)).sum()
                                                             for x in labels))
