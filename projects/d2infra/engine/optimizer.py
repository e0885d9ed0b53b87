"""Detectron2's optimizer, plus gradient clipping of the whole model's gradient norm.

Detectron2's ``SOLVER.CLIP_GRADIENTS`` clips each parameter's gradient on its own (``"value"`` or
``"norm"``). ``CLIP_TYPE: "full_model"`` (the name Detectron2's DETR project gives it) clips the
norm of all gradients together, ``torch.nn.utils.clip_grad_norm_(params, CLIP_VALUE, NORM_TYPE)``,
as MMDetection's ``grad_clip=dict(max_norm=..., norm_type=...)`` does: a step whose norm exceeds
``CLIP_VALUE`` is scaled down to it, the others are left as they are. The norm before clipping is
logged as ``grad_norm`` and the number of clipped steps as ``grad_clipped_steps`` (counted from the
start of this process: a resumed run counts from the resume).
"""
from typing import Iterable

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping
from detectron2.utils.events import get_event_storage

FULL_MODEL = "full_model"


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Detectron2's :func:`~detectron2.solver.build_optimizer`, which also understands
    ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"``."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL):
        return d2_build_optimizer(cfg, model)
    if not clip.CLIP_VALUE > 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0 for CLIP_TYPE "
                         f"{FULL_MODEL!r}, got {clip.CLIP_VALUE}")
    plain = cfg.clone()
    plain.defrost()
    plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
    optimizer = d2_build_optimizer(plain, model)
    clipper = _FullModelClipper(clip.CLIP_VALUE, clip.NORM_TYPE)
    optimizer.__class__ = _generate_optimizer_class_with_gradient_clipping(
        type(optimizer), global_clipper=clipper)
    return optimizer


class _FullModelClipper:
    """Clips the norm of all gradients to ``max_norm``; logs the norm and the clipped steps."""

    def __init__(self, max_norm: float, norm_type: float):
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)
        self.clipped_steps = 0

    def __call__(self, params: Iterable[torch.nn.Parameter]) -> None:
        params = [p for p in params if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type))
        self.clipped_steps += int(norm > self.max_norm)
        try:
            storage = get_event_storage()
        except AssertionError:  # stepping outside a trainer: nothing to log to
            return
        storage.put_scalar("grad_norm", norm)
        storage.put_scalar("grad_clipped_steps", self.clipped_steps, smoothing_hint=False)
