"""FCOS from yaml configs, and IoU-aware FCOS: the IoU branch of section 3.1 on FCOS. As in the
authors' code, centerness stays trained and the detections are ranked by p^0.3 * IoU^0.7; the
predicted IoU can instead replace centerness or multiply with it
(``MODEL.IOU_AWARE.FCOS_CENTERNESS``).

Detectron2 ships :class:`FCOS` only for LazyConfig (no ``from_config``, not registered);
:class:`ConfigurableFCOS` adds the ``MODEL.FCOS`` keys and registers it, unchanged otherwise.
Works with Detectron2 v0.6 and main (see :data:`_FCOS_MATCHES_TENSORS`).
"""
import logging
import math
from typing import Dict, List

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead
from detectron2.structures import Boxes, ImageList, Instances

from d2infra.modeling.precision import upcast

from .iou_branch import (
    IOU_LOSS_TYPES,
    IoUConfidenceDecodingMixin,
    check_alpha,
)

__all__ = ["ConfigurableFCOS", "IoUAwareFCOSHead", "IoUAwareFCOS"]

logger = logging.getLogger(__name__)

FCOS_CENTERNESS_MODES = ("train_only", "replace", "multiply")
# The confidence exponent of the authors' IoU-aware FCOS (iou_aware_fcos_head.py, get_bboxes_single:
# ``alpha = 0.3``); MODEL.IOU_AWARE.ALPHA None selects it for IoUAwareFCOS.
FCOS_DEFAULT_ALPHA = 0.3

# Detectron2 after v0.6 (``FCOS._match_anchors``, main at 02b5c4e) matches anchors to plain tensors
# of ground-truth boxes and labels images without ground truth itself; v0.6 (``match_anchors``)
# returns ``Boxes`` and fails on such images. Feature-detected, not read from a version string.
_FCOS_MATCHES_TENSORS = hasattr(FCOS, "_match_anchors")


def _box_tensor(boxes) -> Tensor:
    """The (R, 4) tensor of matched boxes from ``label_anchors``: ``Boxes`` (v0.6) or a tensor."""
    return boxes.tensor if isinstance(boxes, Boxes) else boxes


