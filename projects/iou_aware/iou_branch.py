"""The IoU branch shared by IoU-aware RetinaNet and IoU-aware FCOS: its target and loss (Eq. 3), the
detection confidence (Eq. 5), and the decoding that ranks candidates by that confidence.

Pure tensor functions plus one mixin for Detectron2's dense detectors; no network here.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from detectron2.layers import batched_nms, cat
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou

from d2infra.modeling.precision import upcast

__all__ = [
    "check_alpha",
    "detection_confidence",
    "iou_prediction_loss",
    "iou_branch_loss",
    "nms_top_detections",
    "IoUConfidenceDecodingMixin",
]

IOU_LOSS_TYPES = ("bce", "l2")


def check_alpha(alpha: Optional[float], default: Optional[float] = None) -> float:
    """Validate ``MODEL.IOU_AWARE.ALPHA``: in [0, 1], or negative for the plain product p * IoU;
    None stands for the detector's ``default``."""
    if alpha is None:
        if default is None:
            raise ValueError("MODEL.IOU_AWARE.ALPHA is None and this detector has no default alpha")
        alpha = default
    alpha = float(alpha)
    if alpha != alpha or alpha > 1.0:  # NaN, or above 1 (negative selects the product)
        raise ValueError(
            f"MODEL.IOU_AWARE.ALPHA must be in [0, 1] (Eq. 5), or negative for the plain product "
            f"p * IoU; got {alpha}."
        )
    return alpha


def detection_confidence(cls_scores: Tensor, ious: Tensor, alpha: float) -> Tensor:
    """Eq. 5: the detection confidence ``S_det = p^alpha * IoU^(1 - alpha)``.

    Args:
        cls_scores: (R, K) classification probabilities p.
        ious: (R, 1) predicted IoUs (or any localization quality in [0, 1]), broadcast over classes;
            or both of one shape, one IoU per score.
        alpha: in [0, 1]; a negative value gives the plain product p * IoU (Table 3, "none").

    Returns:
        (R, K) confidences (the shape of ``cls_scores``).
    """
    if alpha < 0:
        return cls_scores * ious
    if alpha == 1.0:
        # p^1 * IoU^0: exactly the classification score, so detections equal plain RetinaNet's.
        return cls_scores
    if alpha == 0.0:
        return ious.expand_as(cls_scores)
    return cls_scores.pow(alpha) * ious.pow(1.0 - alpha)


def iou_prediction_loss(iou_logits: Tensor, iou_targets: Tensor, loss_type: str = "bce") -> Tensor:
    """Eq. 3 before normalisation: the summed loss between predicted and target IoUs.

    Args:
        iou_logits: (P,) logits of the predicted IoU (before the sigmoid) of the positive anchors.
        iou_targets: (P,) target IoUs in [0, 1]; may carry gradient (it then flows into the boxes).
        loss_type: "bce", binary cross-entropy ``-(t log s + (1 - t) log(1 - s))``, s = sigmoid(x);
            or "l2", ``(s - t)^2`` (Table 2).

    Returns:
        A scalar, the sum over the P anchors.
    """
    if loss_type == "bce":
        # -(t log s(x) + (1 - t) log(1 - s(x))) = softplus(x) - t * x, differentiable in t too.
        return (F.softplus(iou_logits) - iou_targets * iou_logits).sum()
    if loss_type == "l2":
        return (iou_logits.sigmoid() - iou_targets).pow(2).sum()
    raise ValueError(f"MODEL.IOU_AWARE.LOSS_TYPE must be one of {IOU_LOSS_TYPES}, got {loss_type!r}")


