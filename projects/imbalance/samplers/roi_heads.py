"""ROI heads whose RoI sampling goes through the sampler registry and logs imbalance diagnostics."""
import contextlib
import functools
import logging
import re
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import nn

from ..diagnostics import check_diagnostics_period, diagnostics_due, log_sampling_stats
from ..losses.fast_rcnn import fast_rcnn_per_roi_losses
from d2infra.modeling.box_predictor import (
    PredictorFromConfigMixin,
    SoftmaxClassificationMixin,
    build_box_predictor,
)
from .base import Candidates, RoISampler, build_roi_sampler

logger = logging.getLogger(__name__)


def _cached_head(cached: torch.Tensor, logits: torch.Tensor, boxes: torch.Tensor,
                 fallback: Callable, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``Candidates.head`` answered from a batched pass over the candidates ``cached``; other
    requests go to ``fallback`` (a pass of their own)."""
    if torch.equal(indices, cached):
        return logits, boxes
    return fallback(indices)


class RoISamplingMixin:
    """Replaces ``ROIHeads.label_and_sample_proposals`` with one that asks ``self.roi_sampler``.

    Mix it in before a Detectron2 ROI head: ``class X(RoISamplingMixin, StandardROIHeads)``.
    With the default ``random`` sampler the RoIs are exactly Detectron2's. Besides Detectron2's
    fields, each sampled proposal carries ``gt_ious`` (IoU with its matched ground truth) and
    ``loss_weights`` (the sampler's per-RoI weight). Each call logs the stage's positive-IoU
    histogram and fg:bg ratio (:func:`imbalance.diagnostics.log_sampling_stats`).

    For samplers that need the head's predictions (OHEM, PISA), ``forward`` keeps a reference to
    the features for the duration of the call; :meth:`candidate_predictions` pools every
    candidate and runs the box head and predictor of the stage (:meth:`sampling_box_modules`)
    without gradient and computes their losses (OHEM), and :meth:`candidate_head` does the same
    for the candidates a sampler asks for, without losses (PISA's negatives).
    """

    @configurable
    def __init__(self, *, roi_sampler: RoISampler, diagnostics_period: int = 1, **kwargs):
        """
        Args:
            roi_sampler: the sampler of every image's candidates.
            diagnostics_period: log the sampling diagnostics every that many iterations.
            kwargs: the arguments of the ROI head mixed with.
        """
        super().__init__(**kwargs)
        self.roi_sampler = roi_sampler
        self.diagnostics_period = check_diagnostics_period(diagnostics_period)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["roi_sampler"] = build_roi_sampler(cfg)
        ret["diagnostics_period"] = check_diagnostics_period(
            cfg.MODEL.get("IMBALANCE_DIAGNOSTICS_PERIOD", 1))
        sampler = ret["roi_sampler"]
        if sampler.produces_weights:
            predictors = ret.get("box_predictors") or [ret.get("box_predictor")]
            if not all(getattr(p, sampler.predictor_flag, False) for p in predictors):
                logger.warning(
                    f"MODEL.ROI_HEADS.SAMPLER={cfg.MODEL.ROI_HEADS.SAMPLER!r} weighs RoIs, but the "
                    f"box predictor ({type(predictors[0]).__name__}) does not apply its weights "
                    f"(no {sampler.predictor_flag}); set MODEL.ROI_BOX_HEAD.PREDICTOR to "
                    f"{sampler.predictor_name!r}.")
        return ret

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor],
                proposals: List[Instances], targets: Optional[List[Instances]] = None):
        """The ROI head's ``forward``, keeping ``features`` reachable by
        :meth:`candidate_predictions` while it runs."""
        with self.sampling_features(features):
            return super().forward(images, features, proposals, targets)

    @contextlib.contextmanager
    def sampling_features(self, features: Dict[str, torch.Tensor]):
        """Keep ``features`` reachable by :meth:`candidate_predictions` inside the block. Heads
        that override ``forward`` wrap their training pass in it."""
        self._sampling_features = features
        try:
            yield
        finally:
            self._sampling_features = None

    def sampling_box_modules(self, stage: str) -> Tuple[nn.Module, nn.Module]:
        """The ``(box_head, box_predictor)`` that :meth:`candidate_predictions` runs for ``stage``:
        ``self.box_head``/``self.box_predictor``, or entry ``N`` of them for a name ending in
        ``N`` (``"stageN"``, ``"loopN"``; 0 for a name without a number) when they are
        ``ModuleList`` (Cascade R-CNN). Heads with other layouts override this."""
        head, predictor = self.box_head, self.box_predictor
        if isinstance(head, nn.ModuleList):
            match = re.search(r"(\d+)$", stage)
            k = int(match.group(1)) if match else 0
            head, predictor = head[k], predictor[k]
        return head, predictor

    def candidate_predictions(self, proposals: Instances, labels: torch.Tensor,
                              matched_idxs: torch.Tensor, targets: Instances,
                              image_index: int = 0, stage: str = "roi_head"
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The head's predictions on one image's labelled candidates, without gradient, for
        samplers that need them (see ``RoISampler.needs_predictions``).

        Args:
            proposals: the image's candidates (``proposal_boxes``).
            labels, matched_idxs: the matcher's labels and ground-truth indices of the candidates.
            targets: the image's ground truth.
            image_index: position of the image in the batch (its slice of the features).
            stage: the stage being sampled (see :meth:`sampling_box_modules`).
        Returns:
            ``(scores (N, K+1), ce (N,), box (N,))``: softmax class scores, and each RoI's
            classification and box-regression loss (the predictor's ``per_roi_losses`` if it has
            one, else :func:`imbalance.losses.fast_rcnn_per_roi_losses`).
        """
        box_predictor, predictions = self._candidate_forward([proposals.proposal_boxes],
                                                             [image_index], stage)
        candidates = Instances(proposals.image_size, proposal_boxes=proposals.proposal_boxes,
                               gt_classes=labels)
        if len(targets) > 0:
            candidates.gt_boxes = targets.gt_boxes[matched_idxs]
        with torch.no_grad():
            per_roi_losses = getattr(box_predictor, "per_roi_losses", None)
            if per_roi_losses is not None:
                ce, box = per_roi_losses(predictions, [candidates])
            else:
                ce, box = fast_rcnn_per_roi_losses(box_predictor, predictions, [candidates])
            scores = torch.softmax(predictions[0], dim=-1)
        return scores, ce, box

    def candidate_head(self, proposals: Instances, indices: torch.Tensor, image_index: int = 0,
                       stage: str = "roi_head") -> Tuple[torch.Tensor, torch.Tensor]:
        """The head's outputs on some of one image's candidates, without gradient and without
        losses, for samplers that need only scores and boxes (PISA's negatives).

        Args:
            proposals: the image's candidates (``proposal_boxes``).
            indices: the candidates to evaluate.
            image_index, stage: as for :meth:`candidate_predictions`.
        Returns:
            ``(logits (n, K+1), boxes (n, 4K or 4))``: the class logits and the predictor's
            ``predict_boxes`` (regressed boxes, per class unless class-agnostic).
        """
        subset = proposals.proposal_boxes[indices]
        box_predictor, predictions = self._candidate_forward([subset], [image_index], stage)
        with torch.no_grad():
            boxes = box_predictor.predict_boxes(
                predictions, [Instances(proposals.image_size, proposal_boxes=subset)])[0]
        return predictions[0], boxes

    def _candidate_forward(self, boxes: List[Boxes], image_indices: List[int], stage: str):
        """Pool ``boxes[j]`` of image ``image_indices[j]`` and run the stage's box head and
        predictor without gradient; returns ``(box_predictor, predictions)``."""
        features = getattr(self, "_sampling_features", None)
        if features is None:
            raise RuntimeError(
                f"{type(self).__name__} evaluates the candidates with the features of the current "
                f"forward; the {type(self.roi_sampler).__name__} sampler works only inside "
                "forward()")
        box_head, box_predictor = self.sampling_box_modules(stage)
        with torch.no_grad():
            x = [features[f] for f in self.box_in_features]
            if image_indices != list(range(len(x[0]))):
                x = [f[image_indices] for f in x]
            predictions = box_predictor(box_head(self.box_pooler(x, boxes)))
        return box_predictor, predictions

    def _label_candidates(self, proposals: Instances, targets: Instances, matcher: Matcher,
                          image_index: int, stage: str) -> Candidates:
        """Match one image's proposals to its ground truth: the sampler's :class:`Candidates`
        (with lazy ``predictions`` and ``head`` when the sampler needs them)."""
        iou_matrix = pairwise_iou(targets.gt_boxes, proposals.proposal_boxes)
        matched_idxs, matched_labels = matcher(iou_matrix)
        if len(targets) > 0:
            ious = iou_matrix.max(dim=0).values
            labels = targets.gt_classes[matched_idxs]
            labels[matched_labels == 0] = self.num_classes
            labels[matched_labels == -1] = -1
        else:
            ious = torch.zeros_like(matched_idxs, dtype=torch.float32)
            labels = torch.zeros_like(matched_idxs) + self.num_classes
        predictions = head = None
        if self.roi_sampler.needs_predictions:
            predictions = functools.partial(
                self.candidate_predictions, proposals, labels, matched_idxs, targets,
                image_index=image_index, stage=stage)
            head = functools.partial(self.candidate_head, proposals, image_index=image_index,
                                     stage=stage)
        return Candidates(labels, ious, matched_idxs, self.num_classes, predictions,
                          boxes=proposals.proposal_boxes.tensor, head=head)

    def _batch_candidate_heads(self, proposals: List[Instances], candidates: List[Candidates],
                               stage: str) -> None:
        """Evaluate, in one pass over the batch, the candidates each image's sampler will ask
        ``head`` for (``RoISampler.head_candidates``), and make ``head`` answer from that pass.
        One pooler and box-head call for all images instead of one per image."""
        wanted = [self.roi_sampler.head_candidates(c) for c in candidates]
        if any(w is None for w in wanted) or sum(len(w) for w in wanted) == 0:
            return
        boxes = [p.proposal_boxes[w] for p, w in zip(proposals, wanted)]
        box_predictor, predictions = self._candidate_forward(boxes, list(range(len(boxes))), stage)
        with torch.no_grad():
            pred_boxes = box_predictor.predict_boxes(
                predictions, [Instances(p.image_size, proposal_boxes=b)
                              for p, b in zip(proposals, boxes)])
        logits = predictions[0].split([len(w) for w in wanted])
        for c, w, lg, bx in zip(candidates, wanted, logits, pred_boxes):
            c.head = functools.partial(_cached_head, w, lg, bx, c.head)

    @torch.no_grad()
    def label_and_sample_proposals(
        self,
        proposals: List[Instances],
        targets: List[Instances],
        stage: str = "roi_head",
        matcher: Optional[Matcher] = None,
        append_gt: Optional[bool] = None,
    ) -> List[Instances]:
        """Match proposals to ground truth and sample them, as Detectron2's method does.

        Args:
            proposals, targets: as in :meth:`ROIHeads.forward`.
            stage: name of the stage or loop, for the diagnostics (``"loop2"``, ``"stage1"``).
            matcher: the IoU matcher of this stage (default ``self.proposal_matcher``).
            append_gt: add the ground-truth boxes to the proposals (default
                ``self.proposal_append_gt``).
        Returns:
            list[Instances]: the sampled proposals with ``gt_classes``, ``gt_boxes`` (and the
            other ``gt_*`` fields of the targets), ``gt_ious`` and ``loss_weights``.
        """
        matcher = matcher if matcher is not None else self.proposal_matcher
        append_gt = self.proposal_append_gt if append_gt is None else append_gt
        if append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)

        candidates = [
            self._label_candidates(p, t, matcher, image_index, stage)
            for image_index, (p, t) in enumerate(zip(proposals, targets))
        ]
        if self.roi_sampler.needs_predictions:
            self._batch_candidate_heads(proposals, candidates, stage)

        sampled_proposals, sampled_ious, sampled_fg, sampled_bg = [], [], [], []
        for proposals_per_image, targets_per_image, cands in zip(proposals, targets, candidates):
            has_gt = len(targets_per_image) > 0
            labels, ious, matched_idxs = cands.labels, cands.ious, cands.matched_idxs
            sampled = self.roi_sampler(cands)
            idx = sampled.indices

            proposals_per_image = proposals_per_image[idx]
            proposals_per_image.gt_classes = labels[idx]
            proposals_per_image.gt_ious = ious[idx]
            proposals_per_image.loss_weights = sampled.weights
            if has_gt:
                sampled_targets = matched_idxs[idx]
                for name, value in targets_per_image.get_fields().items():
                    if name.startswith("gt_") and not proposals_per_image.has(name):
                        proposals_per_image.set(name, value[sampled_targets])

            sampled_ious.append(ious[idx])
            sampled_fg.append((labels[idx] >= 0) & (labels[idx] < self.num_classes))
            sampled_bg.append(labels[idx] == self.num_classes)
            sampled_proposals.append(proposals_per_image)

        if diagnostics_due(self.diagnostics_period):
            # The shared imbalance diagnostics (per batch), counted on the device with one host
            # sync, then Detectron2's own keys (per image) from the same counts.
            is_fg = torch.cat(sampled_fg)
            num_fg, num_bg = log_sampling_stats(stage, torch.cat(sampled_ious), is_fg.sum(),
                                                torch.cat(sampled_bg).sum(), is_fg=is_fg)
            storage = get_event_storage()
            prefix = "" if stage == "roi_head" else f"{stage}/"
            storage.put_scalar(f"{prefix}roi_head/num_fg_samples", num_fg / max(len(proposals), 1))
            storage.put_scalar(f"{prefix}roi_head/num_bg_samples", num_bg / max(len(proposals), 1))
        return sampled_proposals


@ROI_HEADS_REGISTRY.register()
class SamplingStandardROIHeads(RoISamplingMixin, PredictorFromConfigMixin, StandardROIHeads):
    """Detectron2's ``StandardROIHeads`` with the RoI sampler chosen by ``MODEL.ROI_HEADS.SAMPLER``
    and the box predictor by ``MODEL.ROI_BOX_HEAD.PREDICTOR`` (e.g.
    ``PISAFastRCNNOutputLayers``, which applies PISA's weights). With the defaults, the head,
    its initialisation under a seed included, is ``StandardROIHeads``'."""


@ROI_HEADS_REGISTRY.register()
class SamplingCascadeROIHeads(RoISamplingMixin, SoftmaxClassificationMixin, CascadeROIHeads):
    """Detectron2's ``CascadeROIHeads`` with the sampler registry at its first stage.

    Redefines:

    - ``label_and_sample_proposals``: stage 0 samples the RPN proposals with
      ``MODEL.ROI_HEADS.SAMPLER`` (diagnostics under ``stage0``);
    - ``_match_and_label_boxes``: later stages keep Cascade R-CNN's rule (every box of the previous
      stage is labelled with the stage's IoU threshold and trained on, none subsampled, weight 1),
      and add ``gt_ious``, ``loss_weights`` and the diagnostics of ``stage1``, ``stage2``, ...;
    - ``_init_box_head``: unless ``MODEL.ROI_BOX_HEAD.PREDICTOR`` is ``FastRCNNOutputLayers``,
      each stage's predictor is rebuilt by it (with the stage's box transform), so a weighted
      predictor can apply a sampler's weights.

    With the ``random`` sampler the training is Detectron2's. Like every sampling head, it refuses
    Detectron2 main's ``MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE`` and ``USE_FED_LOSS``, also with the
    default predictor (:class:`d2infra.modeling.box_predictor.SoftmaxClassificationMixin`): the
    samplers that evaluate candidates (OHEM, PISA) score them with the softmax over K + 1 classes,
    and ``SamplingStandardROIHeads`` refuses them too.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        if cfg.MODEL.ROI_BOX_HEAD.PREDICTOR == "FastRCNNOutputLayers":
            return ret  # Detectron2's, built (and initialised) exactly as CascadeROIHeads does
        ret["box_predictors"] = [
            build_box_predictor(
                cfg, head.output_shape,
                box2box_transform=Box2BoxTransform(weights=p.box2box_transform.weights))
            for head, p in zip(ret["box_heads"], ret["box_predictors"])
        ]
        return ret

    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances],
                                   stage: str = "stage0", matcher: Optional[Matcher] = None,
                                   append_gt: Optional[bool] = None) -> List[Instances]:
        """:meth:`RoISamplingMixin.label_and_sample_proposals` for the first stage (``stage0``)."""
        return super().label_and_sample_proposals(proposals, targets, stage, matcher, append_gt)

    @torch.no_grad()
    def _match_and_label_boxes(self, proposals: List[Instances], stage: int,
                               targets: List[Instances]) -> List[Instances]:
        """Cascade R-CNN's labelling of stage ``stage`` >= 1, plus ``gt_ious``, ``loss_weights``
        and the stage's diagnostics. Returns the same proposals with ``gt_classes``, ``gt_boxes``,
        ``gt_ious`` and ``loss_weights``."""
        proposals = super()._match_and_label_boxes(proposals, stage, targets)
        all_ious, all_fg = [], []
        for proposals_per_image, targets_per_image in zip(proposals, targets):
            boxes = proposals_per_image.proposal_boxes
            if len(targets_per_image) > 0:
                ious = pairwise_iou(targets_per_image.gt_boxes, boxes).max(dim=0).values
            else:
                ious = boxes.tensor.new_zeros(len(boxes))
            proposals_per_image.gt_ious = ious
            proposals_per_image.loss_weights = torch.ones_like(ious)
            all_ious.append(ious)
            all_fg.append(proposals_per_image.gt_classes != self.num_classes)
        if diagnostics_due(self.diagnostics_period):  # one host sync for the batch
            is_fg = torch.cat(all_fg)
            log_sampling_stats(f"stage{stage}", torch.cat(all_ious), is_fg.sum(), (~is_fg).sum(),
                               is_fg=is_fg)
        return proposals