def _group_norm_32(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Detectron2's "GN"), usable as a norm callable.

    RetinaNetHead probes its norm with ``get_norm(norm, 1)``, which recent PyTorch rejects for
    ``"GN"`` (1 channel is not divisible by 32 groups); with fewer channels than that the groups
    shrink to their gcd, which only affects that probe.
    """
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _head_norm(norm: str):
    return _group_norm_32 if norm == "GN" else norm


@META_ARCH_REGISTRY.register()
class ConfigurableFCOS(FCOS):
    """Detectron2's :class:`FCOS`, buildable from a yaml config (``MODEL.FCOS``). Nothing else is
    redefined except, under Detectron2 v0.6, the labelling of images without ground truth (which
    v0.6 fails on; main handles them), and the dtype of the box deltas in :meth:`losses` and
    :meth:`_decode_per_level_predictions` (mixed precision): this is the FCOS baseline of the
    IoU-aware FCOS."""

    @configurable
    def __init__(self, **kwargs):
        """Same arguments as :class:`FCOS`."""
        super().__init__(**kwargs)

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """FCOS's labelling (:meth:`FCOS.label_anchors`), plus images without ground truth, which
        Detectron2 0.6's fails on: all their anchors are background. Under Detectron2 main, which
        labels such images itself, this is main's own.

        Returns:
            #images label vectors (R,) in [0, K] and #images matched ground-truth boxes (R, 4):
            ``Boxes`` under v0.6, tensors under main (what that version's ``FCOS.losses`` takes).
        """
        if _FCOS_MATCHES_TENSORS:
            return super().label_anchors(anchors, gt_instances)
        num_anchors = sum(len(a) for a in anchors)
        device = anchors[0].tensor.device
        labels, boxes = [], []
        for gt_per_image in gt_instances:
            if len(gt_per_image) == 0:
                labels.append(
                    torch.full((num_anchors,), self.num_classes, dtype=torch.long, device=device)
                )
                boxes.append(Boxes(torch.zeros(num_anchors, 4, device=device)))
            else:
                labels_i, boxes_i = super().label_anchors(anchors, [gt_per_image])
                labels.append(labels_i[0])
                boxes.append(boxes_i[0])
        return labels, boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
               pred_centerness) -> Dict[str, Tensor]:
        """:meth:`FCOS.losses` with the box deltas in float32. Under mixed precision (CUDA's
        autocast as the CPU's) Detectron2 decodes float16/bfloat16 deltas into boxes of that
        dtype, and its GIoU loss (fvcore's ``giou_loss``) assigns float32 values into a buffer of
        their dtype in place, which fails; the deltas in float32 give float32 boxes."""
        pred_anchor_deltas = [upcast(d) for d in pred_anchor_deltas]
        return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                              pred_centerness)

    def _decode_per_level_predictions(self, anchors: Boxes, pred_scores: Tensor,
                                      pred_deltas: Tensor, *args, **kwargs) -> Instances:
        """Detectron2's decoding with the deltas in float32: ``Box2BoxTransformLinear`` decodes in
        the deltas' dtype, and float16 boxes are rounded to 1 pixel at 1024 (bfloat16: 8)."""
        return super()._decode_per_level_predictions(anchors, pred_scores, upcast(pred_deltas),
                                                     *args, **kwargs)

    @classmethod
    def build_head(cls, cfg, input_shape: List[ShapeSpec]) -> nn.Module:
        return FCOSHead(**cls.head_kwargs(cfg, input_shape))

    @staticmethod
    def head_kwargs(cfg, input_shape: List[ShapeSpec]) -> Dict:
        """Arguments of ``FCOSHead`` from ``MODEL.FCOS``."""
        return dict(
            input_shape=input_shape,
            conv_dims=[input_shape[0].channels] * cfg.MODEL.FCOS.NUM_CONVS,
            num_classes=cfg.MODEL.FCOS.NUM_CLASSES,
            norm=_head_norm(cfg.MODEL.FCOS.NORM),
            prior_prob=cfg.MODEL.FCOS.PRIOR_PROB,
        )

    @classmethod
    def from_config(cls, cfg) -> Dict:
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.FCOS.IN_FEATURES]
        return {
            "backbone": backbone,
            "head": cls.build_head(cfg, feature_shapes),
            "head_in_features": cfg.MODEL.FCOS.IN_FEATURES,
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "center_sampling_radius": cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA,
            "test_score_thresh": cfg.MODEL.FCOS.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.FCOS.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }


class IoUAwareFCOSHead(FCOSHead):
    """FCOS's head plus the IoU prediction conv (one 3x3 conv, one output, on the last box-tower
    feature, as the authors' ``fcos_iou`` on ``reg_feat``). With ``use_centerness=False`` the
    centerness conv is dropped ("replace"), so the IoU conv takes its place.

    Centerness stays where Detectron2's FCOS puts it, on the box tower (the baseline's head); the
    authors' head, built on an earlier FCOS, puts it on the classification tower
    (``centerness_on_cls=True``, ``MODEL.IOU_AWARE.FCOS_CENTERNESS_TOWER: "cls"``)."""

    def __init__(self, *, use_centerness: bool = True, centerness_on_cls: bool = False, **kwargs):
        """
        Args:
            use_centerness: keep FCOS's centerness conv ("train_only" and "multiply" modes).
            centerness_on_cls: run it on the classification tower's last feature instead of the
                box tower's.
            kwargs: the arguments of :class:`FCOSHead`.
        """
        super().__init__(**kwargs)
        self.use_centerness = use_centerness
        self.centerness_on_cls = bool(centerness_on_cls) and use_centerness
        if not use_centerness:
            del self.ctrness
        self.iou_pred = nn.Conv2d(self.bbox_pred.in_channels, 1, kernel_size=3, stride=1, padding=1)
        torch.nn.init.normal_(self.iou_pred.weight, std=0.01)
        torch.nn.init.constant_(self.iou_pred.bias, 0)

    def forward(self, features: List[Tensor]):
        """
        Returns:
            [logits, bbox_reg, iou_logits] (or [logits, bbox_reg, ctrness, iou_logits] with
            centerness): #levels tensors each, of shapes (N, K, Hi, Wi), (N, 4, Hi, Wi) and
            (N, 1, Hi, Wi).
        """
        assert len(features) == self._num_features
        logits, bbox_reg, ctrness, iou_logits = [], [], [], []
        for feature in features:
            cls_feature = self.cls_subnet(feature)
            logits.append(self.cls_score(cls_feature))
            bbox_feature = self.bbox_subnet(feature)
            bbox_reg.append(self.bbox_pred(bbox_feature))
            if self.use_centerness:
                ctrness.append(
                    self.ctrness(cls_feature if self.centerness_on_cls else bbox_feature)
                )
            iou_logits.append(self.iou_pred(bbox_feature))
        if self.use_centerness:
            return logits, bbox_reg, ctrness, iou_logits
        return logits, bbox_reg, iou_logits


@META_ARCH_REGISTRY.register()
class IoUAwareFCOS(IoUConfidenceDecodingMixin, ConfigurableFCOS):
    """FCOS with the IoU branch (:class:`IoUAwareFCOSHead`).

    The confidence is Eq. 5 with a localization quality q, ``S = p^alpha * q^(1 - alpha)``, computed
    on every location and class before the top-k candidate selection. By
    ``MODEL.IOU_AWARE.FCOS_CENTERNESS``:

    * "train_only" (default, the authors' code: ShengkaiWu/IoU-aware-single-stage-object-detector,
      ``mmdet/models/anchor_heads/iou_aware_fcos_head.py``): centerness is predicted and trained
      (``loss_fcos_ctr``), but does not enter the confidence: q is the predicted IoU. There,
      ``get_bboxes_single`` computes the centerness sigmoid and never uses it (the
      ``score_factors=mlvl_centerness`` call of ``multiclass_nms`` is commented out) and scores
      ``scores.pow(0.3) * iou.pow(0.7)``; hence alpha 0.3 (``FCOS_DEFAULT_ALPHA``).
    * "replace": no centerness branch nor loss; q is the predicted IoU.
    * "multiply": centerness trained; q = centerness x IoU.

    Where this follows Detectron2's FCOS rather than the authors' (an earlier mmdetection FCOS),
    because the baseline it is compared with is Detectron2's: centerness on the box tower (the
    authors' is on the classification tower, ``FCOS_CENTERNESS_TOWER: "cls"``); GIoU box loss and
    every loss, ``loss_iou`` included, normalised by FCOS's EMA of the number of positives (theirs:
    centerness-weighted IoU loss, means over the positives).

    Redefines ``forward_training`` (adds ``loss_iou``; drops ``loss_fcos_ctr`` in "replace") and
    ``forward_inference``; matching and the classification/box losses are FCOS's.
    """

    @configurable
    def __init__(
        self,
        *,
        centerness_mode: str = "train_only",
        iou_alpha: float = FCOS_DEFAULT_ALPHA,
        iou_loss_type: str = "bce",
        iou_loss_weight: float = 1.0,
        iou_target_gradient: bool = True,
        **kwargs,
    ):
        """
        Args:
            centerness_mode: "train_only", "replace" or "multiply"; must agree with the head
                (which has a centerness conv unless "replace").
            iou_alpha, iou_loss_type, iou_loss_weight, iou_target_gradient: as in
                :class:`IoUAwareRetinaNet`.
            kwargs: the arguments of :class:`FCOS`.
        """
        super().__init__(**kwargs)
        if centerness_mode not in FCOS_CENTERNESS_MODES:
            raise ValueError(
                f"MODEL.IOU_AWARE.FCOS_CENTERNESS must be one of {FCOS_CENTERNESS_MODES}, "
                f"got {centerness_mode!r}"
            )
        if iou_loss_type not in IOU_LOSS_TYPES:
            raise ValueError(
                f"MODEL.IOU_AWARE.LOSS_TYPE must be one of {IOU_LOSS_TYPES}, got {iou_loss_type!r}"
            )
        self.centerness_mode = centerness_mode
        self.use_centerness = centerness_mode != "replace"
        assert getattr(self.head, "use_centerness", None) == self.use_centerness, (
            "the head must be an IoUAwareFCOSHead with a centerness conv unless centerness_mode "
            "is 'replace'"
        )
        self.iou_alpha = check_alpha(iou_alpha)
        self.iou_loss_type = iou_loss_type
        self.iou_loss_weight = float(iou_loss_weight)
        self.iou_target_gradient = bool(iou_target_gradient)

    @classmethod
    def build_head(cls, cfg, input_shape: List[ShapeSpec]) -> nn.Module:
        tower = cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS_TOWER
        if tower not in ("box", "cls"):
            raise ValueError(
                f"MODEL.IOU_AWARE.FCOS_CENTERNESS_TOWER must be 'box' or 'cls', got {tower!r}"
            )
        return IoUAwareFCOSHead(use_centerness=cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS != "replace",
                                centerness_on_cls=tower == "cls",
                                **cls.head_kwargs(cfg, input_shape))

    @classmethod
    def from_config(cls, cfg) -> Dict:
        ret = super().from_config(cfg)
        ret.update(
            centerness_mode=cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS,
            iou_alpha=check_alpha(cfg.MODEL.IOU_AWARE.ALPHA, default=FCOS_DEFAULT_ALPHA),
            iou_loss_type=cfg.MODEL.IOU_AWARE.LOSS_TYPE,
            iou_loss_weight=cfg.MODEL.IOU_AWARE.LOSS_WEIGHT,
            iou_target_gradient=cfg.MODEL.IOU_AWARE.TARGET_GRADIENT,
        )
        return ret

    def _split_predictions(self, predictions):
        if self.use_centerness:
            return self._transpose_dense_predictions(predictions, [self.num_classes, 4, 1, 1])
        logits, deltas, iou_logits = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        return logits, deltas, None, iou_logits

    def forward_training(self, images, features, predictions, gt_instances) -> Dict[str, Tensor]:
        """
        Returns:
            FCOS's "loss_fcos_cls", "loss_fcos_loc" and "loss_fcos_ctr" (not in "replace" mode),
            plus "loss_iou" (Eq. 3), all normalised by FCOS's EMA of the number of positives.
        """
        pred_logits, pred_deltas, pred_ctrness, pred_iou_logits = self._split_predictions(
            predictions
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        if self.use_centerness:
            losses = self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ctrness)
        else:
            # FCOS.losses always computes the centerness loss; feed it constant zeros (no
            # parameters behind them) and drop it: "replace" trains no centerness.
            zeros = [torch.zeros_like(x) for x in pred_iou_logits]
            losses = self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, zeros)
            del losses["loss_fcos_ctr"]

        losses["loss_iou"] = self.iou_branch_losses(
            anchors, pred_deltas, gt_labels, torch.stack([_box_tensor(b) for b in gt_boxes]),
            pred_iou_logits,
        )
        return losses

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        """
        Returns:
            #images Instances with "pred_boxes", "pred_classes", "scores" (the Eq. 5 confidence),
            "cls_scores", "pred_ious" (and "centerness" unless in "replace" mode).
        """
        pred_logits, pred_deltas, pred_ctrness, pred_iou_logits = self._split_predictions(
            predictions
        )
        anchors = self.anchor_generator(features)

        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            cls_scores = [x[img_idx].sigmoid() for x in pred_logits]
            pred_ious = [x[img_idx].sigmoid() for x in pred_iou_logits]
            extra_fields = [{"cls_scores": p, "pred_ious": iou} for p, iou in zip(cls_scores, pred_ious)]
            quality = pred_ious  # "train_only" and "replace"
            if self.use_centerness:
                ctrness = [x[img_idx].sigmoid() for x in pred_ctrness]
                for fields, c in zip(extra_fields, ctrness):
                    fields["centerness"] = c
                if self.centerness_mode == "multiply":
                    quality = [iou * c for iou, c in zip(pred_ious, ctrness)]
            # Eq. 5 with the localization quality q ranks the candidates (before the top-k).
            deltas_per_image = [x[img_idx] for x in pred_deltas]
            results.append(
                self.inference_single_image(
                    anchors, cls_scores, deltas_per_image, image_size, quality=quality,
                    extra_fields=extra_fields,
                )
            )
        return results