def iou_branch_loss(
    anchors: List[Boxes],
    box2box_transform,
    pred_anchor_deltas: List[Tensor],
    gt_boxes: Tensor,
    pos_mask: Tensor,
    pred_iou_logits: List[Tensor],
    loss_type: str = "bce",
    target_gradient: bool = True,
) -> Tensor:
    """The summed IoU loss of Eq. 3 over the positive anchors (normalise it by N_pos outside).

    The target of a positive anchor is the IoU between its regressed box (the anchor decoded with the
    predicted deltas) and its matched ground-truth box.

    Args:
        anchors: #levels Boxes, as in :meth:`RetinaNet.losses`.
        box2box_transform: decodes (anchor, delta) pairs into boxes.
        pred_anchor_deltas: #levels tensors of shape (N, Hi * Wi * A, 4).
        gt_boxes: (N, R, 4) matched ground-truth boxes (undefined where not positive).
        pos_mask: (N, R) boolean mask of the positive anchors.
        pred_iou_logits: #levels tensors of shape (N, Hi * Wi * A, 1).
        loss_type: "bce" or "l2", see :func:`iou_prediction_loss`.
        target_gradient: if False, detach the target IoU from the regression branch.

    Returns:
        A scalar: the loss summed over positives, in float32 (float64 for float64 inputs), also
        for half-precision logits (mixed precision).
    """
    all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
    deltas = cat(pred_anchor_deltas, dim=1)  # (N, R, 4)
    pos_anchors = all_anchors.unsqueeze(0).expand_as(deltas)[pos_mask]
    pred_boxes = box2box_transform.apply_deltas(deltas[pos_mask], pos_anchors)
    iou_targets = matched_pairwise_iou(Boxes(pred_boxes), Boxes(gt_boxes[pos_mask]))
    if not target_gradient:
        iou_targets = iou_targets.detach()
    iou_logits = cat(pred_iou_logits, dim=1).squeeze(2)[pos_mask]  # (P,)
    # Under mixed precision the logits are float16/bfloat16 and the target float32
    # (``apply_deltas`` decodes in float32): the loss is computed in float32, so that the target,
    # and with TARGET_GRADIENT the gradient into the boxes, are not rounded to the logits' dtype,
    # and so that CUDA (softplus in float32) and CPU (in bfloat16) autocast agree.
    iou_logits = upcast(iou_logits)
    return iou_prediction_loss(iou_logits, iou_targets.to(iou_logits.dtype), loss_type)


def nms_top_detections(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, max_detections: int
) -> Tensor:
    """``batched_nms(boxes, scores, classes, iou_threshold)[:max_detections]``, computed on the best
    candidates first.

    Greedy NMS keeps or suppresses a box by the higher-scoring boxes of its class alone, so NMS of
    the n best candidates keeps the same boxes among them as NMS of all; once ``max_detections`` of
    them are kept, no other candidate can rank among the first ``max_detections``. n starts at 5
    ``max_detections`` and doubles (including the candidates tied with the n-th) until enough are
    kept. With the IoU-aware confidence thousands of candidates pass the score threshold (every
    level's top k on a trained model here), and NMS of them all cost more than the rest of the
    decoding. The n best go through Detectron2's ``batched_nms`` (torchvision's: one kernel on
    the classes' offset boxes, no loop over classes, up to 1000 boxes on the CPU and thousands on
    CUDA), so the host syncs of an image do not grow with the number of classes.

    Returns:
        Indices of the kept boxes, in decreasing score.
    """
    num = scores.numel()
    n = 5 * max_detections
    if max_detections <= 0 or num <= n:
        return batched_nms(boxes, scores, classes, iou_threshold)[:max_detections]
    ranked, order = scores.sort(descending=True)
    while True:
        if n < num:  # the candidates tied with the n-th go in with it
            n = int((ranked >= ranked[n - 1]).sum())
        best = order[:n].sort().values  # in the candidates' own order
        keep = batched_nms(boxes[best], scores[best], classes[best], iou_threshold)
        if keep.numel() >= max_detections or n >= num:
            return best[keep[:max_detections]]
        n *= 2


