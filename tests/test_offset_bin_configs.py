"""Every config of configs/offset_bin merges; the embedded ones build the model they name."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from imbalance import add_imbalance_config
from offset_bin import OffsetBinCascadeROIHeads, OffsetBinOutputLayers, OffsetBinROIHeads
from offset_bin import add_offset_bin_config
from offset_bin.output_layers import _resolve_cls_agnostic

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "offset_bin"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def load(path: Path):
    cfg = get_cfg()
    add_imbalance_config(cfg)
    add_offset_bin_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    for name in ("offset_bin_faster_rcnn_smallR_FPN_shapes.yaml",
                 "offset_bin_cascade_rcnn_smallR_FPN_shapes.yaml",
                 "offset_bin_faster_rcnn_R_50_FPN_1x_coco.yaml",
                 "offset_bin_cascade_rcnn_R_101_FPN_1x_coco.yaml"):
        assert name in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_merges(path):
    cfg = load(path)
    name = path.stem
    assert cfg.OUTPUT_DIR.endswith(name)
    if not name.startswith("offset_bin"):  # a baseline: Detectron2's 2-stage Cascade R-CNN
        assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
        assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5, 0.7]
        return
    cascade = "cascade" in name
    assert cfg.MODEL.ROI_HEADS.NAME == (
        "OffsetBinCascadeROIHeads" if cascade else "OffsetBinROIHeads")
    expected_k = 2 if ("K2" in name or (not cascade and "K1" not in name)) else 1
    assert cfg.MODEL.OFFSET_BIN.NUM_STAGES == expected_k
    assert cfg.MODEL.OFFSET_BIN.EXPECTATION is ("argmax" not in name)
    assert (cfg.MODEL.OFFSET_BIN.RANGE, cfg.MODEL.OFFSET_BIN.NUM_BINS) == (3.0, 20)
    # One set of 4n bin scores per RoI (section 3.2.2), whatever the baseline's regression.
    assert _resolve_cls_agnostic(cfg) is True
    if cascade:
        assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5, 0.7]  # section 4.2
    if "R_101" in name or "X_101" in name:
        assert cfg.MODEL.RESNETS.DEPTH == 101


@pytest.mark.parametrize(
    "name, head",
    [("offset_bin_faster_rcnn_smallR_FPN_shapes", OffsetBinROIHeads),
     ("offset_bin_cascade_rcnn_smallR_FPN_shapes", OffsetBinCascadeROIHeads)],
)
def test_embedded_model_builds(name, head):
    cfg = load(CONFIG_DIR / f"{name}.yaml")
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.roi_heads, head)
    predictors = model.roi_heads.box_predictor
    predictors = predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]
    assert all(isinstance(p, OffsetBinOutputLayers) for p in predictors)
    assert len(predictors) == (2 if head is OffsetBinCascadeROIHeads else 1)
