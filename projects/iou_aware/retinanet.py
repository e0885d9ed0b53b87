"""IoU-aware RetinaNet (Wu et al., section 3.1): RetinaNet plus an IoU prediction conv on the last
feature of the regression tower, trained with Eq. 3 and used through the confidence of Eq. 5."""
import logging
from typing import Dict, List

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.structures import ImageList, Instances

from .iou_branch import (
    IOU_LOSS_TYPES,
    IoUConfidenceDecodingMixin,
    check_alpha,
)

__all__ = ["IoUAwareRetinaNetHead", "IoUAwareRetinaNet"]

logger = logging.getLogger(__name__)


class IoUAwareRetinaNetHead(RetinaNetHead):
    """RetinaNet's head plus the IoU prediction head of Fig. 1: one 3x3 conv with one output per
    anchor, on the last feature of the box-regression tower (parallel with ``bbox_pred``); its
    sigmoid is the predicted IoU. The classification and regression branches are Detectron2's.
    """

    @configurable
    def __init__(self, **kwargs):
        """Same arguments as :class:`RetinaNetHead`."""
        super().__init__(**kwargs)
        num_anchors = self.bbox_pred.out_channels // 4
        self.iou_pred = nn.Conv2d(
            self.bbox_pred.in_channels, num_anchors, kernel_size=3, stride=1, padding=1
        )
        torch.nn.init.normal_(self.iou_pred.weight, mean=0, std=0.01)
        torch.nn.init.constant_(self.iou_pred.bias, 0)

    def forward(self, features: List[Tensor]):
        """
        Args:
            features: FPN feature maps, high to low resolution.

        Returns:
            logits: #levels tensors (N, A x K, Hi, Wi), as in RetinaNetHead.
            bbox_reg: #levels tensors (N, A x 4, Hi, Wi), as in RetinaNetHead.
            iou_logits: #levels tensors (N, A, Hi, Wi): predicted IoU before the sigmoid.
        """
        assert len(features) == self._num_features
        logits, bbox_reg, iou_logits = [], [], []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            bbox_feature = self.bbox_subnet(feature)
            bbox_reg.append(self.bbox_pred(bbox_feature))
            iou_logits.append(self.iou_pred(bbox_feature))
        return logits, bbox_reg, iou_logits


@META_ARCH_REGISTRY.register()
class IoUAwareRetinaNet(IoUConfidenceDecodingMixin, RetinaNet):
    """RetinaNet with an IoU branch (:class:`IoUAwareRetinaNetHead`).

    Redefines: ``forward_training`` (adds ``loss_iou``, Eq. 3) and ``forward_inference`` (ranks by
    the confidence of Eq. 5, computed before the top-k candidate selection). Anchor labelling,
    the classification and box losses (Eqs. 1, 2) and their normaliser are RetinaNet's.
    """

    @configurable
    def __init__(
        self,
        *,
        iou_alpha: float = 0.5,
        iou_loss_type: str = "bce",
        iou_loss_weight: float = 1.0,
        iou_target_gradient: bool = True,
        **kwargs,
    ):
        """
        Args:
            iou_alpha: alpha of Eq. 5, in [0, 1]; negative for the plain product p * IoU.
            iou_loss_type: "bce" or "l2" (Table 2).
            iou_loss_weight: weight of L_IoU in Eq. 4.
            iou_target_gradient: whether the IoU target carries gradient into the box regression.
            kwargs: the arguments of :class:`RetinaNet`; ``head`` must also return IoU logits.
        """
        super().__init__(**kwargs)
        self.iou_alpha = check_alpha(iou_alpha)
        if iou_loss_type not in IOU_LOSS_TYPES:
            raise ValueError(
                f"MODEL.IOU_AWARE.LOSS_TYPE must be one of {IOU_LOSS_TYPES}, got {iou_loss_type!r}"
            )
        self.iou_loss_type = iou_loss_type
        self.iou_loss_weight = float(iou_loss_weight)
        self.iou_target_gradient = bool(iou_target_gradient)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        ret = super().from_config(cfg)
        backbone_shape = ret["backbone"].output_shape()
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        ret["head"] = IoUAwareRetinaNetHead(cfg, feature_shapes)
        ret.update(
            iou_alpha=check_alpha(cfg.MODEL.IOU_AWARE.ALPHA, default=0.5),
            iou_loss_type=cfg.MODEL.IOU_AWARE.LOSS_TYPE,
            iou_loss_weight=cfg.MODEL.IOU_AWARE.LOSS_WEIGHT,
            iou_target_gradient=cfg.MODEL.IOU_AWARE.TARGET_GRADIENT,
        )
        return ret

    def forward_training(self, images, features, predictions, gt_instances) -> Dict[str, Tensor]:
        """
        Returns:
            RetinaNet's "loss_cls" and "loss_box_reg", plus "loss_iou" (Eq. 3, weighted by
            LOSS_WEIGHT), all normalised by RetinaNet's EMA of the number of positive anchors.
        """
        pred_logits, pred_anchor_deltas, pred_iou_logits = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        # Updates self.loss_normalizer, the N_pos of Eqs. 1-3.
        losses = self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

        losses["loss_iou"] = self.iou_branch_losses(
            anchors, pred_anchor_deltas, gt_labels, torch.stack(gt_boxes), pred_iou_logits)
        return losses

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        """
        Returns:
            #images Instances with "pred_boxes", "pred_classes", "scores" (the Eq. 5 confidence
            S_det), "cls_scores" (p) and "pred_ious" (the predicted IoU).
        """
        pred_logits, pred_anchor_deltas, pred_iou_logits = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)

        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            cls_scores = [x[img_idx].sigmoid() for x in pred_logits]  # (HWA, K) per level
            pred_ious = [x[img_idx].sigmoid() for x in pred_iou_logits]  # (HWA, 1) per level
            # Eq. 5 ranks the candidates in top-k, the score threshold and NMS (computed before
            # the top-k candidate selection, as in the authors' code).
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            extra_fields = [
                {"cls_scores": p, "pred_ious": iou} for p, iou in zip(cls_scores, pred_ious)
            ]
            results.append(
                self.inference_single_image(
                    anchors, cls_scores, deltas_per_image, image_size, quality=pred_ious,
                    extra_fields=extra_fields,
                )
            )
        return results
