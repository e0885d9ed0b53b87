"""RetinaNet with a choice of losses for the imbalances of dense heads: focal loss (Lin et al.,
Detectron2's) or GHM-C, RetinaNet's box loss or GHM-R (Li et al.), plus anchor diagnostics."""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes

from ..diagnostics import check_diagnostics_period, log_anchor_stats
from ..losses.ghm import GHMCLoss, GHMRLoss

CLS_LOSSES = ("focal", "ghmc")
BBOX_LOSSES = ("retinanet", "ghmr")


def split_by_level(x: torch.Tensor, sizes: List[int], per_level: bool) -> List[torch.Tensor]:
    """``x`` (N, R, ...) as one (N, R, ...) piece, or as one piece per FPN level (``sizes`` are
    the levels' anchor counts, summing to R) when ``per_level``."""
    return list(x.split(sizes, dim=1)) if per_level else [x]


class DenseImbalanceMixin:
    """Mix in before ``RetinaNet`` (or a subclass that calls ``self.losses``, e.g.
    ``IoUAwareRetinaNet``) to choose the classification loss by ``MODEL.RETINANET.CLS_LOSS`` and
    the box loss by ``MODEL.RETINANET.BBOX_LOSS``.

    Redefines ``losses`` only. "focal" and "retinanet" return RetinaNet's losses unchanged.
    "ghmc" replaces ``loss_cls`` by GHM-C over the same valid anchors and one-hot targets; "ghmr"
    replaces ``loss_box_reg`` by GHM-R over the 4 deltas of the positive anchors (targets from
    RetinaNet's ``box2box_transform``). GHM normalises itself (:mod:`imbalance.losses.ghm`), so
    RetinaNet's EMA of the positive count is not applied to it. By default
    (``GHMC.PER_LEVEL`` / ``GHMR.PER_LEVEL`` True) the density is counted per FPN level, over
    that level's anchors of all images, and the levels' losses are summed, as the authors' code
    does: its RetinaNet head computes the loss level by level with one GHM object, so one moving
    average is updated once per level, in level order (GHM_Detection ``retina_head.py``
    ``loss_single``; :mod:`imbalance.losses.ghm`). ``PER_LEVEL: False`` counts it over all
    anchors of the batch at once, as the paper's formula reads. Either way, logs the
    positive:negative anchor ratio and the positives' IoU histogram under
    ``imbalance/anchors/`` (:func:`imbalance.diagnostics.log_anchor_stats`).
    """

    @configurable
    def __init__(self, *, cls_loss: str = "focal", ghmc: Optional[GHMCLoss] = None,
                 ghmc_per_level: bool = True, bbox_loss: str = "retinanet",
                 ghmr: Optional[GHMRLoss] = None, ghmr_per_level: bool = True,
                 diagnostics_period: int = 1, **kwargs):
        """
        Args:
            cls_loss: "focal" or "ghmc" (then ``ghmc`` is the loss, default ``GHMCLoss()``).
            ghmc_per_level: count GHM-C's density per FPN level (the authors' code), else over
                all anchors at once (the paper's formula).
            bbox_loss: "retinanet" (RetinaNet's ``box_reg_loss_type``) or "ghmr" (then ``ghmr``
                is the loss, default ``GHMRLoss()``).
            ghmr_per_level: the same for GHM-R.
            diagnostics_period: log the anchor diagnostics every that many iterations.
            kwargs: the arguments of the RetinaNet class mixed with.
        """
        super().__init__(**kwargs)
        if cls_loss not in CLS_LOSSES:
            raise ValueError(
                f"MODEL.RETINANET.CLS_LOSS must be one of {CLS_LOSSES}, got {cls_loss!r}")
        if bbox_loss not in BBOX_LOSSES:
            raise ValueError(
                f"MODEL.RETINANET.BBOX_LOSS must be one of {BBOX_LOSSES}, got {bbox_loss!r}")
        self.cls_loss, self.bbox_loss = cls_loss, bbox_loss
        self.ghmc = (ghmc or GHMCLoss()) if cls_loss == "ghmc" else None
        self.ghmr = (ghmr or GHMRLoss()) if bbox_loss == "ghmr" else None
        self.ghmc_per_level, self.ghmr_per_level = bool(ghmc_per_level), bool(ghmr_per_level)
        self.diagnostics_period = check_diagnostics_period(diagnostics_period)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        ret = super().from_config(cfg)
        c, r = cfg.MODEL.RETINANET.GHMC, cfg.MODEL.RETINANET.GHMR
        ret.update(
            cls_loss=cfg.MODEL.RETINANET.CLS_LOSS,
            ghmc=GHMCLoss(c.BINS, c.MOMENTUM),
            ghmc_per_level=c.PER_LEVEL,
            bbox_loss=cfg.MODEL.RETINANET.BBOX_LOSS,
            ghmr=GHMRLoss(r.MU, r.BINS, r.MOMENTUM, r.LOSS_WEIGHT),
            ghmr_per_level=r.PER_LEVEL,
            diagnostics_period=cfg.MODEL.get("IMBALANCE_DIAGNOSTICS_PERIOD", 1),
        )
        return ret

    def losses(self, anchors: List[Boxes], pred_logits: List[torch.Tensor],
               gt_labels: List[torch.Tensor], pred_anchor_deltas: List[torch.Tensor],
               gt_boxes: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Same arguments and keys as ``RetinaNet.losses``; see the class docstring."""
        log_anchor_stats(anchors, gt_labels, gt_boxes, self.num_classes,
                         period=self.diagnostics_period)
        losses = super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        labels = torch.stack(gt_labels)  # (N, R)
        sizes = [x.shape[1] for x in pred_logits]
        if self.cls_loss == "ghmc":
            logits = cat(pred_logits, dim=1)
            total = logits.sum() * 0.0
            for lv_logits, lv_labels in zip(split_by_level(logits, sizes, self.ghmc_per_level),
                                            split_by_level(labels, sizes, self.ghmc_per_level)):
                valid = lv_labels >= 0
                # no target for the last (background) column, as in RetinaNet.losses
                targets = F.one_hot(lv_labels[valid], num_classes=self.num_classes + 1)[:, :-1]
                total = total + self.ghmc(lv_logits[valid], targets.to(logits.dtype))
            losses["loss_cls"] = total
        if self.bbox_loss == "ghmr":
            deltas = cat(pred_anchor_deltas, dim=1)
            all_anchors = type(anchors[0]).cat(anchors).tensor
            target_deltas = torch.stack(
                [self.box2box_transform.get_deltas(all_anchors, g) for g in gt_boxes])
            pos = (labels >= 0) & (labels != self.num_classes)
            total = deltas.sum() * 0.0
            for lv_pred, lv_target, lv_pos in zip(
                    split_by_level(deltas, sizes, self.ghmr_per_level),
                    split_by_level(target_deltas, sizes, self.ghmr_per_level),
                    split_by_level(pos, sizes, self.ghmr_per_level)):
                total = total + self.ghmr(lv_pred[lv_pos], lv_target[lv_pos])
            losses["loss_box_reg"] = total
        return losses


@META_ARCH_REGISTRY.register()
class ImbalanceRetinaNet(DenseImbalanceMixin, RetinaNet):
    """Detectron2's ``RetinaNet`` whose classification loss is focal loss (default, identical to
    Detectron2) or GHM-C, chosen by ``MODEL.RETINANET.CLS_LOSS``, and whose box loss is
    RetinaNet's (default) or GHM-R, chosen by ``MODEL.RETINANET.BBOX_LOSS``; see
    :class:`DenseImbalanceMixin`."""
