"""The imbalance toolkit of the two reviews (Oksuz et al.; Chen et al.), shared by the projects.

Importing this package registers: the RoI sampler registry and its samplers (random 1:3, OHEM,
IoU-balanced, PISA), the sampling ROI heads, RetinaNet with GHM-C, the Fast R-CNN predictor with
per-RoI loss weights, and the diagnostics that measure imbalance during training. The Detectron2
infrastructure the projects share (datasets, ops, launch, backbone) is in :mod:`d2infra`.
"""
from . import modeling  # noqa: F401  registration
from . import samplers  # noqa: F401  registration
from .config import add_imbalance_config

__all__ = ["add_imbalance_config"]
