"""CUDA's autocast rules inside CPU autocast, for the mixed-precision tests (tests/test_amp.py,
tests/test_coco_configs_step.py).

CPU autocast (bfloat16) is not CUDA's (float16): CUDA's runs ``softmax``, ``log_softmax``,
``softplus``, ``pow``, ``sum``, ... in float32 where the CPU's keeps bfloat16, and the CPU's
promotes ``index_copy`` to the widest input dtype where CUDA's does not (PyTorch's "Autocast Op
Reference"). :class:`CudaAutocastRules` runs, inside CPU autocast, the ops of CUDA's float32 list
in float32, ``grid_sample`` in its widest input dtype (CPU autocast runs it in float32), and
refuses what CUDA's autocast refuses (``index_copy`` of mixed dtypes, ``binary_cross_entropy`` of
half inputs), so that a model's step meets CUDA's dtypes on the CPU.

It also records the dtypes that reach the ops whose result, or failure, depends on the dtypes of
their inputs and which autocast leaves alone (masked assignment / ``index_put_``, ``scatter*``,
``index_copy``, ``index_add``, ``where``, ``cat``, ``stack``, ``masked_fill``) when this project's
code (``projects/``) calls them: :attr:`CudaAutocastRules.sites`.
"""
import contextlib
import functools
import os
import sys
from typing import Dict, Iterator, Set

import torch
from torch.overrides import TorchFunctionMode

__all__ = [
    "HALF", "HALF_SITES", "CUDA_FLOAT32_OPS", "DTYPE_SITE_OPS", "CudaAutocastRules",
    "cuda_like_autocast",
]

HALF = [torch.bfloat16, torch.float16]
PROJECTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects")

# PyTorch's "Autocast Op Reference", CUDA ops that autocast to float32 (Python-level names).
CUDA_FLOAT32_OPS = {
    "__pow__", "__rdiv__", "__rpow__", "__rtruediv__", "acos", "asin",
    "binary_cross_entropy_with_logits", "cosh", "cosine_embedding_loss", "cdist",
    "cosine_similarity", "cross_entropy", "cumprod", "cumsum", "dist", "erfinv", "exp", "expm1",
    "group_norm", "hinge_embedding_loss", "kl_div", "l1_loss", "layer_norm", "log", "log_softmax",
    "log10", "log1p", "log2", "margin_ranking_loss", "mse_loss", "multilabel_margin_loss",
    "multi_margin_loss", "nll_loss", "norm", "normalize", "pdist", "poisson_nll_loss", "pow",
    "prod", "reciprocal", "rsqrt", "sinh", "smooth_l1_loss", "soft_margin_loss", "softmax",
    "softmin", "softplus", "sum", "renorm", "tan", "triplet_margin_loss",
}

# Ops that neither autocast casts for us on both devices: the in-place ones need one dtype
# (``index_put_``: "Index put requires the source and destination dtypes match"), the others
# promote, so their result's dtype follows their inputs'.
DTYPE_SITE_OPS = {
    "__setitem__", "index_put", "index_put_", "scatter", "scatter_", "scatter_add",
    "scatter_add_", "scatter_reduce", "scatter_reduce_", "index_copy", "index_copy_", "index_add",
    "index_add_", "where", "cat", "stack", "masked_fill", "masked_fill_", "masked_scatter",
    "masked_scatter_",
}
# The functions of projects/ that pass a float16/bfloat16 tensor to one of DTYPE_SITE_OPS under
# autocast (found by CudaAutocastRules in the training steps and inference of every embedded and
# COCO config), and the test of tests/test_amp.py that calls each with half inputs. Every other
# call site of these ops met only float32 (or integer) tensors there.
HALF_SITES = {
    # cat of the levels' (half) deltas and IoU logits
    "iou_aware/iou_branch.py:iou_branch_loss": "test_iou_loss_is_float32_with_the_target_unrounded",
    # cat / stack of the (half) logits and deltas of the levels, float32 targets: GHM-C and GHM-R
    "imbalance/modeling/retinanet.py:losses": "test_ghm_retinanet_losses_are_float32",
    # cat of the RoI features and the pooled mask probabilities
    "r3cnn/maskiou_head.py:forward": "test_maskiou_head_takes_mixed_dtypes",
    # stack of the passes' (half) mask probabilities at inference, one dtype: half pred_masks,
    # as Detectron2's mask_rcnn_inference gives; run by r3cnn_naive_flow's inference
    "r3cnn/roi_heads.py:_forward_mask": "test_training_step_and_inference_under_autocast",
}


