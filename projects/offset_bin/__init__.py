"""Offset Bin Classification Network (Qiu et al., "Offset Bin Classification Network for Accurate
Object Detection"): box offsets classified into bins (Eq. 5) with a cross-entropy loss (Eq. 7),
decoded by expectation (Eq. 10) and refined by hierarchical focusing (Eq. 11).

Importing this package registers ``OffsetBinOutputLayers`` in the shared box-predictor registry and
``OffsetBinROIHeads`` / ``OffsetBinCascadeROIHeads`` in Detectron2's ``ROI_HEADS_REGISTRY``.
"""
from . import output_layers  # noqa: F401  registration
from . import roi_heads  # noqa: F401  registration
from .coder import OffsetBinCoder
from .config import add_offset_bin_config
from .output_layers import OffsetBinOutputLayers
from .roi_heads import OffsetBinCascadeROIHeads, OffsetBinROIHeads

__all__ = [
    "add_offset_bin_config",
    "OffsetBinCoder",
    "OffsetBinOutputLayers",
    "OffsetBinROIHeads",
    "OffsetBinCascadeROIHeads",
]
