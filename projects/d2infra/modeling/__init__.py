"""The small CPU backbone of the embedded configs, the RoI box-predictor registry, and RoIAlign
on every CPU thread (torchvision's output and gradient, bitwise)."""
from .backbone import (
    build_small_resnet_backbone,
    build_small_resnet_fpn_backbone,
    build_small_retinanet_resnet_fpn_backbone,
)
from .box_predictor import (
    ROI_BOX_PREDICTOR_REGISTRY,
    PredictorFromConfigMixin,
    SoftmaxClassificationMixin,
    build_box_predictor,
)
from .roi_align import ChannelParallelROIAlign, parallelize_roi_align

__all__ = [
    "ChannelParallelROIAlign",
    "ROI_BOX_PREDICTOR_REGISTRY",
    "PredictorFromConfigMixin",
    "SoftmaxClassificationMixin",
    "build_box_predictor",
    "build_small_resnet_backbone",
    "build_small_resnet_fpn_backbone",
    "build_small_retinanet_resnet_fpn_backbone",
    "parallelize_roi_align",
]
