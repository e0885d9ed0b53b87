"""The installed Detectron2 ships what upstream's wheel ships under ``detectron2.projects`` (its
setup.py's PROJECTS, v0.6 and main alike): PointRend, DeepLab and Panoptic-DeepLab, importable
from a user's code as ``detectron2.projects.<name>``."""
import importlib.util
from pathlib import Path

import pytest

import detectron2

INSTALLED = Path(detectron2.__file__).resolve().parent


@pytest.mark.parametrize("name", ["point_rend", "deeplab", "panoptic_deeplab"])
def test_project_is_in_the_installed_package(name):
    spec = importlib.util.find_spec(f"detectron2.projects.{name}")
    assert spec is not None and spec.origin is not None
    # Installed inside the detectron2 package (not found through a source checkout's projects/).
    assert Path(spec.origin).resolve() == INSTALLED / "projects" / name / "__init__.py"


def test_point_rend_registers_its_heads_and_config():
    from detectron2.config import get_cfg
    from detectron2.modeling import ROI_HEADS_REGISTRY, ROI_MASK_HEAD_REGISTRY
    from detectron2.projects import point_rend
    from detectron2.projects.point_rend.roi_heads import PointRendROIHeads

    cfg = get_cfg()
    point_rend.add_pointrend_config(cfg)
    # Keys and values of upstream PointRend's config.py.
    assert cfg.MODEL.POINT_HEAD.NUM_CLASSES == 80 and cfg.MODEL.POINT_HEAD.FC_DIM == 256
    assert ROI_HEADS_REGISTRY.get("PointRendROIHeads") is PointRendROIHeads
    assert ROI_MASK_HEAD_REGISTRY.get("PointRendMaskHead") is point_rend.PointRendMaskHead


def test_deeplab_imports():
    from detectron2.projects.deeplab import DeepLabV3PlusHead, add_deeplab_config

    assert callable(add_deeplab_config) and DeepLabV3PlusHead.__name__ == "DeepLabV3PlusHead"


def test_model_zoo_imports_and_finds_its_configs():
    """``detectron2.model_zoo`` imports ``pkg_resources`` (setuptools < 81, constraints.txt) and
    names the configs the wheel ships."""
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert Path(path).is_file() and Path(path).resolve().is_relative_to(INSTALLED)
