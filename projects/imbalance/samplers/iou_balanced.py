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
    """
    quotas = torch.zeros_like(counts)
    remaining = min(int(num), int(counts.sum()))
    while remaining > 0:
        room = counts - quotas
        open_groups = torch.nonzero(room > 0, as_tuple=True)[0]
        share = remaining // len(open_groups)
        if share == 0:
            pick = open_groups[torch.randperm(len(open_groups), device=counts.device)[:remaining]]
            quotas[pick] += 1
            break
        add = torch.clamp(room[open_groups], max=share)
        quotas[open_groups] += add
        remaining -= int(add.sum())
    return quotas


def balanced_draw(indices: torch.Tensor, groups: torch.Tensor, num: int) -> torch.Tensor:
    """Draw ``num`` of ``indices`` (or all if fewer), evenly over the values of ``groups``
    (:func:`balanced_quotas`) and uniformly at random within each group."""
    if len(indices) == 0 or num <= 0:
        return indices[:0]
    group_ids, group_of = torch.unique(groups, return_inverse=True)
    counts = torch.bincount(group_of, minlength=len(group_ids))
    quotas = balanced_quotas(counts, num)
    chosen = []
    for g in range(len(group_ids)):
        q = int(quotas[g])
        if q == 0:
            continue
        members = indices[group_of == g]
        chosen.append(members[torch.randperm(len(members), device=members.device)[:q]])
    return torch.cat(chosen) if chosen else indices[:0]


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
