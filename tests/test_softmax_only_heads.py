"""Detectron2 main's sigmoid / federated classification keys are refused by our softmax heads.

Main's ``FastRCNNOutputLayers`` reads ``MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE`` and ``USE_FED_LOSS``
(absent in v0.6, where they are added by hand here). Our heads and predictors classify with the
softmax cross-entropy, so they must refuse the keys with an error naming the key, before anything
is built (d2infra.modeling.box_predictor: the heads' SoftmaxClassificationMixin, and the predictor
registry's builder).
"""
import pytest
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from d2infra.modeling import build_box_predictor

from train_net import build_cfg

CONFIGS = [
    "configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml",  # R3CNNROIHeads, FastRCNNOutputLayers
    "configs/offset_bin/offset_bin_faster_rcnn_smallR_FPN_shapes.yaml",  # OffsetBinROIHeads
    "configs/offset_bin/offset_bin_cascade_rcnn_smallR_FPN_shapes.yaml",  # OffsetBinCascadeROIHeads
]


def _cfg(config, **keys):
    cfg = build_cfg(config, []).clone()
    cfg.defrost()
    for key, value in keys.items():
        setattr(cfg.MODEL.ROI_BOX_HEAD, key, value)
    return cfg


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("key", ["USE_SIGMOID_CE", "USE_FED_LOSS"])
def test_heads_refuse_main_classification_keys(config, key):
    # USE_FED_LOSS needs USE_SIGMOID_CE in Detectron2 main; each key alone names itself.
    cfg = _cfg(config, USE_SIGMOID_CE=key == "USE_SIGMOID_CE", USE_FED_LOSS=key == "USE_FED_LOSS")
    with pytest.raises(ValueError, match=f"MODEL.ROI_BOX_HEAD.{key}=True is not supported by "
                                         r"\w+: it classifies with the softmax"):
        build_model(cfg)


def test_predictor_builder_refuses_them():
    cfg = _cfg(CONFIGS[1], USE_SIGMOID_CE=True, USE_FED_LOSS=False)
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "OffsetBinOutputLayers"
    with pytest.raises(ValueError, match="USE_SIGMOID_CE=True is not supported by OffsetBinOutput"):
        build_box_predictor(cfg, ShapeSpec(channels=16))


def test_heads_build_with_the_keys_off():
    cfg = _cfg(CONFIGS[2], USE_SIGMOID_CE=False, USE_FED_LOSS=False)
    cfg.MODEL.DEVICE = "cpu"
    assert build_model(cfg).roi_heads.box_predictor is not None