# Frames between a project's call and the mode: torch's, this file's, Detectron2's ``cat`` wrapper.
_PASS_THROUGH = (os.path.dirname(torch.__file__), os.path.abspath(__file__),
                 os.path.join("detectron2", "layers", "wrappers.py"))


def _float_dtypes(args, kwargs) -> Set[torch.dtype]:
    found = set()

    def walk(a):
        if isinstance(a, torch.Tensor):
            if a.is_floating_point():
                found.add(a.dtype)
        elif isinstance(a, (list, tuple)):
            for x in a:
                walk(x)

    walk(args)
    walk(list(kwargs.values()))
    return found


def _to_float32(a):
    if isinstance(a, torch.Tensor) and a.dtype in HALF:
        return a.float()
    if isinstance(a, (list, tuple)):
        return type(a)(_to_float32(x) for x in a)
    return a


def _project_caller() -> str:
    """``path/in/projects.py:function`` of the call being intercepted, if the first frame outside
    torch and this file is this project's code; else ''."""
    frame = sys._getframe(2)
    while frame is not None and any(p in frame.f_code.co_filename for p in _PASS_THROUGH):
        frame = frame.f_back
    if frame is None or not frame.f_code.co_filename.startswith(PROJECTS + os.sep):
        return ""
    return f"{os.path.relpath(frame.f_code.co_filename, PROJECTS)}:{frame.f_code.co_name}"


class CudaAutocastRules(TorchFunctionMode):
    """Inside ``torch.autocast("cpu")``: CUDA's float32 ops get float32 inputs and ``grid_sample``
    its widest input dtype (so their outputs have CUDA's dtype), and the calls CUDA's autocast
    would fail on raise.

    ``sites`` maps each ``projects/`` function that called one of :data:`DTYPE_SITE_OPS` under
    autocast (``"imbalance/losses/fast_rcnn.py:fast_rcnn_per_roi_losses"``) to the floating dtypes
    of those calls' inputs."""

    def __init__(self):
        super().__init__()
        self.sites: Dict[str, Set[torch.dtype]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if torch.is_autocast_enabled("cpu"):
            dtypes = _float_dtypes(args, kwargs)
            if name == "index_copy" and len(dtypes) > 1:
                raise RuntimeError(f"CUDA autocast does not promote index_copy: {dtypes}")
            if name == "binary_cross_entropy" and dtypes & set(HALF):
                raise RuntimeError("binary_cross_entropy is banned under CUDA autocast")
            if name in DTYPE_SITE_OPS:
                site = _project_caller()
                if site:
                    self.sites.setdefault(site, set()).update(dtypes)
            if name in CUDA_FLOAT32_OPS and dtypes & set(HALF):
                args, kwargs = _to_float32(tuple(args)), {k: _to_float32(v) for k, v in
                                                          kwargs.items()}
            if name == "grid_sample":  # CPU autocast: float32; CUDA's: the widest input dtype
                widest = functools.reduce(torch.promote_types, dtypes)
                args = tuple(a.to(widest) if isinstance(a, torch.Tensor) and a.is_floating_point()
                             else a for a in args)
                with torch.autocast("cpu", enabled=False):
                    return func(*args, **kwargs)
        return func(*args, **kwargs)

    def half_sites(self) -> Set[str]:
        """The recorded sites that received a float16/bfloat16 tensor."""
        return {site for site, dtypes in self.sites.items() if dtypes & set(HALF)}


@contextlib.contextmanager
def cuda_like_autocast() -> Iterator[CudaAutocastRules]:
    """CPU bfloat16 autocast with :class:`CudaAutocastRules`; yields the rules (for ``sites``)."""
    with torch.autocast("cpu", dtype=torch.bfloat16), CudaAutocastRules() as rules:
        yield rules
