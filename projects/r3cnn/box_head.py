"""The box head of R^3-CNN-L: light 7x7 convolutions and a non-local block instead of FCs."""
from typing import List

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY
from torch import nn

from .nonlocal_block import NonLocalBlock2d


@ROI_BOX_HEAD_REGISTRY.register()
class R3CNNLightConvHead(nn.Module):
    """R^3-CNN-L's box head (Sec. 4.3: "we replace fully-connected layers from detection head
    with lightweight convolutions with kernel 7x7 and a Non-Local block").

    Pooled RoI features (C, 7, 7) -> ``NUM_CONV`` convs ``k x k`` (``MODEL.R3CNN.
    LIGHT_HEAD_KERNEL_SIZE``, size-preserving, norm + ReLU) -> a non-local block -> global average
    pooling -> ``NUM_FC`` fc layers (+ReLU). The paper gives no widths; they come from
    ``MODEL.ROI_BOX_HEAD.{NUM_CONV, CONV_DIM, NUM_FC, FC_DIM, NORM}``. Output: a vector, so any
    FastRCNNOutputLayers-compatible predictor sits on top.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, conv_dims: List[int], fc_dims: List[int],
                 kernel_size: int = 7, conv_norm: str = "", nonlocal_kernel_size: int = 7,
                 nonlocal_reduction: int = 2):
        super().__init__()
        if not conv_dims:
            raise ValueError("R3CNNLightConvHead needs MODEL.ROI_BOX_HEAD.NUM_CONV >= 1")
        channels = input_shape.channels
        self.convs = nn.ModuleList()
        for dim in conv_dims:
            conv = Conv2d(channels, dim, kernel_size, padding=kernel_size // 2, bias=not conv_norm,
                          norm=get_norm(conv_norm, dim), activation=nn.ReLU())
            weight_init.c2_msra_fill(conv)
            self.convs.append(conv)
            channels = dim
        self.non_local = NonLocalBlock2d(channels, nonlocal_kernel_size, nonlocal_reduction)
        self.fcs = nn.ModuleList()
        for dim in fc_dims:
            fc = nn.Linear(channels, dim)
            weight_init.c2_xavier_fill(fc)
            self.fcs.append(fc)
            channels = dim
        self._out_channels = channels

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_BOX_HEAD
        return {
            "input_shape": input_shape,
            "conv_dims": [head.CONV_DIM] * head.NUM_CONV,
            "fc_dims": [head.FC_DIM] * head.NUM_FC,
            "kernel_size": cfg.MODEL.R3CNN.LIGHT_HEAD_KERNEL_SIZE,
            "conv_norm": head.NORM,
            "nonlocal_kernel_size": cfg.MODEL.R3CNN.NONLOCAL_KERNEL_SIZE,
            "nonlocal_reduction": cfg.MODEL.R3CNN.NONLOCAL_REDUCTION,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (R, C, S, S) pooled RoI features -> (R, output_shape.channels)."""
        for conv in self.convs:
            x = conv(x)
        x = self.non_local(x)
        x = x.mean(dim=(2, 3))
        for fc in self.fcs:
            x = torch.relu(fc(x))
        return x

    @property
    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._out_channels)
