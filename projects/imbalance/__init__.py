"""Shared parts of the project's Detectron2 projects.

Importing this package registers: the RoI sampler registry and its samplers, the box-predictor
registry, the sampling ROI heads, the small CPU backbone, and the embedded ``shapes_*`` datasets.
"""
from . import data  # noqa: F401  registration
from . import modeling  # noqa: F401  registration
from . import samplers  # noqa: F401  registration
from .config import add_imbalance_config

__all__ = ["add_imbalance_config"]
