"""Online hard example mining (Shrivastava, Gupta and Girshick, CVPR 2016), in the OHEM paper's
version and in mmdetection's (``mmdet/models/task_modules/samplers/ohem_sampler.py``)."""
import torch
from detectron2.config import CfgNode
from detectron2.layers import nms

from .base import ROI_SAMPLER_REGISTRY, Candidates, RoISampler, SampledRoIs, register_alias

VARIANTS = ("paper", "mmdetection")


@ROI_SAMPLER_REGISTRY.register()
class OHEMSampler(RoISampler):
    """OHEM: the head is evaluated without gradient on every candidate RoI, and the hardest are
    kept. ``OHEM.VARIANT`` chooses how:

    - ``"paper"`` (default): the ``BATCH_SIZE_PER_IMAGE`` of highest loss (classification + box
      regression), positive or negative alike, with no foreground fraction (OHEM paper, Sec. 4.1;
      Oksuz et al., Table 3: "chooses pos. & neg. with max loss"). An NMS among the candidates,
      with their loss as score, first removes RoIs that overlap a harder one by more than
      ``OHEM.NMS_THRESH`` (the paper's 0.7), so that one object does not fill the batch. As the
      background becomes easy, the hardest RoIs are more and more often foreground.
    - ``"mmdetection"``: mmdetection's ``OHEMSampler``: as ``random``, at most
      ``POSITIVE_FRACTION * BATCH_SIZE_PER_IMAGE`` positives and the rest negatives, but each
      part the hardest by classification loss (``loss_cls``) instead of at random; no NMS.

    Candidates labelled -1 (ignored by the matcher) are never kept. Foreground comes first. Of
    equal losses the lower index is kept first (stable sorts; the "paper" variant's NMS orders
    ties as torchvision's does).
    """

    needs_predictions = True

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        c = cfg.MODEL.ROI_HEADS.OHEM
        if c.VARIANT not in VARIANTS:
            raise ValueError(
                f"MODEL.ROI_HEADS.OHEM.VARIANT must be one of {VARIANTS}, got {c.VARIANT!r}")
        self.variant = c.VARIANT
        self.nms_thresh = float(c.NMS_THRESH)

    def __call__(self, candidates: Candidates) -> SampledRoIs:
        if self.variant == "paper":
            keep = self.top_by_total_loss(candidates)
        else:
            keep = self.top_by_cls_loss_with_cap(candidates)
        # foreground first, as Detectron2's sampling returns them
        is_fg = candidates.labels[keep] != candidates.num_classes
        keep = torch.cat([keep[is_fg], keep[~is_fg]])
        return SampledRoIs(keep, torch.ones(len(keep), device=keep.device))

    def top_by_total_loss(self, candidates: Candidates) -> torch.Tensor:
        """The OHEM paper's: top B by ``ce + box`` after an NMS by loss."""
        valid = torch.nonzero(candidates.labels >= 0, as_tuple=True)[0]
        _, ce, box = candidates.predictions()
        losses = (ce + box)[valid].float()
        if self.nms_thresh > 0 and candidates.boxes is not None:
            # nms returns the kept indices by decreasing score, i.e. loss
            order = nms(candidates.boxes[valid].float(), losses, self.nms_thresh)
        else:
            order = torch.sort(losses, descending=True, stable=True).indices
        return valid[order[: self.batch_size_per_image]]

    def top_by_cls_loss_with_cap(self, candidates: Candidates) -> torch.Tensor:
        """mmdetection's: the hardest positives by ``ce``, at most ``POSITIVE_FRACTION * B``, then
        the hardest ``B - #positives`` negatives by ``ce`` (the counts of ``subsample_labels``)."""
        labels, k = candidates.labels, candidates.num_classes
        positive = torch.nonzero((labels >= 0) & (labels != k), as_tuple=True)[0]
        negative = torch.nonzero(labels == k, as_tuple=True)[0]
        num_pos = min(len(positive), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(len(negative), self.batch_size_per_image - num_pos)
        _, ce, _ = candidates.predictions()
        ce = ce.float()
        pos = positive[torch.sort(ce[positive], descending=True, stable=True).indices[:num_pos]]
        neg = negative[torch.sort(ce[negative], descending=True, stable=True).indices[:num_neg]]
        return torch.cat([pos, neg])


register_alias("ohem", "OHEMSampler")
