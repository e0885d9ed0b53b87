"""Which COCOeval the evaluators use: Detectron2's fast C++ one when its compiled ops are installed,
pycocotools' otherwise.

Detectron2's ``COCOEvaluator(..., use_fast_impl=True)`` runs ``COCOeval_opt``
(``detectron2/evaluation/fast_eval_api.py``), whose ``evaluate`` and ``accumulate`` call
``detectron2._C.COCOevalEvaluateImages`` and ``COCOevalAccumulate``: C++ compiled with Detectron2
from source. It computes the same numbers as pycocotools' ``COCOeval``, several times faster on
COCO. Where Detectron2 comes without its compiled ops (the v0.6 build of this project, whose
``detectron2._C`` is the Python file ``d2infra/ops/detectron2_c.py``) those entry points raise, and
only pycocotools' ``COCOeval`` works.
"""
import importlib
from typing import Type

from pycocotools.cocoeval import COCOeval

__all__ = ["coco_eval_class", "fast_coco_eval_available"]


def fast_coco_eval_available() -> bool:
    """True if ``detectron2._C`` is Detectron2's compiled extension with the fast COCOeval entry
    points (``use_fast_impl=True`` of ``COCOEvaluator`` works), False otherwise (no Detectron2
    ops, or the pure-PyTorch replacement ``d2infra.ops.detectron2_c``)."""
    try:
        ops = importlib.import_module("detectron2._C")
    except ImportError:
        return False
    origin = getattr(ops, "__file__", None) or ""
    if origin.endswith(".py"):  # a Python module, not the compiled extension
        return False
    return all(hasattr(ops, name) for name in (
        "InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate"))


def coco_eval_class() -> Type[COCOeval]:
    """Detectron2's ``COCOeval_opt`` when :func:`fast_coco_eval_available`, else pycocotools'
    ``COCOeval``; both take ``(coco_gt, coco_dt, iou_type)`` and fill ``eval["precision"]``
    alike."""
    if fast_coco_eval_available():
        from detectron2.evaluation.fast_eval_api import COCOeval_opt

        return COCOeval_opt
    return COCOeval
