"""The offset-bin maths of Qiu et al., "Offset Bin Classification Network for Accurate Object
Detection" (section 3.2), as pure tensor operations: no network, no Detectron2 structures.

An offset is one of the four box offsets (dx, dy, dw, dh) of Eq. 1, in the units of Detectron2's
``Box2BoxTransform`` (with weights (10, 10, 5, 5) these are the paper's normalised offsets). This
module turns offsets into bin labels (training targets) and bin scores into offsets (decoding); the
predictor :class:`offset_bin.OffsetBinOutputLayers` is a thin layer over it.

Bins of one focusing stage k (Eq. 5, section 3.2.1), with range a_k and n bins:

* the range (-a_k, a_k) is split uniformly into m = n - 2 bins of width w_k = 2 a_k / m, each
  represented by its centre ``-a_k + (j + 1/2) w_k``;
* two outer bins take (-inf, -a_k] and [a_k, inf), represented by their end points -a_k and a_k.

Labels are ordered by position: label 0 is (-inf, -a_k], labels 1..m the inner bins from left to
right, label m + 1 is [a_k, inf), so the representatives increase with the label. (Eq. 5 lists the
outer bins last; the order of labels is a naming choice and changes neither the loss nor the
decoding.)

Hierarchical focusing (section 3.2.4, Fig. 3): stage k + 1 classifies the residual offset inside a
bin of stage k, over its own n bins on (-a_{k+1}, a_{k+1}) with a_{k+1} = w_k / 2, i.e. the
half-width of the previous stage's bins. The offset is the sum of the stages' offsets (Eq. 11).
With a = 3 and n = 20: w_1 = 1/3, a_2 = 1/6, w_2 = 1/54. (Section 4.1 quotes a_2 = 0.15, which is
half of 2a/n = 0.3, i.e. a bin width that counts the two outer bins in the division; we follow
section 3.2.1, where the width of the bins of (-a, a) is 2a/m with m = n - 2.)
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OffsetBinCoder"]


class OffsetBinCoder:
    """Encodes box offsets into per-stage bin labels and decodes per-stage bin scores into offsets.

    Like mmdetection's ``BucketingBBoxCoder`` (SABL), it holds no parameters: ``encode`` gives the
    training targets, ``decode`` the offsets, ``loss`` the cross-entropy of Eq. 7 per coordinate.

    Training targets and inference (section 3.2.4). The paper defines the range of stage k + 1
    "within the offset bins of previous stage" and predicts "finer offsets within the previous
    offset bin", summing the stages' offsets (Eq. 11). It does not say which bin of stage k is meant
    during training; we take the ground-truth one:

    * training (:meth:`encode`): stage 1's label is the bin of the target offset t*; the residual
      ``r_2 = t* - t^r(l_1)`` (t^r the representative, l_1 the ground-truth label of stage 1) is
      labelled in stage 2's bins, and so on. Every stage thus has a target that does not depend on
      what the network currently predicts at the coarser stages.
    * inference (:meth:`decode`): the ground-truth bin is unknown; the coarser stage contributes
      its decoded offset (the expectation of Eq. 10, or its argmax representative) and each finer
      stage adds its decoded residual: ``t = sum_k t^k`` (Eq. 11). With argmax decoding this is
      exactly "the representative of the predicted coarse bin plus the residual inside it".

    The finer stages have the same n bins, outer bins included: a residual inside an inner bin of
    stage k lies in [-a_{k+1}, a_{k+1}), so it falls in an inner bin of stage k + 1; the outer bins
    of stage k + 1 catch the residual of offsets beyond +-a_k, extending the clipping point to
    ``a_1 + a_2 + ...`` without changing the paper's bins inside the range.

    Args:
        offset_range: a (= a_1), the half range of the first stage's inner bins; > 0.
        num_bins: n = m + 2, bins per stage counting the 2 outer bins; >= 3.
        num_stages: K, the number of hierarchical focusing stages; >= 1.
    """

    def __init__(self, offset_range: float = 3.0, num_bins: int = 20, num_stages: int = 2):
        if isinstance(offset_range, bool) or not isinstance(offset_range, (int, float)):
            raise ValueError(f"MODEL.OFFSET_BIN.RANGE (a) must be a number, got {offset_range!r}")
        if not offset_range > 0 or offset_range == float("inf"):
            raise ValueError(
                f"MODEL.OFFSET_BIN.RANGE (a) must be finite and > 0, got {offset_range}"
            )
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 3:
            raise ValueError(
                "MODEL.OFFSET_BIN.NUM_BINS (n) counts the 2 outer bins and needs at least one "
                f"inner bin: an integer >= 3, got {num_bins!r}"
            )
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(
                f"MODEL.OFFSET_BIN.NUM_STAGES (K) must be an integer >= 1, got {num_stages!r}"
            )
        self.offset_range = float(offset_range)
        self.num_bins = num_bins
        self.num_stages = num_stages
        self.num_inner_bins = num_bins - 2  # m of section 3.2.1

        ranges: List[float] = []
        widths: List[float] = []
        a = self.offset_range
        for _ in range(num_stages):
            w = 2.0 * a / self.num_inner_bins  # w_k = 2 a_k / m (section 3.2.1)
            ranges.append(a)
            widths.append(w)
            a = w / 2.0  # a_{k+1}: half the bin width of stage k (section 3.2.4)
        # a_k and w_k of each stage, k = 0 .. K-1 (the paper counts from 1).
        self.ranges: Tuple[float, ...] = tuple(ranges)
        self.widths: Tuple[float, ...] = tuple(widths)

    def __repr__(self) -> str:
        return (f"OffsetBinCoder(offset_range={self.offset_range}, num_bins={self.num_bins}, "
                f"num_stages={self.num_stages})")

    # ------------------------------------------------------------------------------------------
    # Bins (Eq. 5)
    # ------------------------------------------------------------------------------------------
    def representatives(
        self, stage: int, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Eq. 5: the representative offsets t^r_l of the n bins of ``stage``, ordered by label.

        Returns:
            (n,) tensor: ``[-a, -a + w/2, -a + 3w/2, ..., a - w/2, a]``.
        """
        a, w = self.ranges[stage], self.widths[stage]
        centres = -a + (torch.arange(self.num_inner_bins, device=device, dtype=dtype) + 0.5) * w
        ends = torch.tensor([a], device=device, dtype=dtype)
        return torch.cat([-ends, centres, ends])

    def assign(self, offsets: Tensor, stage: int) -> Tensor:
        """The label of the bin of ``stage`` that contains each offset (Eq. 5's partition).

        Inner bin j (label j + 1) is ``[-a + j w, -a + (j + 1) w)``; offsets ``<= -a`` get label 0
        and offsets ``>= a`` label n - 1.

        Args:
            offsets: float tensor of any shape.
        Returns:
            int64 tensor of the same shape, in [0, n).
        """
        a, w = self.ranges[stage], self.widths[stage]
        inner = torch.floor((offsets + a) / w).clamp_(0, self.num_inner_bins - 1).long() + 1
        labels = torch.where(offsets <= -a, torch.zeros_like(inner), inner)
        return torch.where(offsets >= a, torch.full_like(inner, self.num_bins - 1), labels)

    # ------------------------------------------------------------------------------------------
    # Training targets
    # ------------------------------------------------------------------------------------------
    def encode(self, offsets: Tensor) -> Tensor:
        """Training targets: the bin label of each offset at every focusing stage.

        Stage 0 labels the offset; stage k + 1 labels the residual left by the representative of
        the *ground-truth* bin of stage k (see the class docstring, section 3.2.4).

        Args:
            offsets: float tensor of shape (...), e.g. (R, 4) target deltas t*.
        Returns:
            int64 tensor of shape (..., K).
        """
        residual = offsets
        labels = []
        for k in range(self.num_stages):
            label = self.assign(residual, k)
            labels.append(label)
            residual = residual - self.representatives(k, offsets.device, offsets.dtype)[label]
        return torch.stack(labels, dim=-1)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Eq. 7 for one coordinate: softmax over the n bins (Eq. 6) and cross-entropy.

        Its gradient w.r.t. the scores is ``p - y`` (Eq. 8): every component lies in [-1, 1],
        however wrong the offset.

        Args:
            logits: (..., K, n) bin scores s.
            labels: (..., K) int64 labels from :meth:`encode`.
        Returns:
            (..., K) cross-entropy per coordinate and stage (not reduced).
        """
        self._check_logits(logits)
        n = self.num_bins
        ce = F.cross_entropy(logits.reshape(-1, n), labels.reshape(-1), reduction="none")
        return ce.view(labels.shape)

    # ------------------------------------------------------------------------------------------
    # Decoding
    # ------------------------------------------------------------------------------------------
    def decode_stage(self, probs: Tensor, stage: int, expectation: bool = True) -> Tensor:
        """The offset t^k of one stage from its bin probabilities.

        Args:
            probs: (..., n) probabilities p_l over the stage's bins.
            expectation: Eq. 10, ``t = sum_l p_l t^r_l``; otherwise the representative of the most
                probable bin.
        Returns:
            (...) offsets.
        """
        reps = self.representatives(stage, probs.device, probs.dtype)
        if expectation:
            return (probs * reps).sum(dim=-1)  # Eq. 10: expectation over bin representatives
        return reps[probs.argmax(dim=-1)]

    def decode_probs(self, probs: Tensor, expectation: bool = True) -> Tensor:
        """Eq. 11: the offset as the sum over the stages of each stage's decoded offset.

        Args:
            probs: (..., K, n) per-stage bin probabilities.
        Returns:
            (...) offsets.
        """
        self._check_logits(probs)
        return sum(
            self.decode_stage(probs[..., k, :], k, expectation) for k in range(self.num_stages)
        )

    def decode(self, logits: Tensor, expectation: bool = True) -> Tensor:
        """Offsets from bin scores: softmax per coordinate and stage (Eq. 6), then Eqs. 10-11.

        Args:
            logits: (..., K, n) bin scores s.
        Returns:
            (...) offsets, e.g. (R, 4) deltas for ``Box2BoxTransform.apply_deltas``.
        """
        return self.decode_probs(F.softmax(logits, dim=-1), expectation)

    def _check_logits(self, logits: Tensor) -> None:
        if logits.dim() < 2 or logits.shape[-2:] != (self.num_stages, self.num_bins):
            raise ValueError(
                f"expected bin scores of shape (..., K={self.num_stages}, n={self.num_bins}), "
                f"got {tuple(logits.shape)}"
            )
