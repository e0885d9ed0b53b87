"""Which device a config runs on when ``MODEL.DEVICE`` asks for CUDA and there is none.

Detectron2's default ``MODEL.DEVICE`` is ``"cuda"``. On a machine whose torch cannot use CUDA (no
GPU, a CPU-only torch build, or a driver older than the CUDA that torch was built for) the rule of
:func:`resolve_device` is:

- ``MODEL.ALLOW_CPU_FALLBACK: True`` (the embedded configs, ``configs/Base-Shapes-*.yaml``: sized
  to run anywhere): the config runs on the CPU, with a WARNING that names both devices.
  ``train_net.py`` logs it in the log's first lines and again at the end of training or evaluation
  (:func:`device_fallback_warning`). Unless ``SOLVER.AMP.ENABLED`` is True: Detectron2's
  ``AMPTrainer`` asserts that CUDA is available at its first step, so that is a ``RuntimeError``
  naming ``SOLVER.AMP.ENABLED`` and the fix, at config time.
- ``False`` (the default: the paper-scale COCO configs and any config of one's own): a
  ``RuntimeError`` naming the key, why CUDA is unavailable, and the fix. A COCO training must not
  run on the CPU unnoticed, nor ``--num-gpus 8`` start 8 CPU processes.
"""
import os
from typing import Optional

import torch
from detectron2.config import CfgNode

__all__ = ["cuda_unavailable_reason", "device_fallback_warning", "resolve_device"]

# The warning of this process's last fallback (None: its last resolve_device kept the device).
_fallback_warning: Optional[str] = None


def cuda_unavailable_reason() -> str:
    """Why torch cannot use CUDA here, in one line: torch's version, the CUDA version it was built
    for, and torch's own CUDA initialisation error (which names a missing or too old driver)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    parts = [f"torch {torch.__version__} built for CUDA {torch.version.cuda}"]
    try:
        torch.cuda.init()
    except Exception as e:  # noqa: BLE001  torch raises RuntimeError or AssertionError
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        parts.append(f"torch.cuda.init(): {lines[0] if lines else type(e).__name__}")
    else:
        parts.append(f"{torch.cuda.device_count()} CUDA device(s) visible")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        parts.append(f"CUDA_VISIBLE_DEVICES={visible!r}")
    return "; ".join(parts)


def resolve_device(cfg: CfgNode) -> Optional[str]:
    """Apply the device rule of this module to the unfrozen ``cfg``, in place.

    Args:
        cfg: a merged config with ``MODEL.DEVICE`` and ``MODEL.ALLOW_CPU_FALLBACK``.

    Returns:
        None if ``MODEL.DEVICE`` stays as it is (CUDA available, or a non-CUDA device asked for);
        otherwise the WARNING text of the fallback, after ``MODEL.DEVICE`` was set to ``"cpu"``.
        The text is also kept for :func:`device_fallback_warning`.

    Raises:
        RuntimeError: ``MODEL.DEVICE`` is CUDA, CUDA is unavailable, and the config does not allow
            the CPU fallback or asks for mixed precision (``SOLVER.AMP.ENABLED``: Detectron2's
            ``AMPTrainer`` needs CUDA).
    """
    global _fallback_warning
    _fallback_warning = None
    device = str(cfg.MODEL.DEVICE)
    if not device.startswith("cuda") or torch.cuda.is_available():
        return None
    reason = cuda_unavailable_reason()
    if torch.version.cuda is None:
        fix = "install a CUDA build of torch (constraints.txt pins the version)"
    else:
        fix = (f"install an NVIDIA driver that supports CUDA {torch.version.cuda}, or a torch "
               "build for the CUDA version of the driver (nvidia-smi's header names it)")
    if not cfg.MODEL.ALLOW_CPU_FALLBACK:
        raise RuntimeError(
            f"MODEL.DEVICE {device!r} but torch.cuda.is_available() is False ({reason}). To train "
            f"on the GPU, {fix}; or pass MODEL.DEVICE cpu to run this config on the CPU "
            "(MODEL.ALLOW_CPU_FALLBACK is False for it: it is not meant for a CPU).")
    if cfg.SOLVER.AMP.ENABLED:
        # Detectron2's AMPTrainer (v0.6 and main) asserts torch.cuda.is_available() in run_step:
        # the fallback would fail at the first iteration, after the data and model were built.
        raise RuntimeError(
            f"SOLVER.AMP.ENABLED True needs CUDA (Detectron2's AMPTrainer runs CUDA autocast), but "
            f"MODEL.DEVICE {device!r} would fall back to the CPU: torch.cuda.is_available() is "
            f"False ({reason}). Pass SOLVER.AMP.ENABLED False to train on the CPU; or, to train "
            f"on the GPU with mixed precision, {fix}.")
    cfg.MODEL.DEVICE = "cpu"
    _fallback_warning = (
        f"Running on device 'cpu', not MODEL.DEVICE {device!r}: torch.cuda.is_available() is "
        f"False ({reason}). This config allows it (MODEL.ALLOW_CPU_FALLBACK True); pass "
        "MODEL.DEVICE cpu to ask for the CPU.")
    return _fallback_warning


def device_fallback_warning() -> Optional[str]:
    """The WARNING of the last :func:`resolve_device` call of this process if it moved the config
    to the CPU, else None; for the log's first lines and the final summary."""
    return _fallback_warning
