"""Losses shared by the imbalance toolkit: GHM-C for dense heads (Li et al.) and per-RoI Fast R-CNN
losses (for OHEM's hard-example mining and for per-RoI loss weights such as PISA's)."""
from .fast_rcnn import fast_rcnn_per_roi_losses
from .ghm import GHMCLoss

__all__ = ["GHMCLoss", "fast_rcnn_per_roi_losses"]
