import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from d2infra import add_d2infra_config


def _cfg(name, out_features):
    cfg = get_cfg()
    add_d2infra_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = out_features
    cfg.MODEL.FPN.IN_FEATURES = out_features
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.SMALL_RESNET.STEM_OUT_CHANNELS = 8
    cfg.MODEL.SMALL_RESNET.STAGE_OUT_CHANNELS = [8, 16, 24, 32]
    cfg.MODEL.SMALL_RESNET.BLOCKS_PER_STAGE = [1, 2, 1, 1]
    return cfg


def test_small_resnet_strides_channels_and_blocks():
    cfg = _cfg("build_small_resnet_backbone", ["res2", "res3", "res4", "res5"])
    net = build_backbone(cfg, ShapeSpec(channels=3))
    out = net(torch.zeros(1, 3, 64, 96))
    # Strides 4..32 of a ResNet: 64x96 -> 16x24, 8x12, 4x6, 2x3.
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 8, 16, 24), "res3": (1, 16, 8, 12), "res4": (1, 24, 4, 6), "res5": (1, 32, 2, 3)}
    assert len(net.res3) == 2 and len(net.res2) == 1
    # A trainable norm everywhere: nothing is frozen when training from scratch.
    assert all(p.requires_grad for p in net.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_fpn_levels():
    cfg = _cfg("build_small_resnet_fpn_backbone", ["res2", "res3", "res4", "res5"])
    out = build_backbone(cfg, ShapeSpec(channels=3))(torch.zeros(1, 3, 64, 64))
    assert {k: v.shape[-1] for k, v in out.items()} == {"p2": 16, "p3": 8, "p4": 4, "p5": 2, "p6": 1}
    cfg = _cfg("build_small_retinanet_resnet_fpn_backbone", ["res3", "res4", "res5"])
    out = build_backbone(cfg, ShapeSpec(channels=3))(torch.zeros(1, 3, 128, 128))
    assert {k: v.shape[-1] for k, v in out.items()} == {"p3": 16, "p4": 8, "p5": 4, "p6": 2, "p7": 1}
    assert all(v.shape[1] == 16 for v in out.values())


@pytest.mark.parametrize("key,value,message", [
    ("NORM", "FrozenBN", "trainable norm"),
    ("STAGE_OUT_CHANNELS", [8, 16, 32], "need 4 values"),
    ("STAGE_OUT_CHANNELS", [8, 16, 16, 32], "must change"),
])
def test_bad_config_is_a_clear_error(key, value, message):
    cfg = _cfg("build_small_resnet_backbone", ["res5"])
    cfg.MODEL.SMALL_RESNET[key] = value
    with pytest.raises(ValueError, match=message):
        build_backbone(cfg, ShapeSpec(channels=3))
