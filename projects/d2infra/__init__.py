"""Detectron2 infrastructure shared by the three projects; none of it is a paper's method.

- :mod:`d2infra.data`: the embedded synthetic ``shapes_*`` datasets and COCO-format datasets named
  in the config (``DATASETS.COCO_FORMAT``);
- :mod:`d2infra.ops`: a pure-PyTorch replacement for ``detectron2._C`` (Detectron2's compiled ops);
- :mod:`d2infra.engine`: the CPU multi-process launch, full-model gradient clipping and the device
  rule of ``MODEL.DEVICE`` (:func:`resolve_device`);
- :mod:`d2infra.evaluation`: whether Detectron2's fast C++ COCOeval is installed
  (:func:`fast_coco_eval_available`);
- :mod:`d2infra.modeling`: the small CPU backbone, the RoI box-predictor registry, and RoIAlign
  on every CPU thread with torchvision's output and gradient (``modeling/roi_align.py``).

Importing this package registers the ``shapes_*`` datasets, the small backbones in
``BACKBONE_REGISTRY`` and the predictor registry. ``add_d2infra_config(cfg)`` adds the keys these
parts read; every project's ``add_<project>_config`` calls it.
"""
from . import data  # noqa: F401  registration
from . import modeling  # noqa: F401  registration
from .config import add_d2infra_config
from .engine.device import device_fallback_warning, resolve_device
from .evaluation import coco_eval_class, fast_coco_eval_available

__all__ = [
    "add_d2infra_config",
    "coco_eval_class",
    "device_fallback_warning",
    "fast_coco_eval_available",
    "resolve_device",
]
