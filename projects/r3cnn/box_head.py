"""The box head of R^3-CNN-L: a non-local block and light 7x7 convolutions instead of FCs."""
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

    As the authors' ``Shared2FCCBBoxHead`` with ``nl_stages=(True, False)`` (mmdetection branch
    r3_cnn, ``mmdet/models/roi_heads/bbox_heads/fcc_bbox_head.py``, config
    ``configs/r3_cnn/r3_cnn-exp_1-row_6.py``): pooled RoI features (C, S, S) -> a non-local block
    (:class:`NonLocalBlock2d`) -> ``NUM_CONV`` convs ``k x k`` (``MODEL.R3CNN.
    LIGHT_HEAD_KERNEL_SIZE``, size-preserving), each halving the channels (256 -> 128 -> 64 at the
    COCO scale) -> flatten (C / 2^NUM_CONV x S x S). A ReLU follows the non-local block and every
    conv, as in their forward. No hidden FC and no global pooling: the class and box layers of the
    predictor read the flattened map, which keeps the spatial layout the regressor needs.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_conv: int, kernel_size: int = 7,
                 conv_norm: str = "", nonlocal_kernel_size: int = 7, nonlocal_reduction: int = 2):
        """
        Args:
            input_shape: the pooled RoI features (channels, height, width).
            num_conv: number of light convs; conv k has ``channels // 2**(k+1)`` outputs.
            kernel_size: their kernel (7).
            conv_norm: a Detectron2 norm name for the convs ("" as the authors).
            nonlocal_kernel_size, nonlocal_reduction: of the non-local block.
        """
        super().__init__()
        if num_conv < 1:
            raise ValueError("R3CNNLightConvHead needs MODEL.ROI_BOX_HEAD.NUM_CONV >= 1")
        channels = input_shape.channels
        if channels // 2 ** num_conv < 1:
            raise ValueError(f"R3CNNLightConvHead halves the {channels} input channels "
                             f"{num_conv} times (MODEL.ROI_BOX_HEAD.NUM_CONV): too many convs")
        self.non_local = NonLocalBlock2d(channels, nonlocal_kernel_size, nonlocal_reduction)
        self.convs = nn.ModuleList()
        for _ in range(num_conv):
            dim = channels // 2
            conv = Conv2d(channels, dim, kernel_size, padding=kernel_size // 2, bias=not conv_norm,
                          norm=get_norm(conv_norm, dim), activation=nn.ReLU())
            weight_init.c2_msra_fill(conv)  # as mmcv's ConvModule: Kaiming normal, fan_out
            self.convs.append(conv)
            channels = dim
        self._output_shape = ShapeSpec(channels=channels, height=input_shape.height,
                                       width=input_shape.width)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_BOX_HEAD
        if head.NUM_FC != 0:
            raise ValueError("R3CNNLightConvHead has no FC layers (the predictor reads the "
                             f"flattened conv map): set MODEL.ROI_BOX_HEAD.NUM_FC 0, got {head.NUM_FC}")
        return {
            "input_shape": input_shape,
            "num_conv": head.NUM_CONV,
            "kernel_size": cfg.MODEL.R3CNN.LIGHT_HEAD_KERNEL_SIZE,
            "conv_norm": head.NORM,
            "nonlocal_kernel_size": cfg.MODEL.R3CNN.NONLOCAL_KERNEL_SIZE,
            "nonlocal_reduction": cfg.MODEL.R3CNN.NONLOCAL_REDUCTION,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (R, C, S, S) pooled RoI features -> (R, C / 2^NUM_CONV * S * S)."""
        x = torch.relu(self.non_local(x))
        for conv in self.convs:
            x = conv(x)
        return x.flatten(1)

    @property
    def output_shape(self) -> ShapeSpec:
        """(channels, height, width) of the map before flattening; the predictor multiplies them."""
        return self._output_shape
