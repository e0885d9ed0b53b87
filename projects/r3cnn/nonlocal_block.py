"""The non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018) of R^3-CNN-L."""
import torch
from detectron2.layers import Conv2d
from torch import nn


class NonLocalBlock2d(nn.Module):
    """Embedded-Gaussian non-local block with a residual connection, as R^3-CNN-L builds it.

    ``z = x + W(y)``, ``y_i = sum_j softmax_j(theta(x_i) . phi(x_j) / sqrt(C')) g(x_j)``
    (Wang et al., Eq. 1-3, with the 1/sqrt(C') scaling of their embedded Gaussian). R^3-CNN-L uses
    it "with incremented kernel size of 7x7" (Sec. 4.3): in the authors' code all four convs
    (theta, phi, g and the output W) are ``kernel_size`` x ``kernel_size`` (padding keeps the
    size), theta/phi/g map to ``C' = in_channels // reduction`` channels and are initialised
    N(0, 0.01), W maps back to ``in_channels`` and starts at zero, so the block starts as the
    identity (their mmcv fork, branch r3_cnn: ``mmcv/cnn/bricks/non_local.py``, ``_NonLocalNd``
    with ``use_scale=True, kernel_size=7, padding=3``; configs ``configs/r3_cnn/r3_cnn-exp_1-row_6.py``).
    """

    def __init__(self, in_channels: int, kernel_size: int = 7, reduction: int = 2,
                 use_scale: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"NonLocalBlock2d needs an odd kernel size, got {kernel_size}")
        inner = max(in_channels // reduction, 1)
        pad = kernel_size // 2
        self.inner_channels = inner
        self.use_scale = use_scale
        self.theta = Conv2d(in_channels, inner, kernel_size, padding=pad)
        self.phi = Conv2d(in_channels, inner, kernel_size, padding=pad)
        self.g = Conv2d(in_channels, inner, kernel_size, padding=pad)
        self.out = Conv2d(inner, in_channels, kernel_size, padding=pad)
        for layer in (self.theta, self.phi, self.g):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (N, C', HW)
        phi = self.phi(x).flatten(2)
        g = self.g(x).flatten(2)
        # Embedded Gaussian: f(x_i, x_j) = exp(theta_i^T phi_j / sqrt(C')), normalised over j.
        logits = torch.bmm(theta.transpose(1, 2), phi)  # (N, HW, HW)
        if self.use_scale:
            logits = logits / self.inner_channels ** 0.5
        attention = torch.softmax(logits, dim=-1)
        y = torch.bmm(g, attention.transpose(1, 2)).view(n, g.shape[1], h, w)  # y_i = sum_j f_ij g_j
        return x + self.out(y)
