"""IoU-balanced sampling (Pang et al., Libra R-CNN, CVPR 2019)."""
import torch
from detectron2.config import CfgNode

from .base import ROI_SAMPLER_REGISTRY, Candidates, RoISampler, SampledRoIs, register_alias


def balanced_quotas(counts: torch.Tensor, num: int) -> torch.Tensor:
    """Split ``num`` draws among groups as evenly as their sizes ``counts`` allow.

    Every group gets the same share; a group with fewer members than its share gives all of them
    and the shortfall is shared again among the others (water-filling), so ``min(num,
    counts.sum())`` are drawn in total. A remainder that does not divide evenly goes one each to
    randomly chosen groups among those with members left.

    Computed on the counts' device without reading them on the host: the fill level is the
    largest L with ``sum_g min(c_g, L) <= R`` (R = the total drawn). That sum is concave in L and
    equals ``min_k (P_k + (G - k) L)`` over the counts sorted increasingly (P_k the sum of the k
    smallest), so ``L = max_k floor((R - P_k) / (G - k))``.
    """
    num_groups = counts.numel()
    if num_groups == 0 or num <= 0:
        return torch.zeros_like(counts)
    total = torch.clamp(counts.sum(), max=int(num))
    ascending = counts.sort().values
    filled = torch.cat([ascending.new_zeros(1), ascending.cumsum(0)[:-1]])  # P_k, k = 0 .. G-1
    open_groups = torch.arange(num_groups, 0, -1, device=counts.device)  # G - k
    level = torch.div(total - filled, open_groups, rounding_mode="floor").max()
    quotas = torch.minimum(counts, level)
    # The remainder (fewer than the groups with room, else L + 1 would fit): one each to as many
    # groups with room, drawn uniformly (random keys, full groups ranked last).
    keys = torch.rand(num_groups, device=counts.device)
    keys = torch.where(counts > level, keys, keys.new_full((), 2.0))
    rank = torch.empty_like(counts)
    rank[keys.argsort()] = torch.arange(num_groups, device=counts.device, dtype=counts.dtype)
    return quotas + (rank < total - quotas.sum()).to(counts.dtype)


def balanced_draw(indices: torch.Tensor, groups: torch.Tensor, num: int) -> torch.Tensor:
    """Draw ``num`` of ``indices`` (or all if fewer), evenly over the values of ``groups``
    (:func:`balanced_quotas`) and uniformly at random within each group.

    No loop over the groups: the members are put in a random order, stably sorted by group, and
    the first ``quota`` of each group are kept (one host sync, the size of the result, plus the
    one of ``torch.unique``). The result is grouped by increasing group value."""
    if len(indices) == 0 or num <= 0:
        return indices[:0]
    group_ids, group_of = torch.unique(groups, return_inverse=True)
    counts = torch.zeros(len(group_ids), dtype=torch.long, device=groups.device)
    counts.index_add_(0, group_of, torch.ones_like(group_of))
    quotas = balanced_quotas(counts, num)
    shuffled = torch.randperm(len(indices), device=indices.device)
    order = shuffled[group_of[shuffled].sort(stable=True).indices]  # by group, random within
    first_of_group = counts.cumsum(0) - counts
    rank_in_group = torch.arange(len(order), device=order.device) - first_of_group[group_of[order]]
    return indices[order[rank_in_group < quotas[group_of[order]]]]


@ROI_SAMPLER_REGISTRY.register()
class IoUBalancedSampler(RoISampler):
    """Libra R-CNN's IoU-balanced sampling: as many RoIs as Detectron2's ``random`` (at most
    ``POSITIVE_FRACTION`` of ``BATCH_SIZE_PER_IMAGE`` positive, the rest negative), but

    - negatives are drawn evenly from ``IOU_BALANCED.NUM_BINS`` (K) equal IoU bins over
      ``[0, IOU_THRESHOLDS[0])`` (Libra R-CNN Eq. 1: each bin gets N/K, sampled uniformly within),
      so that hard negatives of higher IoU, rare among RPN proposals, are not drowned out; a bin
      with too few candidates gives all it has and the rest comes from the other bins;
    - positives are instance-balanced: an equal share from each ground-truth box, filled the same
      way (or uniformly when ``INSTANCE_BALANCED_POS`` is False).
    """

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        c = cfg.MODEL.ROI_HEADS.IOU_BALANCED
        if c.NUM_BINS < 1:
            raise ValueError(
                f"MODEL.ROI_HEADS.IOU_BALANCED.NUM_BINS must be >= 1, got {c.NUM_BINS}")
        self.num_bins = int(c.NUM_BINS)
        self.instance_balanced_pos = bool(c.INSTANCE_BALANCED_POS)
        self.neg_iou_hi = float(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0])

    def iou_bins(self, ious: torch.Tensor) -> torch.Tensor:
        """Bin k = floor(IoU / hi * K) of [0, hi), clamped to the K bins."""
        return (ious / self.neg_iou_hi * self.num_bins).floor().long().clamp_(0, self.num_bins - 1)

    def __call__(self, candidates: Candidates) -> SampledRoIs:
        labels = candidates.labels
        is_pos = (labels != -1) & (labels != candidates.num_classes)
        positive = torch.nonzero(is_pos, as_tuple=True)[0]
        negative = torch.nonzero(labels == candidates.num_classes, as_tuple=True)[0]
        # the same counts as detectron2.modeling.sampling.subsample_labels
        num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)

        if self.instance_balanced_pos:
            pos = balanced_draw(positive, candidates.matched_idxs[positive], num_pos)
        else:
            pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
        neg = balanced_draw(negative, self.iou_bins(candidates.ious[negative]), num_neg)
        indices = torch.cat([pos, neg])
        return SampledRoIs(indices, torch.ones(len(indices), device=indices.device))


register_alias("iou_balanced", "IoUBalancedSampler")
