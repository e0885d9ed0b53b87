from .box_predictor import (
    ROI_BOX_PREDICTOR_REGISTRY,
    PredictorFromConfigMixin,
    build_box_predictor,
)
from .backbone import (
    build_small_resnet_backbone,
    build_small_resnet_fpn_backbone,
    build_small_retinanet_resnet_fpn_backbone,
)
from . import retinanet, weighted_fast_rcnn  # noqa: F401  registration
