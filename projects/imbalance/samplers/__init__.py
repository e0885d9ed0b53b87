from .base import (
    ROI_SAMPLER_REGISTRY,
    Candidates,
    RandomSampler,
    RoISampler,
    SampledRoIs,
    build_roi_sampler,
    register_alias,
)
from .iou_balanced import IoUBalancedSampler
from .ohem import OHEMSampler
from .pisa import PISASampler
from .roi_heads import RoISamplingMixin, SamplingCascadeROIHeads, SamplingStandardROIHeads
