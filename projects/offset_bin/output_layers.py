"""The box predictor of the Offset Bin Classification Network (Qiu et al., section 3.2, Fig. 2):
Fast R-CNN's classification layer plus, instead of the box regression layer, a layer of bin scores
for each of the 4 offsets and each hierarchical focusing stage."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat, nonzero_tuple
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    _log_classification_stats,
    fast_rcnn_inference,
)
from detectron2.structures import Instances

from d2infra.modeling import ROI_BOX_PREDICTOR_REGISTRY
from d2infra.modeling.precision import loss_dtype, upcast

from .coder import OffsetBinCoder

__all__ = ["OffsetBinOutputLayers"]


def _resolve_cls_agnostic(cfg) -> bool:
    """``MODEL.OFFSET_BIN.CLS_AGNOSTIC``; None or "" inherits ``CLS_AGNOSTIC_BBOX_REG``."""
    value = cfg.MODEL.OFFSET_BIN.CLS_AGNOSTIC
    if value is None or value == "":
        return bool(cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG)
    if not isinstance(value, bool):
        raise ValueError(
            "MODEL.OFFSET_BIN.CLS_AGNOSTIC must be True, False, or None/\"\" (inherit "
            f"MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG); got {value!r}"
        )
    return value


@ROI_BOX_PREDICTOR_REGISTRY.register()
class OffsetBinOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN outputs with offset bin classification in place of box regression.

    For every RoI the layer ``bin_pred`` gives the score vector s of section 3.2.2, reshaped to
    (classes, 4 coordinates, K stages, n bins) (class-agnostic: one class). Training adds, to
    Fast R-CNN's ``loss_cls``, one cross-entropy bin loss per focusing stage,
    ``loss_bin_stage{k}`` (Eq. 7, weighted by lambda_bin, Eq. 9). Boxes are decoded with the
    expectation (Eq. 10) or the argmax of each stage, summed over the stages (Eq. 11), then applied
    to the proposals by ``box2box_transform``: see :class:`offset_bin.OffsetBinCoder`.

    Redefines: ``__init__`` (``bin_pred`` replaces ``bbox_pred``), ``forward`` (returns the bin
    scores in place of the deltas), ``losses``, ``box_reg_loss``, ``predict_boxes``,
    ``predict_boxes_for_gt_classes`` and ``inference`` (Detectron2's, decoding only the boxes that
    can become detections). ``predict_probs`` is Detectron2's, so the layer drops into any head that
    uses ``FastRCNNOutputLayers`` (Standard, Cascade, R^3-CNN).

    Per-RoI loss weights: if the proposals carry ``loss_weights`` (the shared RoI samplers set
    them; 1 for a proposal without), every loss is ``sum_r w_r L_r / R`` over the R sampled RoIs,
    as :class:`imbalance.modeling.WeightedFastRCNNOutputLayers`' (the bin loss of a background RoI
    is 0, as Detectron2's regression loss). With all weights 1 this is Detectron2's normalisation,
    the mean over the sampled RoIs. ``per_roi_losses`` gives the unreduced terms (OHEM).

    Not used: ``SMOOTH_L1_BETA``, ``BBOX_REG_LOSS_TYPE`` and ``BBOX_REG_LOSS_WEIGHT`` (there is no
    regression); ``MODEL.OFFSET_BIN.LOSS_WEIGHT`` weights the bin losses.
    """

    # Read by the sampling ROI heads: this predictor applies the samplers' weights.
    honours_loss_weights = True

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        offset_range: float = 3.0,
        num_bins: int = 20,
        num_focusing_stages: int = 2,
        expectation: bool = True,
        bin_loss_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            input_shape: shape of the RoI features.
            offset_range: a, the half range of the first stage's inner bins (Eq. 5).
            num_bins: n, bins per coordinate and stage, counting the 2 outer bins.
            num_focusing_stages: K, hierarchical focusing stages (Eq. 11).
            expectation: decode with the expectation (Eq. 10); otherwise with the argmax bin.
            bin_loss_weight: lambda_bin of Eq. 9.
            kwargs: the arguments of :class:`FastRCNNOutputLayers` (``box2box_transform``,
                ``num_classes``, ``cls_agnostic_bbox_reg``, the test thresholds, ...).
        """
        super().__init__(input_shape, **kwargs)
        self.coder = OffsetBinCoder(offset_range, num_bins, num_focusing_stages)
        if not isinstance(expectation, bool):
            raise ValueError(f"MODEL.OFFSET_BIN.EXPECTATION must be a bool, got {expectation!r}")
        if isinstance(bin_loss_weight, bool) or not isinstance(bin_loss_weight, (int, float)) or \
                not bin_loss_weight >= 0:
            raise ValueError(
                f"MODEL.OFFSET_BIN.LOSS_WEIGHT (lambda_bin) must be >= 0, got {bin_loss_weight!r}"
            )
        if not isinstance(self.box2box_transform, Box2BoxTransform):
            raise ValueError(
                "OffsetBinOutputLayers bins the 4 offsets of Box2BoxTransform; got "
                f"{type(self.box2box_transform).__name__}"
            )
        self.expectation = expectation
        self.bin_loss_weight = float(bin_loss_weight)
        self.cls_agnostic_bbox_reg = bool(kwargs.get("cls_agnostic_bbox_reg", False))
        self.num_bbox_reg_classes = 1 if self.cls_agnostic_bbox_reg else self.num_classes

        # The regression layer is replaced by the bin classifier: s in R^{4n} per class and
        # focusing stage (section 3.2.2).
        del self.bbox_pred
        input_size = self.cls_score.in_features
        self.bin_pred = nn.Linear(
            input_size, self.num_bbox_reg_classes * 4 * self.coder.num_stages * self.coder.num_bins
        )
        # A classifier's initialisation, as cls_score's. Zero scores give uniform probabilities,
        # whose expectation is 0 (the representatives are symmetric): initial boxes = proposals.
        nn.init.normal_(self.bin_pred.weight, std=0.01)
        nn.init.constant_(self.bin_pred.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape) -> Dict:
        ret = super().from_config(cfg, input_shape)
        ret.update(
            cls_agnostic_bbox_reg=_resolve_cls_agnostic(cfg),
            offset_range=cfg.MODEL.OFFSET_BIN.RANGE,
            num_bins=cfg.MODEL.OFFSET_BIN.NUM_BINS,
            num_focusing_stages=cfg.MODEL.OFFSET_BIN.NUM_STAGES,
            expectation=cfg.MODEL.OFFSET_BIN.EXPECTATION,
            bin_loss_weight=cfg.MODEL.OFFSET_BIN.LOSS_WEIGHT,
        )
        return ret

    # ------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            x: per-region features of shape (N, ...).

        Returns:
            (scores, bin_logits): scores (N, C+1) as Detectron2's; bin_logits (N, R*4*K*n), the
            bin scores s (Eq. 6 before the softmax) with R = 1 (class-agnostic) or C, laid out as
            ``view(N, R, 4, K, n)`` (see :meth:`bin_logits_view`).
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bin_pred(x)

    def bin_logits_view(self, bin_logits: Tensor) -> Tensor:
        """(N, R*4*K*n) -> (N, R, 4, K, n): class, coordinate (dx, dy, dw, dh), stage, bin."""
        return bin_logits.view(
            -1, self.num_bbox_reg_classes, 4, self.coder.num_stages, self.coder.num_bins
        )

    def predict_deltas(self, bin_logits: Tensor) -> Tensor:
        """Decoded offsets (Eqs. 6, 10, 11): (N, R*4), laid out like ``bbox_pred``'s deltas;
        float32 for half-precision scores."""
        # The softmax in float32: CUDA autocast runs it in float32, the CPU's in bfloat16.
        deltas = self.coder.decode(upcast(self.bin_logits_view(bin_logits)), self.expectation)
        return deltas.reshape(bin_logits.shape[0], self.num_bbox_reg_classes * 4)

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------
    def losses(self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]):
        """
        Args:
            predictions: return values of :meth:`forward`.
            proposals: the sampled proposals with ``proposal_boxes``, ``gt_classes``, ``gt_boxes``
                (absent when an image has no ground truth) and optionally ``loss_weights``.

        Returns:
            ``loss_cls`` (L_cls of Eq. 9) and ``loss_bin_stage{k}`` for k < K (lambda_bin L_bin of
            Eqs. 7, 9 at focusing stage k), each ``sum_r w_r L_r / R`` over the R sampled RoIs.
        """
        scores, _ = predictions
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals) else torch.empty(0, dtype=torch.long, device=scores.device)
        )
        _log_classification_stats(scores, gt_classes)
        ce, bins = self.per_roi_loss_terms(predictions, proposals)
        weights = self._loss_weights(proposals, ce)
        if weights is not None:
            ce, bins = ce * weights, bins * weights[:, None]
        num_rois = max(gt_classes.numel(), 1)
        losses = {"loss_cls": ce.sum() / num_rois * self.loss_weight.get("loss_cls", 1.0)}
        stage_losses = bins.sum(dim=0) / num_rois
        for k in range(self.coder.num_stages):
            losses[f"loss_bin_stage{k}"] = self.bin_loss_weight * stage_losses[k]  # Eq. 9
        return losses

    @staticmethod
    def _loss_weights(proposals: List[Instances], like: Tensor) -> Optional[Tensor]:
        """Per-RoI ``loss_weights`` (1 where a proposal has none); None if no proposal has any."""
        if not any(p.has("loss_weights") for p in proposals):
            return None
        return cat(
            [
                p.loss_weights.to(like.dtype) if p.has("loss_weights")
                else torch.ones(len(p), dtype=like.dtype, device=like.device)
                for p in proposals
            ],
            dim=0,
        )

    def per_roi_loss_terms(
        self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]
    ) -> Tuple[Tensor, Tensor]:
        """The unreduced terms of :meth:`losses`, without any weight.

        Returns:
            ce (R,): L_cls of each RoI (0 for ignored RoIs, label -1).
            bins (R, K): :meth:`bin_loss_terms`.
            Both float32 (float64 for float64 scores), also for half-precision predictions.
        """
        scores, bin_logits = predictions
        num_stages = self.coder.num_stages
        dtype = loss_dtype(scores)
        if not len(proposals):
            # connect the gradient; float32 as the other case (CUDA autocast sums in float32)
            zero = scores.sum().to(dtype) * 0.0 + bin_logits.sum().to(dtype) * 0.0
            return zero.expand(0), zero.expand(0, num_stages)
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        assert not proposal_boxes.requires_grad, "Proposals should not require gradients!"
        # Images without ground truth have only background RoIs, whose gt box is unused.
        gt_boxes = cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
            dim=0,
        )
        num_rois = gt_classes.numel()

        valid = nonzero_tuple(gt_classes >= 0)[0]
        ce = F.cross_entropy(scores[valid].to(dtype), gt_classes[valid], reduction="none")
        # CUDA autocast does not promote index_copy (the CPU's does): a half-precision buffer
        # with float32 losses fails on the GPU only. The buffer takes the losses' dtype.
        ce = scores.new_zeros(num_rois, dtype=ce.dtype).index_copy(0, valid, ce)
        return ce, self.bin_loss_terms(proposal_boxes, gt_boxes, bin_logits, gt_classes)

    def bin_loss_terms(
        self, proposal_boxes: Tensor, gt_boxes: Tensor, bin_logits: Tensor, gt_classes: Tensor
    ) -> Tensor:
        """Eq. 7 per RoI and focusing stage, summed over the 4 coordinates (unweighted).

        The targets are the bins of t* = ``box2box_transform.get_deltas(proposal, gt)`` and of its
        residuals (:meth:`OffsetBinCoder.encode`); the scores are those of the RoI's ground-truth
        class (or the only ones, class-agnostic).

        Args:
            proposal_boxes, gt_boxes: (R, 4).
            bin_logits: (R, C*4*K*n or 4*K*n) from :meth:`forward`.
            gt_classes: (R,), C for background, -1 ignored.
        Returns:
            (R, K); 0 for background and ignored RoIs. Float32 (float64 for float64 scores),
            also for half-precision scores.
        """
        fg = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        logits = self.bin_logits_view(bin_logits)  # (R, C or 1, 4, K, n)
        fg_logits = logits[fg, 0] if self.num_bbox_reg_classes == 1 else logits[fg, gt_classes[fg]]
        gt_deltas = self.box2box_transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])  # t*
        targets = self.coder.encode(gt_deltas)  # (F, 4, K)
        # Eq. 7: cross-entropy per coordinate i, summed over i in {x, y, w, h}; in float32 under
        # mixed precision, so that the buffer below (index_copy: CUDA autocast does not promote
        # it) and the loss have one dtype on every device.
        fg_bins = self.coder.loss(upcast(fg_logits), targets).sum(dim=1)  # (F, K)
        return fg_bins.new_zeros((gt_classes.numel(), self.coder.num_stages)).index_copy(
            0, fg, fg_bins
        )

    def per_roi_losses(
        self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]
    ) -> Tuple[Tensor, Tensor]:
        """``(ce (R,), loc (R,))`` as :func:`imbalance.losses.fast_rcnn_per_roi_losses` (for OHEM's
        ranking): the localisation term is L_bin summed over the focusing stages, unweighted."""
        ce, bins = self.per_roi_loss_terms(predictions, proposals)
        return ce, bins.sum(dim=1)

    def box_reg_loss(
        self, proposal_boxes: Tensor, gt_boxes: Tensor, pred_deltas: Tensor, gt_classes: Tensor
    ) -> Tensor:
        """Detectron2's hook for the localisation loss: here lambda_bin L_bin summed over the
        focusing stages, normalised like Detectron2's (by the number of RoIs R).

        Args:
            proposal_boxes, gt_boxes: (R, 4).
            pred_deltas: the bin scores (R, C*4*K*n or 4*K*n) of :meth:`forward` (not deltas).
            gt_classes: (R,).
        """
        bins = self.bin_loss_terms(proposal_boxes, gt_boxes, pred_deltas, gt_classes)
        return self.bin_loss_weight * bins.sum() / max(gt_classes.numel(), 1)

    # ------------------------------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------------------------------
    def predict_boxes(self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]):
        """Detectron2's ``predict_boxes`` on the decoded offsets (Eqs. 10, 11).

        Returns:
            list[Tensor]: per image, (Ri, C*4) or (Ri, 4) boxes.
        """
        scores, bin_logits = predictions
        return super().predict_boxes((scores, self.predict_deltas(bin_logits)), proposals)

    def predict_boxes_for_gt_classes(
        self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]
    ):
        """Detectron2's ``predict_boxes_for_gt_classes`` on the decoded offsets (Eqs. 10, 11)."""
        scores, bin_logits = predictions
        return super().predict_boxes_for_gt_classes(
            (scores, self.predict_deltas(bin_logits)), proposals
        )

    def inference(self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]):
        """Detectron2's :meth:`FastRCNNOutputLayers.inference` (score threshold, per-class NMS, top
        detections), with the bins decoded (Eqs. 6, 10, 11) only for the RoIs and classes whose
        score passes ``test_score_thresh``: no other box can become a detection. The others keep
        their proposal box, which the threshold then drops, so the detections are those of
        decoding every box (tested).

        Returns:
            list[Instances] and list[Tensor], as :func:`fast_rcnn_inference`.
        """
        _, bin_logits = predictions
        probs = self.predict_probs(predictions, proposals)
        logits = self.bin_logits_view(bin_logits).split([len(p) for p in proposals])
        boxes = [
            self._decode_candidates(logits_i, probs_i, p.proposal_boxes.tensor)
            for logits_i, probs_i, p in zip(logits, probs, proposals)
        ]
        return fast_rcnn_inference(
            boxes,
            probs,
            [p.image_size for p in proposals],
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )

    def _decode_candidates(self, logits: Tensor, probs: Tensor, proposal_boxes: Tensor) -> Tensor:
        """Boxes of one image as :meth:`predict_boxes` lays them out, (R, C*4) or (R, 4): decoded
        where a class score passes the threshold (class-agnostic: the RoI's one box), the proposal
        box elsewhere.

        Args:
            logits: (R, C or 1, 4, K, n) bin scores; probs: (R, C + 1) class probabilities.
        """
        candidates = probs[:, :-1] > self.test_score_thresh  # fast_rcnn_inference's filter
        if self.num_bbox_reg_classes == 1:
            rois = nonzero_tuple(candidates.any(dim=1))[0]
            classes = torch.zeros_like(rois)
        else:
            rois, classes = nonzero_tuple(candidates)
        # (F, 4); the softmax in float32, as predict_deltas
        deltas = self.coder.decode(upcast(logits[rois, classes]), self.expectation)
        boxes = proposal_boxes.repeat(1, self.num_bbox_reg_classes)
        # (R, C or 1, 4): an explicit class count, as -1 is ambiguous when there is no RoI.
        boxes.view(len(boxes), self.num_bbox_reg_classes, 4)[rois, classes] = (
            self.box2box_transform.apply_deltas(deltas, proposal_boxes[rois]).to(boxes.dtype)
        )
        return boxes
