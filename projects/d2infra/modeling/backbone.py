"""A small ResNet (+FPN) for the embedded CPU configs, trained from scratch.

Detectron2's ResNet-18 insists on 64 channels in res2 and is too slow on 2 CPU cores at batch 4.
This builds the same architecture (Detectron2's ``BasicStem`` and ``BasicBlock`` stages, strides
4/8/16/32) with configurable widths and depths (``MODEL.SMALL_RESNET``) and a trainable norm.
"""
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem


@BACKBONE_REGISTRY.register()
def build_small_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """ResNet of ``BasicBlock`` stages res2..res5 with ``MODEL.SMALL_RESNET`` widths and depths."""
    c = cfg.MODEL.SMALL_RESNET
    if len(c.STAGE_OUT_CHANNELS) != 4 or len(c.BLOCKS_PER_STAGE) != 4:
        raise ValueError("MODEL.SMALL_RESNET.STAGE_OUT_CHANNELS and BLOCKS_PER_STAGE need 4 values "
                         f"(res2..res5), got {c.STAGE_OUT_CHANNELS} and {c.BLOCKS_PER_STAGE}")
    if c.NORM in ("FrozenBN", ""):
        raise ValueError(f"MODEL.SMALL_RESNET.NORM={c.NORM!r}: the small ResNet trains from scratch "
                         "and needs a trainable norm (BN, GN or SyncBN)")
    widths = list(c.STAGE_OUT_CHANNELS)
    if any(a == b for a, b in zip(widths, widths[1:])):
        raise ValueError(f"MODEL.SMALL_RESNET.STAGE_OUT_CHANNELS={widths}: res3..res5 must change "
                         "width, since a strided BasicBlock has a projection shortcut only then")
    stem = BasicStem(input_shape.channels, c.STEM_OUT_CHANNELS, norm=c.NORM)
    stages, in_channels = [], c.STEM_OUT_CHANNELS
    for i, (out_channels, num_blocks) in enumerate(zip(c.STAGE_OUT_CHANNELS, c.BLOCKS_PER_STAGE)):
        stages.append(ResNet.make_stage(
            BasicBlock, num_blocks, stride_per_block=[1 if i == 0 else 2] + [1] * (num_blocks - 1),
            in_channels=in_channels, out_channels=out_channels, norm=c.NORM))
        in_channels = out_channels
    return ResNet(stem, stages, out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
                  freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_small_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """The small ResNet under an FPN with P2..P6 (P6 by max-pool), as for Mask R-CNN."""
    return FPN(bottom_up=build_small_resnet_backbone(cfg, input_shape),
               in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(),
               fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_small_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """The small ResNet under an FPN with P3..P7 (P6, P7 by conv from res5), as for RetinaNet."""
    bottom_up = build_small_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=out_channels, norm=cfg.MODEL.FPN.NORM,
               top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels),
               fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
