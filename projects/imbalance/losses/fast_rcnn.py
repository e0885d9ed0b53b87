"""Per-RoI Fast R-CNN losses: the terms that ``FastRCNNOutputLayers.losses`` sums.

``FastRCNNOutputLayers.losses`` returns ``loss_cls = mean_i CE_i`` and
``loss_box_reg = sum_{i in fg} L_reg,i / R`` over the R sampled RoIs. Here the same terms are
returned per RoI, so that ``ce.sum() / R`` and ``box.sum() / R`` are those two losses; OHEM ranks
RoIs by ``ce + box`` (Shrivastava et al., Sec. 4.1) and weighted samplers scale them per RoI
(Oksuz et al., Eq. 2: ``w_i CE(p_s)``).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import cat, ciou_loss, diou_loss
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Instances
from fvcore.nn import giou_loss, smooth_l1_loss

from d2infra.modeling.precision import loss_dtype


def fast_rcnn_per_roi_losses(
    predictor: FastRCNNOutputLayers,
    predictions: Tuple[torch.Tensor, torch.Tensor],
    proposals: List[Instances],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Classification and box-regression loss of each RoI, without reduction.

    Args:
        predictor: the ``FastRCNNOutputLayers`` (or subclass) that produced ``predictions``; its
            ``num_classes``, ``box2box_transform``, ``box_reg_loss_type`` and ``smooth_l1_beta``
            define the losses, as in its ``losses``.
        predictions: ``(scores (R, K+1) logits, proposal_deltas (R, 4 or 4K))``.
        proposals: with ``proposal_boxes``, ``gt_classes`` and, for foreground, ``gt_boxes``.
    Returns:
        ``(ce (R,), box (R,))``: cross-entropy of each RoI (0 where ``gt_classes`` is -1) and its
        box-regression loss summed over the 4 coordinates (0 for background). Neither includes
        ``predictor.loss_weight``. Both are float32 (float64 for float64 predictions), also for
        half-precision predictions (mixed precision): see :mod:`d2infra.modeling.precision`.
    """
    scores, deltas = predictions
    dtype = loss_dtype(scores)
    if not len(proposals):
        empty = scores.new_zeros((0,), dtype=dtype)
        return empty, empty
    gt_classes = cat([p.gt_classes for p in proposals], dim=0)
    proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
    gt_boxes = cat(
        [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0
    )

    # Under autocast ``scores`` is float16/bfloat16 and cross-entropy float32 (both CUDA's and the
    # CPU's autocast run it in float32); the masked assignment (index_put_) is not autocast and
    # needs one dtype, so the buffers and the losses are float32 explicitly.
    ce = scores.new_zeros(gt_classes.shape[0], dtype=dtype)
    valid = gt_classes >= 0
    if valid.any():
        ce[valid] = F.cross_entropy(scores[valid].to(dtype), gt_classes[valid], reduction="none")

    box = scores.new_zeros(gt_classes.shape[0], dtype=dtype)
    num_classes = predictor.num_classes
    fg = torch.nonzero(valid & (gt_classes < num_classes), as_tuple=True)[0]
    if fg.numel() == 0:
        return ce, box
    box_dim = proposal_boxes.shape[1]
    if deltas.shape[1] == box_dim:  # class-agnostic regression
        fg_deltas = deltas[fg]
    else:
        fg_deltas = deltas.view(-1, num_classes, box_dim)[fg, gt_classes[fg]]
    fg_deltas = fg_deltas.to(dtype)  # the box loss in float32 too, not in the deltas' half dtype
    loss_type = predictor.box_reg_loss_type
    transform = predictor.box2box_transform
    if loss_type == "smooth_l1":
        gt_deltas = transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])
        fg_loss = smooth_l1_loss(fg_deltas, gt_deltas, predictor.smooth_l1_beta, reduction="none")
        fg_loss = fg_loss.sum(dim=1)
    elif loss_type in ("giou", "diou", "ciou"):
        fn = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}[loss_type]
        fg_pred_boxes = transform.apply_deltas(fg_deltas, proposal_boxes[fg])
        fg_loss = fn(fg_pred_boxes, gt_boxes[fg], reduction="none")
    else:
        raise ValueError(f"Invalid bbox reg loss type {loss_type!r}")
    box[fg] = fg_loss.to(box.dtype)
    return ce, box
