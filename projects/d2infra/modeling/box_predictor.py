"""A registry of RoI box predictors, so a head's predictor is chosen by config.

Detectron2 v0.6's ROI heads construct ``FastRCNNOutputLayers`` directly in ``_init_box_head``. Heads
of this project build theirs through ``MODEL.ROI_BOX_HEAD.PREDICTOR`` instead, so that any predictor
(e.g. offset_bin's ``OffsetBinOutputLayers``) runs inside any head (e.g. R^3-CNN's loops).
"""
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.utils.registry import Registry

ROI_BOX_PREDICTOR_REGISTRY = Registry("ROI_BOX_PREDICTOR")
ROI_BOX_PREDICTOR_REGISTRY.__doc__ = """
Registry of RoI box predictors, chosen by ``MODEL.ROI_BOX_HEAD.PREDICTOR``. A registered class is
built as ``cls(cfg, input_shape, **kwargs)``, like ``FastRCNNOutputLayers``.
"""
ROI_BOX_PREDICTOR_REGISTRY.register(FastRCNNOutputLayers)


def build_box_predictor(cfg: CfgNode, input_shape: ShapeSpec, **kwargs):
    """Build the predictor named by ``MODEL.ROI_BOX_HEAD.PREDICTOR``; ``kwargs`` override its
    config-derived arguments (e.g. ``box2box_transform`` for a cascade stage)."""
    name = cfg.MODEL.ROI_BOX_HEAD.PREDICTOR
    if name not in ROI_BOX_PREDICTOR_REGISTRY:
        raise ValueError(f"MODEL.ROI_BOX_HEAD.PREDICTOR={name!r} is not registered; known: "
                         f"{sorted(k for k, _ in ROI_BOX_PREDICTOR_REGISTRY)}")
    return ROI_BOX_PREDICTOR_REGISTRY.get(name)(cfg, input_shape, **kwargs)


class PredictorFromConfigMixin:
    """Mix in before ``StandardROIHeads`` (or a subclass) to build ``box_predictor`` by config."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        # Detectron2's head already built a FastRCNNOutputLayers: keep it, so that one seed gives
        # the same weights as Detectron2; build (and initialise) another predictor only if asked.
        if cfg.MODEL.ROI_BOX_HEAD.PREDICTOR != "FastRCNNOutputLayers":
            ret["box_predictor"] = build_box_predictor(cfg, ret["box_head"].output_shape)
        return ret
