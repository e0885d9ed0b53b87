"""The MaskIoU branch of Mask Scoring R-CNN (Huang et al., CVPR 2019) as R^3-CNN-L builds it."""
from typing import List, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, cat
from detectron2.structures import BitMasks, Instances, PolygonMasks
from torch import nn

from .nonlocal_block import NonLocalBlock2d


class MaskIoUHead(nn.Module):
    """Predicts, per class, the IoU of a predicted mask with its whole ground-truth instance.

    Input (Mask Scoring R-CNN, Sec. 3.2): the RoI features of the mask branch (C, S, S)
    concatenated with the predicted mask (2S x 2S, sigmoid of the logits) max-pooled to S x S.
    R^3-CNN-L's branch uses "only convolutions and Non-Local blocks" (Sec. 4.3); as the authors'
    ``FCCMaskIoUHead`` with ``num_convs=4, num_fcs=2, nl_stages=(True, True)`` (mmdetection branch
    r3_cnn, ``mmdet/models/roi_heads/mask_heads/fcc_maskiou_head.py``, config
    ``configs/r3_cnn/r3_cnn-exp_1-row_6.py``):
    ``num_conv`` 3x3 convs of ``conv_dim`` (the last with stride 2: S -> ceil(S/2)) -> non-local
    block -> ``num_light_conv`` ``k x k`` convs, each halving the channels (256 -> 128 -> 64) ->
    non-local block -> flatten -> one linear layer to ``num_classes`` IoUs. A ReLU follows every
    conv and non-local block. ``use_nonlocal=False`` drops both non-local blocks.
    """

    def __init__(self, in_channels: int, resolution: int, num_classes: int, *, num_conv: int = 4,
                 conv_dim: int = 256, num_light_conv: int = 2, light_kernel_size: int = 7,
                 use_nonlocal: bool = True, nonlocal_kernel_size: int = 7,
                 nonlocal_reduction: int = 2):
        super().__init__()
        if num_conv < 1:
            raise ValueError("MaskIoUHead needs MODEL.R3CNN.MASKIOU_NUM_CONV >= 1")
        if conv_dim // 2 ** num_light_conv < 1:
            raise ValueError(f"MaskIoUHead halves MASKIOU_CONV_DIM {conv_dim} {num_light_conv} "
                             "times (MASKIOU_NUM_LIGHT_CONV): too many convs")
        self.layers = nn.ModuleList()
        channels = in_channels + 1  # + the max-pooled predicted mask
        for k in range(num_conv):
            stride = 2 if k == num_conv - 1 else 1
            self.layers.append(Conv2d(channels, conv_dim, 3, stride=stride, padding=1))
            channels = conv_dim
        if use_nonlocal:
            self.layers.append(NonLocalBlock2d(channels, nonlocal_kernel_size, nonlocal_reduction))
        for _ in range(num_light_conv):
            self.layers.append(Conv2d(channels, channels // 2, light_kernel_size,
                                      padding=light_kernel_size // 2))
            channels //= 2
        if use_nonlocal:
            self.layers.append(NonLocalBlock2d(channels, nonlocal_kernel_size, nonlocal_reduction))
        for layer in self.layers:
            if not isinstance(layer, NonLocalBlock2d):
                weight_init.c2_msra_fill(layer)  # as mmcv's ConvModule: Kaiming normal, fan_out
        side = (resolution + 1) // 2
        self.maskiou = nn.Linear(channels * side * side, num_classes)
        nn.init.normal_(self.maskiou.weight, std=0.01)
        nn.init.constant_(self.maskiou.bias, 0)

    def forward(self, features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (R, C, S, S) RoI features of the mask branch.
            mask_logits: (R, 2S, 2S) predicted mask logits of each RoI's class.
        Returns:
            (R, num_classes) predicted mask IoUs.
        """
        mask = F.max_pool2d(mask_logits.sigmoid()[:, None], kernel_size=2, stride=2)
        x = torch.cat([features, mask], dim=1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.maskiou(x.flatten(1))


def _mask_areas(masks) -> torch.Tensor:
    """Area in pixels of each instance of a BitMasks or PolygonMasks."""
    if isinstance(masks, BitMasks):
        return masks.tensor.flatten(1).sum(1).float()
    if isinstance(masks, PolygonMasks):
        return masks.area().float()
    raise TypeError(f"MaskIoU targets need BitMasks or PolygonMasks, got {type(masks).__name__}")


def mask_iou_targets(mask_logits: torch.Tensor, instances: List[Instances],
                     logit_threshold: float = 0.5,
                     gt_masks: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mask Scoring R-CNN's MaskIoU target: the IoU of each binarised predicted mask with the
    *whole* ground-truth instance, also the part of it outside the RoI.

    On the RoI's M x M grid: intersection and predicted area are counted in cells, and the
    instance's area ``A`` (pixels, ``gt_masks.area()``) becomes ``A * M^2 / (w h)`` cells of the
    RoI of size w x h. The authors (``FCCMaskIoUHead.get_targets``) get the same quantity as the
    instance's cells inside the RoI divided by the fraction of its area that lies inside the RoI.

    Args:
        mask_logits: (R, M, M) predicted logits of each positive's ground-truth class.
        instances: the R positives, with ``proposal_boxes`` and ``gt_masks`` (BitMasks or
            PolygonMasks of the matched instance, over the whole image).
        logit_threshold: a cell is predicted foreground iff its logit exceeds it. The authors'
            code compares the logits with ``mask_thr_binary`` 0.5 (probability > sigmoid(0.5) =
            0.62); 0.0 is probability > 0.5, the threshold Mask Scoring R-CNN's paper states.
        gt_masks: (R, M, M) the instances cropped to the RoIs (``gt_masks.crop_and_resize``),
            when the mask loss has them already; cropped here if None.
    Returns:
        (R,) targets in [0, 1].
    """
    side = mask_logits.shape[-1]
    instances = [i for i in instances if len(i) > 0]
    if not instances:
        return mask_logits.new_zeros((0,))
    boxes = cat([i.proposal_boxes.tensor for i in instances], dim=0).to(mask_logits.device)
    gt = gt_masks if gt_masks is not None else cat(
        [i.gt_masks.crop_and_resize(i.proposal_boxes.tensor, side) for i in instances], dim=0)
    gt = gt.to(mask_logits.device)
    gt = gt if gt.dtype == torch.bool else gt > 0.5
    instance_area = cat([_mask_areas(i.gt_masks) for i in instances], dim=0).to(mask_logits.device)
    box_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    # never below the instance's cells inside the RoI (rasterising the two may disagree a little)
    full_cells = torch.maximum(instance_area * (side * side) / box_area, gt.flatten(1).sum(1))
    pred = mask_logits > logit_threshold
    inter = (pred & gt).flatten(1).sum(1).float()
    pred_cells = pred.flatten(1).sum(1).float()
    return inter / (pred_cells + full_cells - inter).clamp(min=1e-6)
