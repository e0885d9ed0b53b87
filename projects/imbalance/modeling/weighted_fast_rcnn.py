"""A Fast R-CNN box predictor whose losses honour per-RoI weights (``proposals.loss_weights``).

Soft samplers (PISA; Oksuz et al., Eq. 2 ``w_i CE(p_s)``) give every sampled RoI a loss weight.
``FastRCNNOutputLayers.losses`` ignores it; this subclass scales each RoI's classification and
box-regression loss by it and keeps Detectron2's normalisation (by the number of RoIs R).
"""
from typing import Dict, List, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.fast_rcnn import _log_classification_stats
from detectron2.structures import Instances

from ..losses.fast_rcnn import fast_rcnn_per_roi_losses
from d2infra.modeling import ROI_BOX_PREDICTOR_REGISTRY


@ROI_BOX_PREDICTOR_REGISTRY.register()
class WeightedFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` with per-RoI loss weights.

    Redefines ``losses`` only: with weights ``w_i`` (the ``loss_weights`` field of the proposals)
    ``loss_cls = sum_i w_i CE_i / R`` and ``loss_box_reg = sum_i w_i L_reg,i / R``. When no proposal
    carries weights, or all weights are 1, it returns exactly ``FastRCNNOutputLayers.losses``.
    Adds ``per_roi_losses``, used by OHEM to rank candidates.
    """

    # Read by the sampling ROI heads: this predictor applies the samplers' weights.
    honours_loss_weights = True

    def per_roi_losses(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(ce (R,), box (R,))``; see :func:`imbalance.losses.fast_rcnn_per_roi_losses`."""
        return fast_rcnn_per_roi_losses(self, predictions, proposals)

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: return values of :meth:`forward`.
            proposals: as for ``FastRCNNOutputLayers.losses``, optionally with ``loss_weights``.
        Returns:
            dict with "loss_cls" and "loss_box_reg", each times ``self.loss_weight``.
        """
        if not proposals or not all(p.has("loss_weights") for p in proposals):
            return super().losses(predictions, proposals)
        weights = cat([p.loss_weights for p in proposals], dim=0)
        if bool((weights == 1).all()):
            return super().losses(predictions, proposals)

        scores, _ = predictions
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        _log_classification_stats(scores, gt_classes)
        ce, box = self.per_roi_losses(predictions, proposals)
        weights = weights.to(ce.dtype)
        num_rois = max(gt_classes.numel(), 1)
        losses = {
            "loss_cls": (weights * ce).sum() / num_rois,
            "loss_box_reg": (weights * box).sum() / num_rois,
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
