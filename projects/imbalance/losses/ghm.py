"""GHM-C, the classification loss of the gradient harmonizing mechanism (Li, Liu and Wang, "Gradient
Harmonized Single-stage Detector", AAAI 2019), for dense heads as an alternative to focal loss.

For a sigmoid output ``p`` with binary target ``p*``, the gradient norm of the cross entropy with
respect to the logit is ``g = |p - p*|``. GHM-C weighs each element's cross entropy by the inverse
of the *gradient density* around its ``g`` (Oksuz et al., review Eq. 4: ``w_i = 1 / (G(BB_i) / m)``):

    GD(g)   = (1 / l_eps(g)) * sum_k delta_eps(g_k, g)        (density of examples near g)
    beta_i  = N / GD(g_i)
    L_GHM-C = (1 / N) * sum_i beta_i * CE(p_i, p*_i) = sum_i CE(p_i, p*_i) / GD(g_i)

with the paper's unit-region approximation: [0, 1] is cut into ``M = 1 / eps`` equal bins, and
``GD(g) = R_ind(g) * M`` where ``R_j`` counts the elements in bin ``j``. With momentum ``alpha``
the counts are an exponential moving average over iterations, ``S_j <- alpha * S_j + (1 - alpha) *
R_j`` and ``GD(g) = S_ind(g) * M``. The paper uses ``M = 30`` and ``alpha = 0.75``.

The loss needs no normaliser: if the gradient norms were spread evenly over the bins every weight
``beta_i`` would be 1 and the loss the mean cross entropy.
"""
import torch
import torch.nn.functional as F
from torch import nn


class GHMCLoss(nn.Module):
    """GHM-C over sigmoid outputs (every element of ``logits`` is one binary classifier).

    The moving-average bin counts ``S_j`` are a non-persistent buffer: a checkpoint of a model
    trained with GHM-C still loads into Detectron2's ``RetinaNet``, and resumed training restarts
    the average from the first batch.
    """

    def __init__(self, bins: int = 30, momentum: float = 0.75):
        """
        Args:
            bins: ``M``, the number of unit regions of the gradient norm over [0, 1] (paper: 30).
            momentum: ``alpha`` of the moving average of the bin counts; 0 uses the counts of the
                current batch only (paper: 0.75).
        """
        super().__init__()
        if bins < 1:
            raise ValueError(f"GHM-C needs at least one bin, got {bins}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"GHM-C momentum must be in [0, 1), got {momentum}")
        self.bins = int(bins)
        self.momentum = float(momentum)
        # S_j: moving average of the number of elements per bin; empty until the first batch.
        self.register_buffer("acc_counts", torch.zeros(self.bins), persistent=False)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool), persistent=False)

    def bin_index(self, g: torch.Tensor) -> torch.Tensor:
        """``ind(g)``: the unit region [j/M, (j+1)/M) of each gradient norm (g = 1 in the last)."""
        return (g * self.bins).floor().long().clamp_(0, self.bins - 1)

    @torch.no_grad()
    def gradient_density(self, g: torch.Tensor) -> torch.Tensor:
        """``GD(g_i) = S_ind(g_i) * M`` of every element; updates the moving average ``S`` when
        training (or on the first call)."""
        idx = self.bin_index(g)
        counts = torch.bincount(idx, minlength=self.bins).to(self.acc_counts.dtype)
        if self.training or not bool(self.initialized):
            if bool(self.initialized) and self.momentum > 0:
                self.acc_counts.mul_(self.momentum).add_((1.0 - self.momentum) * counts)
            else:
                # The first batch starts the average at its own counts (no bias towards zero).
                self.acc_counts.copy_(counts)
                self.initialized.fill_(True)
        return self.acc_counts[idx] * self.bins

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: any shape, the classification logits of the valid (non-ignored) anchors.
            targets: same shape, binary targets in {0, 1}.
        Returns:
            the scalar GHM-C loss ``sum_i CE_i / GD(g_i)`` (0 if there are no elements).
        """
        if logits.numel() == 0:
            return logits.sum() * 0.0
        targets = targets.to(logits.dtype)
        g = (logits.detach().sigmoid() - targets).abs().flatten()
        density = self.gradient_density(g)
        ce = F.binary_cross_entropy_with_logits(logits.flatten(), targets.flatten(),
                                                reduction="none")
        # sum_i beta_i * CE_i / N with beta_i = N / GD(g_i)
        return (ce / density).sum()
