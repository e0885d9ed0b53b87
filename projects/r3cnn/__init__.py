"""R^3-CNN (Recursively Refined R-CNN) as a Detectron2 project.

``import r3cnn; r3cnn.add_r3cnn_config(cfg)`` registers ``R3CNNROIHeads`` (ROI_HEADS_REGISTRY) and
``R3CNNLightConvHead`` (ROI_BOX_HEAD_REGISTRY) and adds ``MODEL.R3CNN``.
"""
from . import box_head  # noqa: F401  registration
from . import roi_heads  # noqa: F401  registration
from .box_head import R3CNNLightConvHead
from .config import add_r3cnn_config
from .maskiou_head import MaskIoUHead
from .nonlocal_block import NonLocalBlock2d
from .roi_heads import R3CNNROIHeads

__all__ = [
    "add_r3cnn_config",
    "R3CNNROIHeads",
    "R3CNNLightConvHead",
    "MaskIoUHead",
    "NonLocalBlock2d",
]
