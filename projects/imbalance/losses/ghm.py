"""The gradient harmonizing mechanism (Li, Liu and Wang, "Gradient Harmonized Single-stage
Detector", AAAI 2019): GHM-C for the classification of dense heads, GHM-R for their box
regression.

Both weigh each element's loss by the inverse of the *gradient density* around its gradient norm
``g`` (Oksuz et al., review Eq. 4: ``w_i = 1 / (G(BB_i) / m)``). The paper writes, with ``N``
elements and the unit-region approximation ([0, 1] cut into ``M`` equal bins, ``R_j`` elements in
bin ``j``):

    GD(g)   = R_ind(g) * M                         (paper, Sec. 3.3)
    beta_i  = N / GD(g_i)
    L_GHM   = (1 / N) * sum_i beta_i * L_i = sum_i L_i / (R_ind(g_i) * M)

and, with momentum ``alpha``, ``R_j`` replaced by an exponential moving average ``S_j``.

**Where the authors' code differs from the formula, and we follow the code** (libuyu/GHM_Detection
``loss/ghm_loss.py``; mmdetection ``mmdet/models/losses/ghm_loss.py``):

- the density is multiplied by ``n``, the number of bins that hold at least one element *of the
  current batch*, not by ``M``: ``L = sum_i L_i / (S_ind(g_i) * n)``. With all 30 bins divided
  by M, the loss of a batch whose gradients fill 2 bins is 15x smaller than the code's;
- the moving average starts from zero, ``S_j <- alpha * S_j + (1 - alpha) * R_j``, and a bin is
  updated only in a batch where it is non-empty (an empty bin keeps its value; it does not
  decay). In the first batch ``S_j = (1 - alpha) R_j``, so the first losses are ``1 / (1 - alpha)``
  times those of the plain counts;
- the bins are the edges ``j / M`` (the last one widened to take ``g = 1``; GHM-R's to ``1e3``).

**Per FPN level** (``MODEL.RETINANET.GHMC.PER_LEVEL`` / ``GHMR.PER_LEVEL``, default True as in
the authors' code): the authors' RetinaNet head computes its losses one FPN level at a time
(GHM_Detection ``retina_head.py``: ``multi_apply(self.loss_single, ...)`` over the levels, each
call on that level's anchors of all images of the GPU; mmdetection's ``AnchorHead.loss`` alike)
and sums them, with one GHM object for the head. So the counts ``R_j`` and ``n`` are those of one
level, and the single moving average ``S`` is updated once per level, in level order (P3, P4, ...,
P7), each level's weights using ``S`` right after its own update: a level's density mixes its
counts with the levels before it and with the previous iterations. ``PER_LEVEL: False`` counts
over all anchors of the batch at once, one update per iteration, as the paper's formula reads.

The moving averages ``S`` are persistent buffers (``ghmc.acc_counts``, ``ghmr.acc_counts`` in the
checkpoint, as mmdetection registers its ``acc_sum``), so ``--resume`` continues them. A
checkpoint from before they were saved loads with them at their initial zeros, without a
missing-key warning. Each process keeps its own (``broadcast_buffers=False``, as each GPU of the
authors' code has its own); a checkpoint holds the main process's, which every process resumes
from. A GHM checkpoint loads into Detectron2's ``RetinaNet`` with these keys reported unused.
"""
import torch
import torch.nn.functional as F
from torch import nn

from d2infra.modeling.precision import upcast


