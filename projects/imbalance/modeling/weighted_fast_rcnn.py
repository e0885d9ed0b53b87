"""Fast R-CNN box predictors whose losses honour per-RoI weights (``proposals.loss_weights``).

Soft samplers (Oksuz et al., Eq. 2 ``w_i CE(p_s)``) give every sampled RoI a loss weight.
``FastRCNNOutputLayers.losses`` ignores it; ``WeightedFastRCNNOutputLayers`` scales each RoI's
classification and box-regression loss by it and keeps Detectron2's normalisation (by the number
of RoIs R). ``PISAFastRCNNOutputLayers`` applies PISA's losses (ISR-N's weights, ISR-P, CARL).
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.fast_rcnn import _log_classification_stats
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou

from ..losses.fast_rcnn import fast_rcnn_per_roi_losses
from ..samplers.pisa import carl_loss, isr_p_weights
from d2infra.modeling import ROI_BOX_PREDICTOR_REGISTRY
from d2infra.modeling.precision import upcast


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


@ROI_BOX_PREDICTOR_REGISTRY.register()
class PISAFastRCNNOutputLayers(WeightedFastRCNNOutputLayers):
    """Fast R-CNN losses of PISA (mmdetection's ``PISARoIHead`` with ``isr_p`` and ``carl_loss``;
    the method is described in :mod:`imbalance.samplers.pisa`), for ``SAMPLER: "pisa"``.

    Redefines ``losses`` only:

    - ``loss_cls = sum_i w_i CE_i / R``: negatives keep the sampler's ISR-N weight
      (``loss_weights``); positives get ISR-P's weight from the IoU-HLR of their regressed boxes
      over the batch (:func:`imbalance.samplers.pisa.isr_p_weights`), renormalised so their
      classification loss keeps its total;
    - ``loss_box_reg``: Detectron2's, unweighted;
    - ``loss_carl`` (with ``PISA.CARL``): :func:`imbalance.samplers.pisa.carl_loss`, scaled like
      the box loss (``BBOX_REG_LOSS_WEIGHT``).

    Positives are grouped by ground truth through their ``gt_boxes`` (one group per distinct box of
    an image). Inference is Detectron2's.
    """

    # Read by the sampling ROI heads: this predictor applies PISA's weights, ISR-P and CARL.
    applies_pisa = True

    @configurable
    def __init__(self, input_shape, *, isr_p_gamma: float = 2.0, isr_p_beta: float = 0.0,
                 carl: bool = True, carl_k: float = 1.0, carl_bias: float = 0.2, **kwargs):
        """
        Args:
            isr_p_gamma, isr_p_beta: gamma and beta of Eq. 6 for ISR-P (PISA.POS_GAMMA, POS_BETA).
            carl, carl_k, carl_bias: whether to add CARL, and its k and b (PISA.CARL*).
            input_shape, kwargs: as for ``FastRCNNOutputLayers``.
        """
        super().__init__(input_shape, **kwargs)
        self.isr_p_gamma, self.isr_p_beta = float(isr_p_gamma), float(isr_p_beta)
        self.carl, self.carl_k, self.carl_bias = bool(carl), float(carl_k), float(carl_bias)

    @classmethod
    def from_config(cls, cfg, input_shape) -> Dict:
        ret = super().from_config(cfg, input_shape)
        c = cfg.MODEL.ROI_HEADS.PISA
        ret.update(isr_p_gamma=c.POS_GAMMA, isr_p_beta=c.POS_BETA, carl=c.CARL,
                   carl_k=c.CARL_K, carl_bias=c.CARL_BIAS)
        return ret

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: return values of :meth:`forward`.
            proposals: the sampled proposals with ``gt_classes``, ``gt_boxes`` and (from the PISA
                sampler) ``loss_weights``.
        Returns:
            dict with "loss_cls", "loss_box_reg" and, with CARL, "loss_carl".
        """
        scores, _ = predictions
        gt_classes = (cat([p.gt_classes for p in proposals], dim=0) if proposals
                      else torch.zeros(0, dtype=torch.long, device=scores.device))
        _log_classification_stats(scores, gt_classes)
        ce, box = self.per_roi_losses(predictions, proposals)
        weights = (cat([p.loss_weights for p in proposals], dim=0).to(ce.dtype)
                   if proposals and all(p.has("loss_weights") for p in proposals)
                   else torch.ones_like(ce))
        num_rois = max(gt_classes.numel(), 1)
        fg = torch.nonzero((gt_classes >= 0) & (gt_classes < self.num_classes), as_tuple=True)[0]
        if len(fg):
            with torch.no_grad():
                ious, instances = self.regressed_ious(predictions, proposals, fg)
                weights = weights.clone()
                weights[fg] = isr_p_weights(ious, instances, gt_classes[fg], ce[fg].detach(),
                                            self.isr_p_gamma, self.isr_p_beta,
                                            prior=weights[fg]).to(weights.dtype)
        box_weight = self.loss_weight.get("loss_box_reg", 1.0)
        losses = {
            "loss_cls": (weights * ce).sum() / num_rois * self.loss_weight.get("loss_cls", 1.0),
            "loss_box_reg": box.sum() / num_rois * box_weight,
        }
        if self.carl:
            # The softmax in float32: CUDA autocast runs it in float32, the CPU's in bfloat16.
            scores = upcast(scores)
            pos_scores = F.softmax(scores[fg], dim=1)[torch.arange(len(fg)), gt_classes[fg]]
            losses["loss_carl"] = box_weight * (
                carl_loss(pos_scores, box[fg], num_rois, self.carl_k, self.carl_bias) if len(fg)
                else scores.sum() * 0.0)
        return losses

    def regressed_ious(self, predictions, proposals: List[Instances], fg: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """IoU of the foreground RoIs' regressed boxes (for their ground-truth class) with their
        ground truth, and a batch-unique id of that ground truth: ``(ious (F,), ids (F,))``."""
        scores, deltas = predictions
        pred = cat(self.predict_boxes_for_gt_classes((scores.detach(), deltas.detach()),
                                                     proposals), dim=0)[fg]
        # an image without ground truth has no gt_boxes (and no foreground)
        gt = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                  for p in proposals], dim=0)[fg]
        image = cat([torch.full((len(p),), i, device=gt.device) for i, p in enumerate(proposals)])
        ids = torch.unique(torch.cat([image[fg, None].to(gt.dtype), gt], dim=1), dim=0,
                           return_inverse=True)[1]
        return matched_pairwise_iou(Boxes(pred), Boxes(gt)), ids
