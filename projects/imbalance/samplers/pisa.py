"""Prime Sample Attention (Cao, Chen, Loy and Lin, "Prime Sample Attention in Object Detection",
CVPR 2020) for Fast R-CNN heads, as published in the authors' code (mmdetection:
``configs/pisa/faster-rcnn_r50_fpn_pisa_1x_coco.py``, ``ScoreHLRSampler``,
``mmdet/models/losses/pisa_loss.py`` ``isr_p`` and ``carl_loss``, ``PISARoIHead``).

PISA has three parts; all use the mapping of a hierarchical local rank ``r`` (HLR, 0 = most
important) to a weight (Oksuz et al., review Eqs. 5-6):

    r_bar = (N_max - r) / N_max                    (Eq. 5)
    w     = ((1 - beta) * r_bar + beta) ** gamma    (Eq. 6; mmdetection's bias and k)

- **ISR-N** (the sampler, :class:`PISASampler`): the baseline's ``BATCH_SIZE_PER_IMAGE`` and
  ``POSITIVE_FRACTION``; positives drawn at random as Detectron2's; negatives chosen by their
  *score-HLR*: the head, without gradient, scores every negative; those whose highest foreground
  score exceeds ``NEG_SCORE_THRESH`` are grouped by an NMS of their regressed boxes (each kept box
  and the boxes it suppresses, :func:`nms_groups`), ranked by score within their group, then all
  group-rank-0 ones by score, then all rank-1 ones, ... (:func:`score_hierarchical_rank`). The
  first ones are trained on (the rest at random if too few score above the threshold), weighted
  by Eq. 6 with ``N_max = max(number of negatives wanted, number ranked)``, gamma 0.5, beta 0, and
  renormalised so their classification loss keeps its total.
- **ISR-P** (the predictor, :func:`isr_p_weights`): after the head's forward, each positive's
  *regressed* box is compared with its ground truth; positives are ranked by IoU within their
  ground truth, then within their class all local-rank-0 ones by IoU, then all rank-1 ones, ...
  (IoU-HLR, :func:`hierarchical_local_rank`), with ``N_max`` the largest number of positives of
  one class; their classification loss is weighted by Eq. 6 (gamma 2, beta 0) and renormalised so
  its total is unchanged. The box loss is not weighted. The ranks, ``N_max`` and the
  renormalisation are over all images of one process's batch (the predictor's ``losses`` sees
  them together), as mmdetection's ``isr_p`` works over one GPU's batch (``PISARoIHead`` passes it
  the RoIs of all images of the GPU): with several processes each ranks its own images only, so
  the weights depend on the images per process (``SOLVER.IMS_PER_BATCH`` / number of GPUs), as
  in the authors' code, not on the total batch.
- **CARL** (:func:`carl_loss`): a second regression term, each positive's box loss times
  ``c_i = ((1 - b) * p_i + b) ** k`` of its class score ``p_i`` (k 1, b 0.2), the ``c_i``
  normalised to mean 1, with the gradient flowing into the score.

The weights take effect with ``MODEL.ROI_BOX_HEAD.PREDICTOR: PISAFastRCNNOutputLayers``
(:mod:`imbalance.modeling.weighted_fast_rcnn`), which applies ISR-N's weights, ISR-P and CARL.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling.sampling import subsample_labels
from torchvision.ops import box_iou, nms

from .base import ROI_SAMPLER_REGISTRY, Candidates, RoISampler, SampledRoIs, register_alias


def rank_in_groups(order: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Position of each element among the elements of its group, in the priority ``order``.

    Args:
        order: a permutation of ``range(N)``, most important element first.
        groups: (N,) group id of each element.
    Returns:
        (N,) long: 0 for the first element of each group in ``order``, 1 for the second, ...
    """
    n = len(order)
    pos = torch.arange(n, device=groups.device)
    if n == 0:
        return pos
    by_group = order[torch.sort(groups[order], stable=True).indices]
    sorted_groups = groups[by_group]
    first = torch.ones(n, dtype=torch.bool, device=groups.device)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    run_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), dim=0).values
    rank = torch.empty_like(pos)
    rank[by_group] = pos - run_start
    return rank


