"""Imbalance diagnostics shared by every head: what the RoIs (or anchors) of each stage train on.

Per stage or loop, the IoU histogram of the sampled positives (10 bins over [0.5, 1.0], the R^3-CNN
paper's Figure 2) and the fg:bg ratio go to Detectron2's ``EventStorage``, hence to TensorBoard and
``metrics.json``. ``tools/plot_imbalance.py`` turns them into plots.

Detectron2's writers only see the latest value of each key when they run (every 20 iterations for
``metrics.json``), so the per-iteration counts of the other 19 iterations would be lost.
:class:`ImbalanceStatsHook` sums them between writes and puts running totals
(``imbalance_cum/<stage>/...``) just before the writer runs, so nothing is lost.

Each stage's statistics are counted on the device and read with one host sync per step; with
``MODEL.IMBALANCE_DIAGNOSTICS_PERIOD`` N > 1 they are computed only every N-th iteration (the
totals then cover those iterations, and ``imbalance_cum/<stage>/num_iters`` counts them).
"""
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.engine import HookBase
from detectron2.engine.hooks import PeriodicWriter
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

IOU_HIST_BINS = 10
IOU_HIST_RANGE = (0.5, 1.0)


def iou_bin_names(num_bins: int = IOU_HIST_BINS, lo: float = IOU_HIST_RANGE[0],
                  hi: float = IOU_HIST_RANGE[1]) -> List[str]:
    """Names of the histogram bins by their lower edge, e.g. ``iou_0.50`` ... ``iou_0.95``."""
    width = (hi - lo) / num_bins
    return [f"iou_{lo + k * width:.2f}" for k in range(num_bins)]


def diagnostics_due(period: int = 1) -> bool:
    """Whether the diagnostics are computed at this iteration: every ``period``-th iteration of the
    current ``EventStorage`` (``MODEL.IMBALANCE_DIAGNOSTICS_PERIOD``), always for ``period`` 1."""
    return period <= 1 or get_event_storage().iter % period == 0


def check_diagnostics_period(period: int) -> int:
    """Validate ``MODEL.IMBALANCE_DIAGNOSTICS_PERIOD`` (an integer >= 1)."""
    if int(period) != period or period < 1:
        raise ValueError(
            f"MODEL.IMBALANCE_DIAGNOSTICS_PERIOD must be an integer >= 1, got {period}")
    return int(period)


def iou_histogram(ious: torch.Tensor, num_bins: int = IOU_HIST_BINS, lo: float = IOU_HIST_RANGE[0],
                  hi: float = IOU_HIST_RANGE[1], weights: Optional[torch.Tensor] = None
                  ) -> torch.Tensor:
    """Counts of ``ious`` in ``num_bins`` equal bins over [lo, hi]; values outside, and NaN, are
    dropped.

    Bins are closed on the left and open on the right, but the last bin includes ``hi`` (IoU 1.0
    of a ground-truth box added to the proposals). ``weights`` (0/1 or booleans, the shape of
    ``ious``) counts only the marked values. Computed on the IoUs' device, with no host sync
    (no boolean indexing): an int64 tensor of ``num_bins`` counts.
    """
    ious = ious.detach().float().flatten()
    inside = (ious >= lo) & (ious <= hi)
    if weights is not None:
        inside &= weights.flatten().bool()
    # A dropped value is binned as ``lo`` (its count is 0): NaN would become index INT64_MIN.
    binned = torch.where(inside, ious, torch.full_like(ious, lo))
    idx = ((binned - lo) / (hi - lo) * num_bins).floor().clamp_(0, num_bins - 1).long()
    counts = torch.zeros(num_bins, dtype=torch.long, device=ious.device)
    return counts.index_add_(0, idx, inside.long())


def log_sampling_stats(stage: str, fg_ious: torch.Tensor, num_fg, num_bg,
                       is_fg: Optional[torch.Tensor] = None) -> Tuple[int, int]:
    """Put one training iteration's sampling statistics of one stage into the ``EventStorage``.

    Keys: ``imbalance/<stage>/<bin>`` (counts of positive IoUs, summed over the batch),
    ``imbalance/<stage>/num_fg``, ``.../num_bg`` and ``.../fg_bg_ratio``. Everything is counted
    on the device and read on the host at once: one host sync per call.

    Args:
        stage: e.g. ``"roi_head"``, ``"stage1"``, ``"loop2"``, ``"anchors"``.
        fg_ious: IoU with its matched ground truth of every sampled positive in the batch; or,
            with ``is_fg``, of every sampled RoI.
        num_fg, num_bg: sampled positives and negatives in the batch (ints or 0-dim tensors).
        is_fg: optional mask of ``fg_ious``: the positives among them.
    Returns:
        ``(num_fg, num_bg)`` as ints.
    """
    storage = get_event_storage()
    prefix = f"imbalance/{stage}"
    hist = iou_histogram(fg_ious, weights=is_fg)
    sizes = torch.stack([torch.as_tensor(n, device=hist.device).long() for n in (num_fg, num_bg)])
    values = torch.cat([hist, sizes]).tolist()  # the one host sync
    num_fg, num_bg = values[-2], values[-1]
    for name, count in zip(iou_bin_names(), values[:-2]):
        storage.put_scalar(f"{prefix}/{name}", count, smoothing_hint=False)
    storage.put_scalar(f"{prefix}/num_fg", num_fg, smoothing_hint=False)
    storage.put_scalar(f"{prefix}/num_bg", num_bg, smoothing_hint=False)
    storage.put_scalar(f"{prefix}/fg_bg_ratio", num_fg / max(num_bg, 1), smoothing_hint=False)
    return num_fg, num_bg