class IoUConfidenceDecodingMixin:
    """Inference of a Detectron2 dense detector that ranks candidates by the confidence of Eq. 5,
    ``S = p^alpha q^(1 - alpha)`` (``self.iou_alpha``; q a localization quality in [0, 1]), and
    carries per-candidate fields (``cls_scores``, ``pred_ious``, ...) into the output Instances.

    Put before the detector in the bases (``class X(IoUConfidenceDecodingMixin, RetinaNet)``). It
    redefines only :meth:`inference_single_image` and :meth:`_decode_per_level_predictions`, and only
    when ``quality`` is given; otherwise both fall through to Detectron2's.

    The detections are those of Detectron2's decoding (score threshold, top-k candidates per level,
    per-class NMS) run on S of every location and class, as in the authors' code: S is computed on
    every pair (cheap), and one ``topk`` of all pairs followed by the threshold stands for
    Detectron2's threshold followed by a sort of every pair above it, which costs far more when
    most pairs pass (they do with S on a young model). NMS goes to the best candidates first
    (:func:`nms_top_detections`).
    """

    def iou_branch_losses(self, anchors, pred_deltas: List[Tensor], gt_labels: List[Tensor],
                          gt_boxes: Tensor, pred_iou_logits: List[Tensor]) -> Tensor:
        """``loss_iou`` (Eq. 3) of one batch: :func:`iou_branch_loss` over the positive anchors
        (label in [0, K)), weighted by ``self.iou_loss_weight`` and normalised by the detector's
        EMA of positives (``self.loss_normalizer``, updated by its ``losses`` first).

        Args:
            gt_labels: per image, the label of each anchor; ``gt_boxes``: (N, R, 4) matched boxes.
        """
        gt_labels = torch.stack(gt_labels)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        loss_iou = iou_branch_loss(
            anchors, self.box2box_transform, pred_deltas, gt_boxes, pos_mask, pred_iou_logits,
            loss_type=self.iou_loss_type, target_gradient=self.iou_target_gradient,
        )
        return self.iou_loss_weight * loss_iou / self.loss_normalizer  # Eq. 3

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: Tensor,
        pred_deltas: Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
        quality: Optional[Tensor] = None,
        extra_fields: Optional[Dict[str, Tensor]] = None,
    ) -> Instances:
        """Detectron2's per-level decoding (score threshold, top-k, box decoding) ranked by the
        Eq. 5 confidence of ``pred_scores`` (p, HxWxA x K) and ``quality`` (q, HxWxA x 1), gathering
        ``extra_fields`` (each HxWxA x K, or HxWxA x 1 for per-anchor values) at the kept candidates.

        Returns:
            Instances with "scores" (S), "pred_boxes", "pred_classes" and one field per extra field.
        """
        if quality is None:
            return super()._decode_per_level_predictions(
                anchors, pred_scores, pred_deltas, score_thresh, topk_candidates, image_size
            )
        # Eq. 5 on every (location, class) pair, flattened in Detectron2's (row-major) order; in
        # float32 under mixed precision (CUDA autocast runs ``pow`` in float32, the CPU's in
        # bfloat16), so that the ranking is the same on every device.
        scores = detection_confidence(upcast(pred_scores), upcast(quality), self.iou_alpha)
        scores = scores.flatten()
        # The top k of all pairs, then the threshold: the top k of those above the threshold, as
        # Detectron2's decoding (threshold, then top k; ties may be taken in another order, as
        # between its v0.6 (sort) and main (topk)). One topk instead of sorting every candidate:
        # with S every pair of a young model passes the threshold (73656 of 73656 per image).
        scores, idxs = scores.topk(min(topk_candidates, scores.numel()))
        keep = scores > score_thresh
        scores, idxs = scores[keep], idxs[keep]
        num_classes = pred_scores.shape[1]
        anchor_idxs, classes_idxs = idxs // num_classes, idxs % num_classes

        # Deltas in float32: FCOS's Box2BoxTransformLinear decodes in the deltas' dtype, and
        # float16 boxes are rounded to 1 pixel at 1024 (RetinaNet's transform casts itself).
        pred_boxes = self.box2box_transform.apply_deltas(
            upcast(pred_deltas[anchor_idxs]), anchors.tensor[anchor_idxs]
        )
        fields = {
            name: value.flatten()[idxs] if value.shape[1] > 1 else value[anchor_idxs, 0]
            for name, value in (extra_fields or {}).items()
        }
        return Instances(
            image_size,
            pred_boxes=Boxes(pred_boxes),
            scores=scores,
            pred_classes=classes_idxs,
            **fields,
        )

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[Tensor],
        box_delta: List[Tensor],
        image_size: Tuple[int, int],
        quality: Optional[List[Tensor]] = None,
        extra_fields: Optional[List[Dict[str, Tensor]]] = None,
    ) -> Instances:
        """Like :meth:`RetinaNet.inference_single_image`, with the candidates ranked in top-k, the
        score threshold and NMS by the confidence of Eq. 5 of ``box_cls`` (p) and ``quality`` (q,
        one (HxWxA, 1) tensor per level), and ``extra_fields`` (one dict per level) carried into
        the output.

        Returns:
            Instances with "pred_boxes", "scores" (the confidence), "pred_classes" and the extras.
        """
        if quality is None:
            return super().inference_single_image(anchors, box_cls, box_delta, image_size)
        if extra_fields is None:
            extra_fields = [{} for _ in anchors]
        pred = Instances.cat(
            [
                self._decode_per_level_predictions(
                    anchors_i,
                    scores_i,
                    deltas_i,
                    self.test_score_thresh,
                    self.test_topk_candidates,
                    image_size,
                    quality=quality_i,
                    extra_fields=fields_i,
                )
                for anchors_i, scores_i, deltas_i, quality_i, fields_i in zip(
                    anchors, box_cls, box_delta, quality, extra_fields
                )
            ]
        )
        keep = nms_top_detections(  # per-class NMS, ranked by the confidence
            pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh,
            self.max_detections_per_image,
        )
        return pred[keep]
