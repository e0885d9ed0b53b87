"""A registry of RoI box predictors, so a head's predictor is chosen by config.

Detectron2 v0.6's ROI heads construct ``FastRCNNOutputLayers`` directly in ``_init_box_head``. Heads
of this project build theirs through ``MODEL.ROI_BOX_HEAD.PREDICTOR`` instead, so that any predictor
(e.g. offset_bin's ``OffsetBinOutputLayers``) runs inside any head (e.g. R^3-CNN's loops).

Every head and predictor of this project classifies with a softmax over K + 1 classes (Fast R-CNN's
cross-entropy; the samplers rank RoIs by it, R^3-CNN averages its probabilities over loops,
offset-bin's losses are written for it). Detectron2 main (after v0.6) adds two options to
``FastRCNNOutputLayers`` that replace it, ``MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE`` and
``USE_FED_LOSS``: our heads (:class:`SoftmaxClassificationMixin`) and the predictor builder refuse
them (:func:`check_softmax_classification`) instead of silently training with the softmax.
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

# Detectron2 main's keys (absent in v0.6) that replace the softmax cross-entropy of the box head.
NOT_SOFTMAX_KEYS = ("USE_FED_LOSS", "USE_SIGMOID_CE")


def check_softmax_classification(cfg: CfgNode, user: str) -> None:
    """Raise if the config asks for Detectron2 main's sigmoid or federated classification loss,
    which ``user`` (a head or predictor of this project) does not implement."""
    for key in NOT_SOFTMAX_KEYS:
        if cfg.MODEL.ROI_BOX_HEAD.get(key, False):
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.{key}=True is not supported by {user}: it classifies with the "
                f"softmax cross-entropy over K+1 classes. Set MODEL.ROI_BOX_HEAD.{key} False "
                "(Detectron2's own StandardROIHeads with FastRCNNOutputLayers supports it)."
            )


def build_box_predictor(cfg: CfgNode, input_shape: ShapeSpec, **kwargs):
    """Build the predictor named by ``MODEL.ROI_BOX_HEAD.PREDICTOR``; ``kwargs`` override its
    config-derived arguments (e.g. ``box2box_transform`` for a cascade stage)."""
    name = cfg.MODEL.ROI_BOX_HEAD.PREDICTOR
    check_softmax_classification(cfg, name)
    if name not in ROI_BOX_PREDICTOR_REGISTRY:
        raise ValueError(f"MODEL.ROI_BOX_HEAD.PREDICTOR={name!r} is not registered; known: "
                         f"{sorted(k for k, _ in ROI_BOX_PREDICTOR_REGISTRY)}")
    return ROI_BOX_PREDICTOR_REGISTRY.get(name)(cfg, input_shape, **kwargs)


class SoftmaxClassificationMixin:
    """Mix in before Detectron2's ``StandardROIHeads`` or ``CascadeROIHeads`` (or a subclass) whose
    box classification is softmax-only: ``_init_box_head`` refuses Detectron2 main's sigmoid and
    federated keys before anything is built."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        check_softmax_classification(cfg, cls.__name__)
        return super()._init_box_head(cfg, input_shape)


class PredictorFromConfigMixin(SoftmaxClassificationMixin):
    """Mix in before ``StandardROIHeads`` (or a subclass) to build ``box_predictor`` by config."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        # Detectron2's head already built a FastRCNNOutputLayers: keep it, so that one seed gives
        # the same weights as Detectron2; build (and initialise) another predictor only if asked.
        if cfg.MODEL.ROI_BOX_HEAD.PREDICTOR != "FastRCNNOutputLayers":
            ret["box_predictor"] = build_box_predictor(cfg, ret["box_head"].output_shape)
        return ret
