"""The RoI sampler registry and its interface.

Detectron2 samples RoIs inside ``ROIHeads._sample_proposals``, which sees only matcher labels: no
IoUs, no predictions. A sampler here sees, per image, every candidate's label, its IoU with the
matched ground truth, the matched ground-truth index and, on demand, the head's predictions; it
returns the indices it keeps and a loss weight for each.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.modeling.sampling import subsample_labels
from detectron2.utils.registry import Registry

ROI_SAMPLER_REGISTRY = Registry("ROI_SAMPLER")
ROI_SAMPLER_REGISTRY.__doc__ = """
Registry of RoI samplers, chosen by ``MODEL.ROI_HEADS.SAMPLER``. A registered class is built as
``cls(cfg)`` and called as :meth:`RoISampler.__call__`.
"""


@dataclass
class SampledRoIs:
    """What a sampler returns for one image."""

    # indices into the candidates, foreground first
    indices: torch.Tensor
    # per-RoI loss weight, same length as ``indices`` (all ones for plain sampling)
    weights: torch.Tensor


@dataclass
class Candidates:
    """One image's candidate RoIs, labelled by the matcher.

    ``labels``: class in [0, K) for foreground, K for background, -1 to ignore.
    ``ious``: IoU with the matched (best) ground truth, 0 where the image has none.
    ``matched_idxs``: index of that ground truth.
    ``predictions``: a callable returning ``(scores (N, K+1) softmax, ce (N,), box (N,))`` of the
    head on all candidates without gradient: the class scores and each candidate's
    classification and box-regression loss (OHEM), for samplers whose ``needs_predictions`` is
    True.
    ``boxes``: (N, 4) candidate boxes (XYXY), for samplers that need geometry (OHEM's NMS).
    ``head``: a callable ``head(indices)`` returning the head's ``(class logits (n, K+1),
    regressed boxes (n, 4K or 4))`` on the candidates ``indices`` only, without gradient and
    without losses (PISA's negatives), for samplers whose ``needs_predictions`` is True.
    """

    labels: torch.Tensor
    ious: torch.Tensor
    matched_idxs: torch.Tensor
    num_classes: int
    predictions: Optional[Callable[[], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None
    boxes: Optional[torch.Tensor] = None
    head: Optional[Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]] = None


class RoISampler:
    """Base class: subclasses implement :meth:`__call__`."""

    # Whether __call__ needs ``candidates.predictions`` or ``candidates.head`` (OHEM, PISA): the
    # head then evaluates itself on candidates without gradient before sampling.
    needs_predictions: bool = False
    # Whether the returned weights can differ from 1 (PISA): the box predictor must then honour
    # ``proposals.loss_weights``, or they are ignored.
    produces_weights: bool = False
    # The attribute a box predictor sets to True when it applies this sampler's weights (and
    # whatever else the method needs of the predictor); the sampling heads warn when it is absent
    # and name ``predictor_name``, a registered predictor that has it.
    predictor_flag: str = "honours_loss_weights"
    predictor_name: str = "WeightedFastRCNNOutputLayers"

    def __init__(self, cfg: CfgNode):
        self.batch_size_per_image = cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
        self.positive_fraction = cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION

    def __call__(self, candidates: Candidates) -> SampledRoIs:
        raise NotImplementedError

    def head_candidates(self, candidates: Candidates) -> Optional[torch.Tensor]:
        """The candidates :meth:`__call__` will pass to ``candidates.head``, when known before
        sampling (None if not): the sampling heads then evaluate those of every image of the batch
        in one pass."""
        return None


@ROI_SAMPLER_REGISTRY.register()
class RandomSampler(RoISampler):
    """Detectron2's biased mini-batch sampling: ``BATCH_SIZE_PER_IMAGE`` RoIs, at most
    ``POSITIVE_FRACTION`` of them positive (1:3 by default), drawn uniformly at random.

    Calls :func:`detectron2.modeling.sampling.subsample_labels` exactly as
    ``StandardROIHeads._sample_proposals`` does, so the draw is bit-identical under one seed.
    """

    def __call__(self, candidates: Candidates) -> SampledRoIs:
        fg, bg = subsample_labels(
            candidates.labels, self.batch_size_per_image, self.positive_fraction,
            candidates.num_classes,
        )
        indices = torch.cat([fg, bg], dim=0)
        return SampledRoIs(indices, torch.ones(len(indices), device=indices.device))


# "random" is the config name of RandomSampler; other samplers register their own short names.
_ALIASES = {"random": "RandomSampler"}


def register_alias(name: str, class_name: str) -> None:
    """Let ``MODEL.ROI_HEADS.SAMPLER`` name a registered sampler class by a short name."""
    _ALIASES[name] = class_name


def build_roi_sampler(cfg: CfgNode) -> RoISampler:
    """Build the sampler named by ``MODEL.ROI_HEADS.SAMPLER`` (a short name or a class name)."""
    name = cfg.MODEL.ROI_HEADS.SAMPLER
    class_name = _ALIASES.get(name, name)
    if class_name not in ROI_SAMPLER_REGISTRY:
        known = sorted(set(_ALIASES) | {k for k, _ in ROI_SAMPLER_REGISTRY})
        raise ValueError(f"MODEL.ROI_HEADS.SAMPLER={name!r} is not a registered RoI sampler; "
                         f"known: {known}")
    return ROI_SAMPLER_REGISTRY.get(class_name)(cfg)
