"""Prime-sample attention, importance-based sample reweighting (Cao et al., "Prime Sample
Attention in Object Detection", CVPR 2020), as summarised by Oksuz et al. (review, Sec. 4.1.2)."""
import torch
from detectron2.config import CfgNode

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


def hierarchical_local_rank(ious: torch.Tensor, instances: torch.Tensor,
                            classes: torch.Tensor) -> torch.Tensor:
    """IoU-hierarchical local rank (HLR) of positives within their class, 0 = most important.

    Each positive is first ranked among the RoIs of its ground-truth box by IoU (local rank).
    Within a class, all local-rank-0 RoIs come first, by IoU, then all local-rank-1 RoIs, and so
    on: the best RoI of every object outranks the second best of any object.
    """
    by_iou = torch.sort(ious, descending=True, stable=True).indices
    local = rank_in_groups(by_iou, instances)
    order = by_iou[torch.sort(local[by_iou], stable=True).indices]
    return rank_in_groups(order, classes)


def prime_sample_weights(rank: torch.Tensor, n_max: int, gamma: float, beta: float) -> torch.Tensor:
    """Eqs. 5-6 of Oksuz et al.: ``r_bar = (N_max - r) / N_max``,
    ``w = ((1 - beta) * r_bar + beta) ** gamma``."""
    r_bar = (n_max - rank.float()) / max(n_max, 1)  # Eq. 5
    return ((1.0 - beta) * r_bar + beta) ** gamma  # Eq. 6


@ROI_SAMPLER_REGISTRY.register()
class PISASampler(RoISampler):
    """PISA's importance-based sample reweighting (ISR): every candidate is kept (none discarded,
    soft sampling), with a loss weight from its rank among the candidates of its class.

    - Positives are ranked by IoU-hierarchical local rank (:func:`hierarchical_local_rank`)
      within their ground-truth class.
    - Negatives are ranked by their highest foreground score, within the class of that score
      (a negative with a high foreground score is a likely false positive).

    With ``r`` the rank and ``N_max`` the largest number of candidates of any class (positive
    classes and the negatives' classes alike; per image here, since samplers see one image),
    ``w = ((1 - beta) * r_bar + beta) ** gamma`` with ``r_bar = (N_max - r) / N_max`` (Oksuz et
    al., Eqs. 5-6), with separate ``gamma``, ``beta`` for positives and negatives.

    Simplifications: the negatives' rank is by score only (PISA groups them by NMS first), and
    PISA's re-normalisation of the weighted loss and its classification-aware regression loss
    (CARL) are not applied. The weights take effect only with a box predictor that honours
    ``loss_weights`` (``WeightedFastRCNNOutputLayers``).
    """

    needs_predictions = True
    produces_weights = True

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        c = cfg.MODEL.ROI_HEADS.PISA
        self.pos_gamma, self.pos_beta = float(c.POS_GAMMA), float(c.POS_BETA)
        self.neg_gamma, self.neg_beta = float(c.NEG_GAMMA), float(c.NEG_BETA)

    def __call__(self, candidates: Candidates) -> SampledRoIs:
        labels, k = candidates.labels, candidates.num_classes
        pos = torch.nonzero((labels >= 0) & (labels != k), as_tuple=True)[0]
        neg = torch.nonzero(labels == k, as_tuple=True)[0]

        pos_rank = hierarchical_local_rank(candidates.ious[pos], candidates.matched_idxs[pos],
                                           labels[pos])
        if len(neg):
            scores, _ = candidates.predictions()
            fg_score, fg_class = scores[neg, :k].max(dim=1)
            neg_rank = rank_in_groups(torch.sort(fg_score, descending=True, stable=True).indices,
                                      fg_class)
        else:
            neg_rank, fg_class = pos_rank[:0], labels[:0]

        sizes = [torch.bincount(labels[pos]), torch.bincount(fg_class)]
        n_max = max([int(s.max()) for s in sizes if s.numel()] + [1])
        weights = torch.cat([
            prime_sample_weights(pos_rank, n_max, self.pos_gamma, self.pos_beta),
            prime_sample_weights(neg_rank, n_max, self.neg_gamma, self.neg_beta),
        ])
        return SampledRoIs(torch.cat([pos, neg]), weights)


register_alias("pisa", "PISASampler")