def two_step_order(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """PISA's two-step ranking: local rank by ``values`` (descending) within each group, then all
    local-rank-0 elements by value, then all local-rank-1 elements, ... Returns that order.
    Equal values keep their index order (stable sorts), so every device ranks ties alike."""
    by_value = torch.sort(values, descending=True, stable=True).indices
    local = rank_in_groups(by_value, groups)
    return by_value[torch.sort(local[by_value], stable=True).indices]


def hierarchical_local_rank(ious: torch.Tensor, instances: torch.Tensor,
                            classes: torch.Tensor) -> torch.Tensor:
    """IoU-HLR of positives within their class, 0 = most important (isr_p's two steps).

    Each positive is first ranked among the positives of its ground-truth box by IoU (local
    rank). Within a class, all local-rank-0 positives come first, by IoU, then all local-rank-1
    ones, and so on: the best box of every object outranks the second best of any object.
    """
    return rank_in_groups(two_step_order(ious, instances), classes)


def prime_sample_weights(rank: torch.Tensor, n_max: int, gamma: float, beta: float,
                         scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eqs. 5-6 of Oksuz et al.: ``r_bar = (N_max - r) / N_max`` (times ``scale``, a prior weight,
    as mmdetection multiplies the label weight in before the power), then
    ``w = ((1 - beta) * r_bar + beta) ** gamma``."""
    r_bar = (n_max - rank.float()) / max(n_max, 1)  # Eq. 5
    if scale is not None:
        r_bar = r_bar * scale
    return ((1.0 - beta) * r_bar + beta) ** gamma  # Eq. 6


def renormalised(weights: torch.Tensor, losses: torch.Tensor,
                 prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``weights`` scaled so that ``sum(weights * losses) == sum(prior * losses)`` (prior 1):
    PISA re-weights without changing the loss total (ScoreHLRSampler's and isr_p's
    ``norm_ratio``)."""
    prior_total = losses.sum() if prior is None else (prior * losses).sum()
    new_total = (weights * losses).sum()
    if not bool(new_total > 0):
        return weights
    return weights * (prior_total / new_total)


def nms_groups(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Groups of a greedy NMS (mmcv's ``nms_match``, used by ScoreHLRSampler): by decreasing score,
    each box not yet taken starts a group and takes every later untaken box whose IoU with it is
    at least ``iou_thresh``. Returns (N,) the group id of each box (the index of its kept box).
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    # torchvision suppresses IoU > t; nms_match suppresses IoU >= t: the float32 just below t
    below = torch.nextafter(torch.tensor(iou_thresh, dtype=torch.float32),
                            torch.tensor(-1.0)).item()
    keep = nms(boxes, scores.float(), below)  # kept boxes, in NMS's order (decreasing score)
    # A suppressed box belongs to the first kept box, in that order, that overlaps it and scores
    # at least as high: that is the box that suppressed it (an earlier such box would have, and
    # it did not keep it), whatever order NMS gave to equal scores.
    # (Every suppressed box has one; a kept box is its own group's first.)
    takes = (box_iou(boxes[keep], boxes) > below) & (scores[keep][:, None] >= scores[None, :])
    group = keep[takes.int().argmax(dim=0)]
    group[keep] = keep
    return group


def score_hierarchical_rank(scores: torch.Tensor, boxes: torch.Tensor,
                            iou_thresh: float) -> torch.Tensor:
    """Score-HLR of negatives (ScoreHLRSampler): NMS groups of the regressed ``boxes``, ranks by
    ``scores`` within each group, then all rank-0 by score, rank-1 by score, ... Returns the
    order (most important first)."""
    return two_step_order(scores, nms_groups(boxes, scores, iou_thresh))


@ROI_SAMPLER_REGISTRY.register()
class PISASampler(RoISampler):
    """PISA's sampler (ISR-N, mmdetection's ``ScoreHLRSampler``); see the module docstring.

    Positives: as ``random`` (:func:`detectron2.modeling.sampling.subsample_labels`; weight 1;
    ISR-P re-weights them in the predictor). Negatives: the first ``BATCH_SIZE_PER_IMAGE - #pos``
    by score-HLR, weighted by Eq. 6 and renormalised. Needs the head's class logits and regressed
    boxes on the negatives (``Candidates.head``), one pass without gradient; no losses.
    """

    needs_predictions = True
    produces_weights = True
    # The predictor that applies ISR-N's weights, ISR-P and CARL says so with this attribute.
    predictor_flag = "applies_pisa"
    predictor_name = "PISAFastRCNNOutputLayers"

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        c = cfg.MODEL.ROI_HEADS.PISA
        self.neg_gamma, self.neg_beta = float(c.NEG_GAMMA), float(c.NEG_BETA)
        self.score_thresh = float(c.NEG_SCORE_THRESH)
        self.nms_thresh = float(c.NEG_NMS_THRESH)

    def head_candidates(self, candidates: Candidates) -> torch.Tensor:
        """The negatives, if any is to be sampled (see ``RoISampler.head_candidates``)."""
        labels, k = candidates.labels, candidates.num_classes
        num_pos = int(((labels >= 0) & (labels != k)).sum())
        room = self.batch_size_per_image - min(num_pos, int(self.batch_size_per_image *
                                                             self.positive_fraction))
        negatives = torch.nonzero(labels == k, as_tuple=True)[0]
        return negatives if room > 0 else negatives[:0]

    def __call__(self, candidates: Candidates) -> SampledRoIs:
        k = candidates.num_classes
        pos, _ = subsample_labels(candidates.labels, self.batch_size_per_image,
                                  self.positive_fraction, k)
        negatives = torch.nonzero(candidates.labels == k, as_tuple=True)[0]
        num_neg = min(len(negatives), self.batch_size_per_image - len(pos))
        neg, neg_weights = self.sample_negatives(candidates, negatives, num_neg)
        weights = torch.cat([torch.ones(len(pos), device=pos.device), neg_weights.float()])
        return SampledRoIs(torch.cat([pos, neg]), weights)

    def sample_negatives(self, candidates: Candidates, negatives: torch.Tensor,
                         num: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """ISR-N: ``num`` of the ``negatives`` (candidate indices) and their loss weights."""
        ones = torch.ones(num, device=negatives.device)
        if num <= 0:
            return negatives[:0], ones
        logits, boxes = candidates.head(negatives)
        log_p = F.log_softmax(logits.float(), dim=1)
        ce = -log_p[:, -1]  # each negative's classification loss (background target)
        max_score, max_class = log_p[:, :-1].exp().max(dim=1)
        valid = torch.nonzero(max_score > self.score_thresh, as_tuple=True)[0]
        if len(valid) == 0:
            pick = torch.randperm(len(negatives), device=negatives.device)[:num]
            return negatives[pick], ones
        boxes = boxes.view(len(negatives), -1, 4)
        boxes = boxes[valid, max_class[valid] if boxes.shape[1] > 1 else 0]
        order = score_hierarchical_rank(max_score[valid], boxes, self.nms_thresh)
        num_hlr = min(len(valid), num)
        pick = valid[order[:num_hlr]]
        n_max = max(num, len(valid))
        rank = torch.arange(num, device=negatives.device).clamp(max=num_hlr - 1)
        if num > num_hlr:  # too few above the threshold: the rest at random, at the lowest weight
            invalid = torch.nonzero(max_score <= self.score_thresh, as_tuple=True)[0]
            fill = invalid[torch.randperm(len(invalid), device=invalid.device)[:num - num_hlr]]
            pick = torch.cat([pick, fill])
        weights = prime_sample_weights(rank, n_max, self.neg_gamma, self.neg_beta)
        return negatives[pick], renormalised(weights, ce[pick])


register_alias("pisa", "PISASampler")


def isr_p_weights(ious: torch.Tensor, instances: torch.Tensor, classes: torch.Tensor,
                  ce: torch.Tensor, gamma: float, beta: float,
                  prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ISR-P (isr_p): the classification weights of the batch's positives (all images of one
    process, as isr_p's over one GPU's batch; see the module docstring).

    Args:
        ious: (P,) IoU of each positive's regressed box with its ground truth.
        instances: (P,) id of its ground-truth box, unique over the batch.
        classes: (P,) its class.
        ce: (P,) its classification loss (for the renormalisation; no gradient needed).
        gamma, beta: Eq. 6 (mmdetection: isr k 2, bias 0).
        prior: (P,) weights before ISR-P (1 if None), multiplied into r_bar.
    Returns:
        (P,) weights ``w_i`` with ``sum(w_i * ce_i) == sum(prior_i * ce_i)``.
    """
    rank = hierarchical_local_rank(ious, instances, classes)
    n_max = int(torch.bincount(classes).max()) if len(classes) else 1
    weights = prime_sample_weights(rank, n_max, gamma, beta, scale=prior)
    return renormalised(weights, ce, prior)


def carl_loss(pos_scores: torch.Tensor, pos_box_losses: torch.Tensor, num_rois: int,
              k: float, bias: float) -> torch.Tensor:
    """CARL (carl_loss): ``sum_i c_i * L_reg,i / R`` over the positives, with
    ``c_i = ((1 - b) * p_i + b) ** k`` scaled so that ``sum_i c_i`` is the number of positives.

    Args:
        pos_scores: (P,) softmax probability of each positive's class, with gradient.
        pos_box_losses: (P,) its box-regression loss (summed over the 4 coordinates).
        num_rois: R, the number of RoIs the box loss is averaged over.
        k, bias: mmdetection's carl k 1, bias 0.2.
    """
    c = (bias + (1.0 - bias) * pos_scores) ** k
    c = c * (len(c) / c.sum().clamp(min=1e-12))
    return (c * pos_box_losses).sum() / max(num_rois, 1)
