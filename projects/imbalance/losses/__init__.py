"""Losses shared by the imbalance toolkit: GHM-C and GHM-R for dense heads (Li et al.) and per-RoI
Fast R-CNN losses (for OHEM's hard-example mining and for per-RoI loss weights such as PISA's)."""
from .fast_rcnn import fast_rcnn_per_roi_losses
from .ghm import GHMCLoss, GHMRLoss

__all__ = ["GHMCLoss", "GHMRLoss", "fast_rcnn_per_roi_losses"]
