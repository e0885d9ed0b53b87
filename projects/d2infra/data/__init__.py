"""Datasets: the embedded synthetic "shapes" dataset and COCO-format datasets from the config.

Importing this package registers ``shapes_train`` (2000 images), ``shapes_val`` (300),
``shapes_mini_train`` (32) and ``shapes_mini_val`` (16) in Detectron2's DatasetCatalog; each is
generated on first use under ``$DETECTRON2_DATASETS/shapes`` (default ``datasets/shapes``); and
the real ``nuclei_train`` / ``nuclei_val`` (:mod:`d2infra.data.nuclei`).

:func:`d2infra.data.checks.check_datasets` checks the datasets of a run against its config (class
count, ``MODEL.MASK_ON``, degenerate boxes, missing images); ``train_net.setup`` calls it.
"""
from .catalog import (
    SHAPES_DATASETS,
    UnknownDatasetError,
    check_dataset_names,
    ensure_generated,
    register_coco_format_datasets,
    register_shapes_datasets,
)
from .nuclei import NUCLEI_DATASETS, register_nuclei_datasets
from .shapes import THING_CLASSES

register_shapes_datasets()
register_nuclei_datasets()

__all__ = [
    "NUCLEI_DATASETS",
    "SHAPES_DATASETS",
    "THING_CLASSES",
    "UnknownDatasetError",
    "check_dataset_names",
    "ensure_generated",
    "register_coco_format_datasets",
    "register_shapes_datasets",
]