class _GradientDensity(nn.Module):
    """The bins, the moving average ``S`` and the harmonizing weight ``1 / (S_ind(g) * n)`` shared
    by GHM-C and GHM-R."""

    def __init__(self, bins: int, momentum: float, name: str):
        super().__init__()
        if bins < 1:
            raise ValueError(f"{name} needs at least one bin, got {bins}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"{name} momentum must be in [0, 1), got {momentum}")
        self.bins = int(bins)
        self.momentum = float(momentum)
        # Inner edges j / M, j = 1 .. M-1, as float32 like the authors' ``arange(M + 1) / M``: an
        # element with edge_j <= g < edge_{j+1} is in bin j; the outer edges are open.
        self.register_buffer("inner_edges", torch.arange(1, self.bins).float() / self.bins,
                             persistent=False)
        # S_j: moving average of the number of elements per bin, from zero; saved in checkpoints.
        self.register_buffer("acc_counts", torch.zeros(self.bins))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """A state dict without ``acc_counts`` (saved before it was persistent) keeps ``S`` as it
        is (zeros in a new model) instead of reporting the key missing."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "acc_counts"
        if key not in state_dict and key in missing_keys:
            missing_keys.remove(key)

    def bin_index(self, g: torch.Tensor) -> torch.Tensor:
        """``ind(g)``: the bin [j/M, (j+1)/M) of each gradient norm (g >= 1 in the last)."""
        return torch.bucketize(g.float(), self.inner_edges, right=True)

    @torch.no_grad()
    def harmonizing_weights(self, g: torch.Tensor) -> torch.Tensor:
        """``1 / (S_ind(g_i) * n)`` for every element (the authors' ``beta_i / N``), after updating
        ``S`` with this batch's counts (``S = R`` without momentum)."""
        idx = self.bin_index(g)
        counts = torch.bincount(idx, minlength=self.bins).to(self.acc_counts.dtype)
        non_empty = counts > 0
        if self.momentum > 0:
            updated = self.momentum * self.acc_counts + (1.0 - self.momentum) * counts
            self.acc_counts.copy_(torch.where(non_empty, updated, self.acc_counts))
            density = self.acc_counts
        else:
            density = counts
        n = non_empty.sum().clamp(min=1)
        return 1.0 / (density[idx] * n)


class GHMCLoss(_GradientDensity):
    """GHM-C over sigmoid outputs (every element of ``logits`` is one binary classifier):
    ``sum_i CE_i / (S_ind(g_i) * n)`` with ``g = |sigmoid(x) - p*|``; see the module docstring."""

    def __init__(self, bins: int = 30, momentum: float = 0.75):
        """
        Args:
            bins: ``M``, the number of unit regions of the gradient norm over [0, 1] (paper: 30).
            momentum: ``alpha`` of the moving average of the bin counts; 0 uses the counts of the
                current batch only (paper and authors' RetinaNet config: 0.75).
        """
        super().__init__(bins, momentum, "GHM-C")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: any shape, the classification logits of the valid (non-ignored) anchors.
            targets: same shape, binary targets in {0, 1}.
        Returns:
            the scalar GHM-C loss (0 if there are no elements), in float32 (float64 for float64
            logits), also for half-precision logits.
        """
        # In float32 under mixed precision: the gradient norms g are binned at 1/M, and CUDA
        # autocast would compute the sigmoid in float16 and the CPU's everything in bfloat16.
        logits = upcast(logits)
        if logits.numel() == 0:
            return logits.sum() * 0.0
        logits, targets = logits.flatten(), targets.flatten().to(logits.dtype)
        weights = self.harmonizing_weights((logits.detach().sigmoid() - targets).abs())
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (ce * weights.to(ce.dtype)).sum()


class GHMRLoss(_GradientDensity):
    """GHM-R: the authentic smooth L1 loss (ASL1) of each regression element, harmonized.

    With ``d = prediction - target``: ``ASL1(d) = sqrt(d^2 + mu^2) - mu`` (paper Eq. 12), whose
    gradient norm ``g = |d| / sqrt(d^2 + mu^2)`` lies in [0, 1) and is binned as GHM-C's. The loss
    is ``loss_weight * sum_i ASL1(d_i) / (S_ind(g_i) * n)`` (module docstring). The authors'
    RetinaNet config: mu 0.02, 10 bins, momentum 0.7, loss weight 10.
    """

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0.7,
                 loss_weight: float = 10.0):
        """
        Args:
            mu: ``mu`` of ASL1, the width of its quadratic part (paper: 0.02).
            bins, momentum: ``M`` and ``alpha`` (authors' config: 10, 0.7).
            loss_weight: factor of the loss (authors' config: 10).
        """
        super().__init__(bins, momentum, "GHM-R")
        if mu <= 0:
            raise ValueError(f"GHM-R mu must be positive, got {mu}")
        self.mu = float(mu)
        self.loss_weight = float(loss_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred, target: same shape, the predicted and target regression values (deltas) of the
                positive anchors, every coordinate an element.
        Returns:
            the scalar GHM-R loss (0 if there are no elements), in float32 (float64 for float64
            inputs), also for half-precision predictions.
        """
        pred = upcast(pred)  # in float32 under mixed precision, as GHM-C
        if pred.numel() == 0:
            return pred.sum() * 0.0
        diff = (pred - upcast(target)).flatten()
        root = torch.sqrt(diff * diff + self.mu * self.mu)
        weights = self.harmonizing_weights((diff / root).detach().abs())
        asl1 = root - self.mu
        return self.loss_weight * (asl1 * weights.to(asl1.dtype)).sum()
