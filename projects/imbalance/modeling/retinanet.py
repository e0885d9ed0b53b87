"""RetinaNet with a choice of classification loss for the foreground-background imbalance of dense
heads: focal loss (Lin et al., Detectron2's) or GHM-C (Li et al.), plus anchor diagnostics."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes

from ..diagnostics import log_anchor_stats
from ..losses.ghm import GHMCLoss

CLS_LOSSES = ("focal", "ghmc")


class DenseImbalanceMixin:
    """Mix in before ``RetinaNet`` (or a subclass that calls ``self.losses``, e.g.
    ``IoUAwareRetinaNet``) to choose the classification loss by ``MODEL.RETINANET.CLS_LOSS``.

    Redefines ``losses`` only. "focal" returns RetinaNet's losses unchanged; "ghmc" replaces
    ``loss_cls`` by GHM-C over the same valid anchors and one-hot targets (GHM-C normalises itself,
    so RetinaNet's EMA of the positive count is not applied to it); the box loss and its normaliser
    stay RetinaNet's. Either way, logs the positive:negative anchor ratio and the positives' IoU
    histogram under ``imbalance/anchors/`` (:func:`imbalance.diagnostics.log_anchor_stats`).
    """

    @configurable
    def __init__(self, *, cls_loss: str = "focal", ghmc_bins: int = 30,
                 ghmc_momentum: float = 0.75, **kwargs):
        """
        Args:
            cls_loss: "focal" or "ghmc".
            ghmc_bins, ghmc_momentum: M and alpha of GHM-C (used when ``cls_loss == "ghmc"``).
            kwargs: the arguments of the RetinaNet class mixed with.
        """
        super().__init__(**kwargs)
        if cls_loss not in CLS_LOSSES:
            raise ValueError(
                f"MODEL.RETINANET.CLS_LOSS must be one of {CLS_LOSSES}, got {cls_loss!r}")
        self.cls_loss = cls_loss
        self.ghmc = GHMCLoss(ghmc_bins, ghmc_momentum) if cls_loss == "ghmc" else None

    @classmethod
    def from_config(cls, cfg) -> Dict:
        ret = super().from_config(cfg)
        ret.update(
            cls_loss=cfg.MODEL.RETINANET.CLS_LOSS,
            ghmc_bins=cfg.MODEL.RETINANET.GHMC.BINS,
            ghmc_momentum=cfg.MODEL.RETINANET.GHMC.MOMENTUM,
        )
        return ret

    def losses(self, anchors: List[Boxes], pred_logits: List[torch.Tensor],
               gt_labels: List[torch.Tensor], pred_anchor_deltas: List[torch.Tensor],
               gt_boxes: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Same arguments and keys as ``RetinaNet.losses``; see the class docstring."""
        log_anchor_stats(anchors, gt_labels, gt_boxes, self.num_classes)
        losses = super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        if self.cls_loss == "ghmc":
            labels = torch.stack(gt_labels)
            valid = labels >= 0
            # no target for the last (background) column, as in RetinaNet.losses
            targets = F.one_hot(labels[valid], num_classes=self.num_classes + 1)[:, :-1]
            logits = cat(pred_logits, dim=1)[valid]
            losses["loss_cls"] = self.ghmc(logits, targets.to(logits.dtype))
        return losses


@META_ARCH_REGISTRY.register()
class ImbalanceRetinaNet(DenseImbalanceMixin, RetinaNet):
    """Detectron2's ``RetinaNet`` whose classification loss is focal loss (default, identical to
    Detectron2) or GHM-C, chosen by ``MODEL.RETINANET.CLS_LOSS``; see
    :class:`DenseImbalanceMixin`."""
