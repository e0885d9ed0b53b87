"""The dtype of losses under mixed precision (``SOLVER.AMP.ENABLED``), shared by the heads.

Under autocast a head's predictions are float16 (CUDA) or bfloat16 (CPU). The two autocasts do not
treat the same ops alike: CUDA's runs ``softmax``, ``log_softmax``, ``softplus``, ``pow`` and
``sum`` in float32 and the CPU's keeps them in the lower precision; the CPU's promotes
``index_copy`` to the widest input dtype and CUDA's does not; neither casts the destination of an
in-place ``index_put_`` (masked assignment) or ``scatter``. A loss that mixes predictions with
float32 targets through these ops can thus fail, or lose precision, on one device only. The
heads of this project compute their losses in :func:`loss_dtype` explicitly instead.
"""
import torch

__all__ = ["loss_dtype", "upcast"]


def loss_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype to compute losses of predictions ``x`` in: float32, or float64 if ``x`` is."""
    return torch.promote_types(x.dtype, torch.float32)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :func:`loss_dtype` (float16/bfloat16 -> float32; float32, float64 unchanged)."""
    return x.to(loss_dtype(x))