def log_anchor_stats(anchors: Sequence[Boxes], gt_labels: Sequence[torch.Tensor],
                     matched_gt_boxes: Sequence[torch.Tensor], num_classes: int,
                     stage: str = "anchors", period: int = 1) -> None:
    """Dense-head diagnostics: the positive:negative anchor ratio and the positives' IoU histogram
    of one iteration, as :func:`log_sampling_stats` under ``imbalance/<stage>/``; only every
    ``period``-th iteration (:func:`diagnostics_due`). One host sync, whatever the number of
    images, anchors or objects: the IoU of every anchor with its matched box is computed and the
    positives are counted by a mask, not gathered.

    Args:
        anchors: per feature level, the anchors of one image (shared by the batch), as given to
            ``RetinaNet.losses``.
        gt_labels: per image, (R,) labels from ``RetinaNet.label_anchors``: class in [0, K) for
            positives, K for negatives, -1 ignored.
        matched_gt_boxes: per image, (R, 4) matched ground-truth boxes from ``label_anchors``.
        num_classes: K.
        period: ``MODEL.IMBALANCE_DIAGNOSTICS_PERIOD``.
    """
    if not diagnostics_due(period):
        return
    all_anchors = Boxes.cat(list(anchors)) if len(anchors) > 1 else anchors[0]
    labels = torch.stack(list(gt_labels))  # (N, R)
    pos = (labels >= 0) & (labels != num_classes)
    ious = torch.stack([
        matched_pairwise_iou(all_anchors, Boxes(getattr(g, "tensor", g))) for g in matched_gt_boxes
    ])
    log_sampling_stats(stage, ious, pos.sum(), (labels == num_classes).sum(), is_fg=pos)


# The per-iteration keys of log_sampling_stats that are counts (summed by ImbalanceStatsHook).
_COUNT_NAMES = tuple(iou_bin_names()) + ("num_fg", "num_bg")


class ImbalanceStatsHook(HookBase):
    """Accumulates the per-iteration counts of :func:`log_sampling_stats` so they reach
    ``metrics.json`` and TensorBoard whole.

    After every step it adds this iteration's ``imbalance/<stage>/<count>`` values (IoU-bin counts,
    ``num_fg``, ``num_bg``) to running totals. On the iterations a ``PeriodicWriter`` of the same
    ``period`` writes, it puts the totals since the start of training into the storage:
    ``imbalance_cum/<stage>/<count>``, ``imbalance_cum/<stage>/num_iters`` (iterations that logged
    the stage) and ``imbalance_cum/<stage>/fg_bg_ratio`` (of the totals). Differences of two writes
    give the counts of the iterations between them. With several processes the totals are summed
    over all of them.

    Register it before the ``PeriodicWriter`` (writers run in hook order; see
    :func:`insert_imbalance_stats_hook`) and on every process.
    """

    def __init__(self, period: int = 20):
        """
        Args:
            period: the ``PeriodicWriter``'s period (``DefaultTrainer`` uses 20).
        """
        self._period = int(period)
        self._totals: Dict[str, float] = defaultdict(float)

    def after_step(self) -> None:
        storage = self.trainer.storage
        it = storage.iter
        for key, history in storage.histories().items():
            if not key.startswith("imbalance/"):
                continue
            stage, _, name = key[len("imbalance/"):].rpartition("/")
            if name not in _COUNT_NAMES:
                continue
            # every value put at this iteration (a stage may be logged more than once per step)
            values = history.values()
            k = len(values) - 1
            while k >= 0 and values[k][1] == it:
                self._totals[f"{stage}/{name}"] += float(values[k][0])
                if name == "num_fg":
                    self._totals[f"{stage}/num_iters"] += 1
                k -= 1
        if (it + 1) % self._period == 0 or it == self.trainer.max_iter - 1:
            self.put_totals()

    def put_totals(self) -> Dict[str, float]:
        """Put the running totals (summed over processes) into the storage; return them."""
        totals = dict(self._totals)
        if comm.get_world_size() > 1:
            summed: Dict[str, float] = defaultdict(float)
            for part in comm.all_gather(totals):
                for k, v in part.items():
                    summed[k] += v
            totals = dict(summed)
        storage = self.trainer.storage
        for key, value in sorted(totals.items()):
            storage.put_scalar(f"imbalance_cum/{key}", value, smoothing_hint=False)
        for stage in {k.rpartition("/")[0] for k in totals}:
            fg, bg = totals.get(f"{stage}/num_fg", 0.0), totals.get(f"{stage}/num_bg", 0.0)
            storage.put_scalar(f"imbalance_cum/{stage}/fg_bg_ratio", fg / max(bg, 1.0),
                               smoothing_hint=False)
        return totals


def insert_imbalance_stats_hook(hooks: List[HookBase],
                                period: Optional[int] = None) -> List[HookBase]:
    """Insert an :class:`ImbalanceStatsHook` just before the first ``PeriodicWriter`` of ``hooks``
    (with its period), or at the end where there is none (non-main processes). In a
    ``DefaultTrainer`` subclass: ``return insert_imbalance_stats_hook(super().build_hooks())``."""
    for i, hook in enumerate(hooks):
        if isinstance(hook, PeriodicWriter):
            hooks.insert(i, ImbalanceStatsHook(period or hook._period))
            return hooks
    hooks.append(ImbalanceStatsHook(period or 20))
    return hooks
