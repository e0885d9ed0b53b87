"""ROI heads whose box predictor is the offset bin classifier (Qiu et al., section 3.2): Faster
R-CNN (Tables 1-5) and Cascade R-CNN (Tables 4-5; 2 stages at IoU 0.5 and 0.7, section 4.2)."""
from detectron2.config import CfgNode
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads

from d2infra.modeling import (
    PredictorFromConfigMixin,
    SoftmaxClassificationMixin,
    build_box_predictor,
)
from imbalance.samplers import RoISamplingMixin

from .output_layers import OffsetBinOutputLayers

__all__ = ["OffsetBinROIHeads", "OffsetBinCascadeROIHeads"]

_DEFAULT_PREDICTOR = "FastRCNNOutputLayers"  # imbalance.config's default of the PREDICTOR key


def offset_bin_predictor_cfg(cfg: CfgNode) -> CfgNode:
    """``cfg`` with ``MODEL.ROI_BOX_HEAD.PREDICTOR`` defaulted to ``OffsetBinOutputLayers``.

    An offset-bin head left at the shared default predictor (``FastRCNNOutputLayers``) gets
    ``OffsetBinOutputLayers``; any other name (a subclass of it) is kept.
    """
    if cfg.MODEL.ROI_BOX_HEAD.PREDICTOR != _DEFAULT_PREDICTOR:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = OffsetBinOutputLayers.__name__
    cfg.freeze()
    return cfg


def _check_predictor(predictor, head: str) -> None:
    if not isinstance(predictor, OffsetBinOutputLayers):
        raise ValueError(
            f"{head} needs an OffsetBinOutputLayers predictor (MODEL.ROI_BOX_HEAD.PREDICTOR); "
            f"got {type(predictor).__name__}"
        )


@ROI_HEADS_REGISTRY.register()
class OffsetBinROIHeads(RoISamplingMixin, PredictorFromConfigMixin, StandardROIHeads):
    """Faster R-CNN's ROI heads with offset bin classification (section 3.2, Fig. 2).

    Redefines only ``_init_box_head``: the box predictor is ``MODEL.ROI_BOX_HEAD.PREDICTOR``,
    defaulted to :class:`OffsetBinOutputLayers` (see :func:`offset_bin_predictor_cfg`). RoI
    sampling goes through the shared sampler registry (``MODEL.ROI_HEADS.SAMPLER``; "random" is
    Detectron2's); pooling, box head, training and inference are ``StandardROIHeads``'.

    Training losses: ``loss_cls`` and ``loss_bin_stage{k}`` for each focusing stage k < K.
    """

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape):
        ret = super()._init_box_head(offset_bin_predictor_cfg(cfg), input_shape)
        _check_predictor(ret["box_predictor"], cls.__name__)
        return ret


@ROI_HEADS_REGISTRY.register()
class OffsetBinCascadeROIHeads(RoISamplingMixin, SoftmaxClassificationMixin, CascadeROIHeads):
    """Cascade R-CNN whose every stage classifies offset bins instead of regressing them.

    "We replace the regression branch of each stage in Cascade R-CNN with our offset bin class
    branch" with 2 stages at IoU 0.5 and 0.7 (section 4.2); there, the paper uses no hierarchical
    focusing (``MODEL.OFFSET_BIN.NUM_STAGES: 1``). Set ``MODEL.ROI_BOX_CASCADE_HEAD.IOUS`` and
    ``BBOX_REG_WEIGHTS`` to 2 entries for the paper's setting. Each stage bins the offsets of its
    own ``Box2BoxTransform`` (stage weights from ``ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS``).

    Redefines only ``_init_box_head``: each stage's predictor is built by
    :func:`d2infra.modeling.build_box_predictor` (defaulted as in :class:`OffsetBinROIHeads`)
    with the stage's ``box2box_transform``; poolers, box heads and matchers are Detectron2's. The
    first stage samples through the shared sampler registry; the later stages are Detectron2's.

    Training losses: ``loss_cls_stage{s}`` and ``loss_bin_stage{k}_stage{s}`` (focusing stage k
    of cascade stage s), from Detectron2's per-stage suffix.
    """

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape):
        # Detectron2's pooler, box heads and matchers; its FastRCNNOutputLayers are replaced.
        ret = super()._init_box_head(cfg, input_shape)
        cfg = offset_bin_predictor_cfg(cfg)
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        predictors = []
        for box_head, stage_weights in zip(ret["box_heads"], weights):
            predictor = build_box_predictor(
                cfg,
                box_head.output_shape,
                box2box_transform=Box2BoxTransform(weights=stage_weights),
            )
            _check_predictor(predictor, cls.__name__)
            if not predictor.cls_agnostic_bbox_reg:
                raise ValueError(
                    "Cascade R-CNN feeds one box per RoI to the next stage: set "
                    "MODEL.OFFSET_BIN.CLS_AGNOSTIC to True or None (inherit)"
                )
            predictors.append(predictor)
        ret["box_predictors"] = predictors
        return ret
