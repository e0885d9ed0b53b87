"""The non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018) of R^3-CNN-L."""
import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d
from torch import nn


class NonLocalBlock2d(nn.Module):
    """Embedded-Gaussian non-local block with a residual connection.

    ``z = x + W(y)``, ``y_i = sum_j softmax_j(theta(x_i) . phi(x_j)) g(x_j)`` (Wang et al., Eq. 1-3).
    R^3-CNN-L uses it "with incremented kernel size of 7x7" (Sec. 4.3): theta, phi and g are
    ``kernel_size`` x ``kernel_size`` convs (padding keeps the size) to ``in_channels // reduction``
    channels; W is a 1x1 conv back to ``in_channels``, initialised at zero so that the block starts
    as the identity.
    """

    def __init__(self, in_channels: int, kernel_size: int = 7, reduction: int = 2):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"NonLocalBlock2d needs an odd kernel size, got {kernel_size}")
        inner = max(in_channels // reduction, 1)
        pad = kernel_size // 2
        self.theta = Conv2d(in_channels, inner, kernel_size, padding=pad)
        self.phi = Conv2d(in_channels, inner, kernel_size, padding=pad)
        self.g = Conv2d(in_channels, inner, kernel_size, padding=pad)
        self.out = Conv2d(inner, in_channels, 1)
        for layer in (self.theta, self.phi, self.g):
            weight_init.c2_msra_fill(layer)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (N, C', HW)
        phi = self.phi(x).flatten(2)
        g = self.g(x).flatten(2)
        # Embedded Gaussian: f(x_i, x_j) = exp(theta_i^T phi_j), normalised over j.
        attention = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # (N, HW, HW)
        y = torch.bmm(g, attention.transpose(1, 2)).view(n, g.shape[1], h, w)  # y_i = sum_j f_ij g_j
        return x + self.out(y)
