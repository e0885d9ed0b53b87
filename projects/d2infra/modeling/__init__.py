"""The small CPU backbone of the embedded configs and the RoI box-predictor registry."""
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

__all__ = [
    "ROI_BOX_PREDICTOR_REGISTRY",
    "PredictorFromConfigMixin",
    "SoftmaxClassificationMixin",
    "build_box_predictor",
    "build_small_resnet_backbone",
    "build_small_resnet_fpn_backbone",
    "build_small_retinanet_resnet_fpn_backbone",
]
