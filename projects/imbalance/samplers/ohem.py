"""Online hard example mining (Shrivastava, Gupta and Girshick, CVPR 2016)."""
import torch
from detectron2.config import CfgNode
from detectron2.layers import nms

from .base import ROI_SAMPLER_REGISTRY, Candidates, RoISampler, SampledRoIs, register_alias


@ROI_SAMPLER_REGISTRY.register()
class OHEMSampler(RoISampler):
    """OHEM: the head is evaluated without gradient on every candidate RoI, and the
    ``BATCH_SIZE_PER_IMAGE`` of highest loss (classification + box regression) are kept, positive
    or negative alike, with no fixed foreground fraction (OHEM paper, Sec. 4.1; Oksuz et al.,
    Table 3: "chooses pos. & neg. with max loss"). Optionally an NMS among the candidates, with
    their loss as score, first removes RoIs that overlap a harder one by more than
    ``OHEM.NMS_THRESH`` (the paper's 0.7), so that one object does not fill the batch.

    Candidates labelled -1 (ignored by the matcher) are never kept.
    """

    needs_predictions = True

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        self.nms_thresh = float(cfg.MODEL.ROI_HEADS.OHEM.NMS_THRESH)

    def __call__(self, candidates: Candidates) -> SampledRoIs:
        labels = candidates.labels
        valid = torch.nonzero(labels >= 0, as_tuple=True)[0]
        _, losses = candidates.predictions()
        losses = losses[valid].float()
        if self.nms_thresh > 0 and candidates.boxes is not None:
            # nms returns the kept indices by decreasing score, i.e. loss
            order = nms(candidates.boxes[valid].float(), losses, self.nms_thresh)
        else:
            order = torch.sort(losses, descending=True, stable=True).indices
        keep = valid[order[: self.batch_size_per_image]]
        # foreground first, as Detectron2's sampling returns them
        is_fg = labels[keep] != candidates.num_classes
        keep = torch.cat([keep[is_fg], keep[~is_fg]])
        return SampledRoIs(keep, torch.ones(len(keep), device=keep.device))


register_alias("ohem", "OHEMSampler")
