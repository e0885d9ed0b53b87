"""The MaskIoU branch of Mask Scoring R-CNN (Huang et al., CVPR 2019), as used by R^3-CNN-L."""
from typing import List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, cat
from detectron2.structures import Instances
from torch import nn

from .nonlocal_block import NonLocalBlock2d


class MaskIoUHead(nn.Module):
    """Predicts, per class, the IoU of a predicted mask with its ground-truth mask.

    Input (Mask Scoring R-CNN, Sec. 3.2): the RoI features of the mask branch (C, S, S)
    concatenated with the predicted mask (2S x 2S) max-pooled to S x S. Then ``num_conv`` 3x3
    convs (the last with stride 2) and a non-local block. R^3-CNN-L's branch uses "only
    convolutions and Non-Local blocks" (Sec. 4.3): with ``num_fc=0`` (its default) the features
    are averaged over space and one linear layer (a 1x1 conv) gives the ``num_classes`` IoUs;
    ``num_fc > 0`` flattens and adds fc layers as Mask Scoring R-CNN's own head (2 x 1024).
    """

    def __init__(self, in_channels: int, resolution: int, num_classes: int, *, num_conv: int = 4,
                 conv_dim: int = 256, num_fc: int = 2, fc_dim: int = 1024,
                 use_nonlocal: bool = True, nonlocal_kernel_size: int = 7,
                 nonlocal_reduction: int = 2):
        super().__init__()
        if num_conv < 1:
            raise ValueError("MaskIoUHead needs MODEL.R3CNN.MASKIOU_NUM_CONV >= 1")
        self.convs = nn.ModuleList()
        channels = in_channels + 1  # + the max-pooled predicted mask
        for k in range(num_conv):
            stride = 2 if k == num_conv - 1 else 1
            conv = Conv2d(channels, conv_dim, 3, stride=stride, padding=1, activation=nn.ReLU())
            weight_init.c2_msra_fill(conv)
            self.convs.append(conv)
            channels = conv_dim
        side = (resolution + 1) // 2
        self.non_local = (NonLocalBlock2d(channels, nonlocal_kernel_size, nonlocal_reduction)
                          if use_nonlocal else None)
        self.fcs = nn.ModuleList()
        self.global_pool = num_fc == 0
        size = channels if self.global_pool else channels * side * side
        for _ in range(num_fc):
            fc = nn.Linear(size, fc_dim)
            weight_init.c2_xavier_fill(fc)
            self.fcs.append(fc)
            size = fc_dim
        self.maskiou = nn.Linear(size, num_classes)
        nn.init.normal_(self.maskiou.weight, std=0.01)
        nn.init.constant_(self.maskiou.bias, 0)

    def forward(self, features: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (R, C, S, S) RoI features of the mask branch.
            mask_probs: (R, 1, 2S, 2S) predicted mask (probabilities) of each RoI's class.
        Returns:
            (R, num_classes) predicted mask IoUs.
        """
        x = torch.cat([features, F.max_pool2d(mask_probs, kernel_size=2, stride=2)], dim=1)
        for conv in self.convs:
            x = conv(x)
        if self.non_local is not None:
            x = self.non_local(x)
        x = x.mean(dim=(2, 3)) if self.global_pool else x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.maskiou(x)


def mask_iou_targets(mask_probs: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
    """IoU of each binarised predicted mask (> 0.5) with its ground-truth mask, both on the RoI's
    M x M grid (Mask Scoring R-CNN's MaskIoU target, computed inside the RoI).

    Args:
        mask_probs: (R, M, M) predicted probabilities of the ground-truth class.
        instances: the R positives, with ``proposal_boxes`` and ``gt_masks``.
    """
    side = mask_probs.shape[-1]
    gt = [i.gt_masks.crop_and_resize(i.proposal_boxes.tensor, side).to(mask_probs.device)
          for i in instances if len(i) > 0]
    if not gt:
        return mask_probs.new_zeros((0,))
    gt = cat(gt, dim=0)
    gt = gt if gt.dtype == torch.bool else gt > 0.5
    pred = mask_probs > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return inter / union.clamp(min=1.0)
