"""IoU-aware single-stage detectors (Wu et al.): an IoU prediction branch on RetinaNet and FCOS, the
detection confidence p^alpha * IoU^(1 - alpha), and a localization-quality evaluator.

``import iou_aware; iou_aware.add_iou_aware_config(cfg)`` registers ``IoUAwareRetinaNet``,
``ConfigurableFCOS`` and ``IoUAwareFCOS`` in Detectron2's META_ARCH_REGISTRY.
"""
from . import fcos as _fcos  # noqa: F401  registration
from . import retinanet as _retinanet  # noqa: F401  registration
from .config import add_iou_aware_config
from .evaluator import LocalizationQualityEvaluator, build_localization_evaluator
from .fcos import ConfigurableFCOS, IoUAwareFCOS, IoUAwareFCOSHead
from .iou_branch import detection_confidence, iou_prediction_loss
from .retinanet import IoUAwareRetinaNet, IoUAwareRetinaNetHead

__all__ = [
    "add_iou_aware_config",
    "IoUAwareRetinaNet",
    "IoUAwareRetinaNetHead",
    "ConfigurableFCOS",
    "IoUAwareFCOS",
    "IoUAwareFCOSHead",
    "LocalizationQualityEvaluator",
    "build_localization_evaluator",
    "detection_confidence",
    "iou_prediction_loss",
]
