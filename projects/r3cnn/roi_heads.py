"""R^3-CNN's ROI heads: Mask R-CNN's single box head and single mask head, used in a loop.

Paper: Rossi, Karimi, Prati, "Recursively Refined R-CNN: Instance Segmentation with Self-RoI
Rebalancing" (Sec. 3, Eq. 1-2, Fig. 1b).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, cat
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.modeling.roi_heads.mask_head import (
    BaseMaskRCNNHead,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
)
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from d2infra.modeling.box_predictor import PredictorFromConfigMixin
from imbalance.samplers.roi_heads import RoISamplingMixin
from torch import nn

from .maskiou_head import MaskIoUHead, mask_iou_targets


# Objectness logit of a ground-truth box appended to the proposals, as Detectron2's
# add_ground_truth_to_proposals: P(object) = sigmoid(logit) ~ 1.
_GT_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


def check_loop_config(num_loops_train: int, num_loops_test: int, iou_thresholds: Sequence[float],
                      loop_loss_weights: Sequence[float]) -> None:
    """Raise ``ValueError`` on an inconsistent ``MODEL.R3CNN`` (checked when the heads are built)."""
    if num_loops_train < 1:
        raise ValueError(f"MODEL.R3CNN.NUM_LOOPS_TRAIN must be >= 1, got {num_loops_train}")
    if num_loops_test < 1:
        raise ValueError(f"the number of test loops must be >= 1, got {num_loops_test}")
    if len(iou_thresholds) != num_loops_train:
        raise ValueError(
            f"MODEL.R3CNN.IOU_THRESHOLDS has {len(iou_thresholds)} values "
            f"({list(iou_thresholds)}) but NUM_LOOPS_TRAIN is {num_loops_train}: one per loop")
    if len(loop_loss_weights) != num_loops_train:
        raise ValueError(
            f"MODEL.R3CNN.LOOP_LOSS_WEIGHTS has {len(loop_loss_weights)} values "
            f"({list(loop_loss_weights)}) but NUM_LOOPS_TRAIN is {num_loops_train}: one per loop")
    for u in iou_thresholds:
        if not 0.0 < u < 1.0:
            raise ValueError(f"MODEL.R3CNN.IOU_THRESHOLDS must lie in (0, 1), got {u}")


def _mask_loss(pred_mask_logits: torch.Tensor, gt_classes: torch.Tensor, gt_masks: torch.Tensor,
               vis_period: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Detectron2's :func:`mask_rcnn_loss` on targets already cropped: the mean binary
    cross-entropy of each RoI's ground-truth class mask (or the class-agnostic one) against
    ``gt_masks`` (R, M, M). Its logged statistics (accuracy, false positive and negative rates)
    are returned as a device tensor instead of read on the host (:func:`_put_mask_stats`).

    Returns:
        The loss, and a (3,) tensor: accuracy, false positive rate, false negative rate.
    """
    if pred_mask_logits.size(1) == 1:
        pred_mask_logits = pred_mask_logits[:, 0]
    else:
        indices = torch.arange(len(gt_classes), device=pred_mask_logits.device)
        pred_mask_logits = pred_mask_logits[indices, gt_classes]
    gt_masks_bool = gt_masks if gt_masks.dtype == torch.bool else gt_masks > 0.5
    gt_masks = gt_masks.to(dtype=torch.float32)
    mask_incorrect = (pred_mask_logits > 0.0) != gt_masks_bool
    num_positive = gt_masks_bool.sum()
    stats = torch.stack([
        1 - mask_incorrect.sum() / max(mask_incorrect.numel(), 1.0),
        (mask_incorrect & ~gt_masks_bool).sum() / (gt_masks_bool.numel() - num_positive).clamp(
            min=1.0),
        (mask_incorrect & gt_masks_bool).sum() / num_positive.clamp(min=1.0),
    ])
    storage = get_event_storage()
    if vis_period > 0 and storage.iter % vis_period == 0:
        vis_masks = torch.cat([pred_mask_logits.sigmoid(), gt_masks], axis=2)
        name = "Left: mask prediction;   Right: mask GT"
        for idx, vis_mask in enumerate(vis_masks):
            storage.put_image(name + f" ({idx})", torch.stack([vis_mask] * 3, axis=0))
    loss = F.binary_cross_entropy_with_logits(pred_mask_logits, gt_masks, reduction="mean")
    return loss, stats


def _put_mask_stats(stats: List[torch.Tensor]) -> None:
    """Put each loop's mask statistics under Detectron2's keys (``mask_rcnn/accuracy``,
    ``.../false_positive``, ``.../false_negative``, once per loop as its mask loss does), read
    on the host at once."""
    if not stats:
        return
    storage = get_event_storage()
    for accuracy, false_positive, false_negative in torch.stack(stats).tolist():
        storage.put_scalar("mask_rcnn/accuracy", accuracy)
        storage.put_scalar("mask_rcnn/false_positive", false_positive)
        storage.put_scalar("mask_rcnn/false_negative", false_negative)


@ROI_HEADS_REGISTRY.register()
class R3CNNROIHeads(RoISamplingMixin, PredictorFromConfigMixin, StandardROIHeads):
    """Recursively Refined R-CNN (Fig. 1b): one box head + predictor and one mask head, looped.

    Follows the authors' ``RecRoIHead`` (mmdetection branch r3_cnn,
    ``mmdet/models/roi_heads/r3_cnn_roi_head.py``). Training, loop t = 0 .. NUM_LOOPS_TRAIN-1
    (Eq. 1-2):

    1. re-label and re-sample the current proposals b^t at the loop's IoU threshold u^t
       (ground truth added in every loop, the boxes regressed from it dropped before the next,
       as in the authors' code; ``BATCH_SIZE_PER_IMAGE`` at ``POSITIVE_FRACTION`` through the
       configured RoI sampler; per-loop IoU histogram and fg:bg logged as ``imbalance/loop{t}``);
    2. pool them, run the one box head and predictor; classification and box losses;
    3. the regressed (class-agnostic) boxes, detached and clipped, are b^{t+1};
    4. mask branch (HTC's interleaving, as theirs): b^{t+1} plus the ground-truth boxes is
       re-labelled at u^t and its positives re-sampled (at most ``BATCH_SIZE_PER_IMAGE x
       POSITIVE_FRACTION`` per image, drawn at random as their RandomSampler); the mask head
       makes one plain pass on them. The loops' mask RoIs are pooled and passed through the mask
       head together, once per step and once per distinct box (the head's weights are the same in
       every loop, these RoIs do not depend on mask outputs, and the ground-truth boxes recur in
       every loop), and each loop's loss is taken on its own rows: the same values as one pooler
       and head call per loop, with one call instead of one per loop. With
       ``MASK_INFO_FLOW`` (ours, off by default) loop t runs the mask head t+1 times on its rows,
       each pass receiving the previous pass's mask features through a trained 1x1 conv.
       R^3-CNN-L's MaskIoU loss is computed in the last loop only.

    Every loss of loop t is multiplied by ``LOOP_LOSS_WEIGHTS[t]`` and named ``<loss>_loop{t}``;
    the MaskIoU loss is ``loss_maskiou``, not multiplied by a loop weight (as theirs).

    Inference: NUM_LOOPS_TEST loops of box head + predictor; the loops' classifications merged
    (Sec. 3, last paragraph) by ``SCORE_AVERAGING``: softmax of the mean logits (theirs) or mean of
    the probabilities; boxes from the last loop, NMS, then the masks of the final boxes.

    Masks at inference, by default: one pass of the mask head. This is where we deviate from the
    authors' code as their configs run it. All their R^3-CNN configs set ``mask_info_flow=True``,
    while their training calls HTC's mask training with stage index 0: the flow never runs there,
    and their mask head (``R3MaskHead``) adds ``conv_res(zeros) = ReLU(bias) = 0`` to its input, so
    the 1x1 ``conv_res`` gets zero gradients and keeps its random initial weights (shrunk by weight
    decay; its zero bias stays zero). Their ``simple_test`` then runs NUM_LOOPS_TEST mask passes on
    the final boxes, chained through that untrained conv (pass k adds ``ReLU(conv_res(features of
    pass k-1))`` to the pooled features), and averages the passes' sigmoid probabilities. Passes 2
    and later thus see features moved by a random layer the head never saw in training, and cost
    NUM_LOOPS_TEST - 1 extra mask passes, so our default is the single trained pass, the mask head
    as it was trained. ``MASK_UNTRAINED_FLOW: True`` reproduces theirs (the conv is built, fed
    zeros in training, chained at test). With either flow the passes' probabilities are averaged,
    as theirs; MaskIoU reads the last pass's mask, as theirs.

    Redefines ``forward`` and ``_forward_mask``; pooling, box head, predictor (built by
    ``MODEL.ROI_BOX_HEAD.PREDICTOR``), mask head and ``forward_with_given_boxes`` are
    ``StandardROIHeads``'. Regression must be class-agnostic (``CLS_AGNOSTIC_BBOX_REG: True`` is
    required, not forced: a config without it is an error). Keypoints are not supported.
    """

    @configurable
    def __init__(
        self,
        *,
        num_loops_train: int,
        num_loops_test: int,
        iou_thresholds: Sequence[float],
        loop_loss_weights: Sequence[float],
        score_averaging: str = "logits",
        mask_flow_conv: Optional[nn.Module] = None,
        mask_flow_trained: bool = True,
        maskiou_head: Optional[nn.Module] = None,
        maskiou_loss_weight: float = 0.5,
        maskiou_logit_thresh: float = 0.5,
        **kwargs,
    ):
        """
        Args:
            num_loops_train, num_loops_test: loops L_t and L_e.
            iou_thresholds: u^t of each training loop (Eq. 2).
            loop_loss_weights: weight of each training loop's losses.
            score_averaging: "logits" (softmax of the loops' mean class logits) or "probs"
                (mean of the loops' probabilities).
            mask_flow_conv: the 1x1 conv (+ReLU) of the mask information flow, or None for no
                flow. Needs a ``MaskRCNNConvUpsampleHead`` mask head.
            mask_flow_trained: with a flow conv: True = our HTC flow (loop t chains t+1 passes in
                training); False = the authors' code as run (one pass plus ``conv(zeros)`` in
                training, NUM_LOOPS_TEST chained passes at inference).
            maskiou_head: a :class:`MaskIoUHead`, or None.
            maskiou_loss_weight: weight of the MaskIoU L2 loss.
            maskiou_logit_thresh: logit above which a mask cell is foreground (MaskIoU target).
            kwargs: as for ``StandardROIHeads`` (+ ``roi_sampler``).
        """
        super().__init__(**kwargs)
        check_loop_config(num_loops_train, num_loops_test, iou_thresholds, loop_loss_weights)
        if score_averaging not in ("logits", "probs"):
            raise ValueError('MODEL.R3CNN.SCORE_AVERAGING must be "logits" or "probs", got '
                             f"{score_averaging!r}")
        if self.keypoint_on:
            raise ValueError("R3CNNROIHeads does not support keypoints (MODEL.KEYPOINT_ON)")
        if self.mask_on:
            if self.mask_pooler is None or not isinstance(self.mask_head, BaseMaskRCNNHead):
                raise ValueError("R3CNNROIHeads needs a pooled BaseMaskRCNNHead mask head "
                                 "(MODEL.ROI_MASK_HEAD.POOLER_TYPE set)")
            if mask_flow_conv is not None and not isinstance(self.mask_head,
                                                             MaskRCNNConvUpsampleHead):
                raise ValueError("MODEL.R3CNN.MASK_INFO_FLOW needs MaskRCNNConvUpsampleHead, got "
                                 f"{type(self.mask_head).__name__}")
        elif mask_flow_conv is not None or maskiou_head is not None:
            raise ValueError("mask information flow / MaskIoU need MODEL.MASK_ON")
        self.num_loops_train = num_loops_train
        self.num_loops_test = num_loops_test
        self.iou_thresholds = list(iou_thresholds)
        self.loop_loss_weights = list(loop_loss_weights)
        # One matcher per loop: Eq. (2), positive iff IoU >= u^t, as Detectron2's RoI matcher.
        self.loop_matchers = [Matcher([u], [0, 1], allow_low_quality_matches=False)
                              for u in self.iou_thresholds]
        self.score_averaging = score_averaging
        self.mask_flow_conv = mask_flow_conv
        self.mask_flow_trained = mask_flow_trained
        self.maskiou_head = maskiou_head
        self.maskiou_loss_weight = maskiou_loss_weight
        self.maskiou_logit_thresh = maskiou_logit_thresh
        # Mask RoIs per image and loop: the positives a sampler of BATCH_SIZE_PER_IMAGE at
        # POSITIVE_FRACTION may keep (theirs: RandomSampler num=512, pos_fraction=0.25).
        self.mask_positive_cap = int(self.batch_size_per_image * self.positive_fraction)

    @classmethod
    def from_config(cls, cfg, input_shape):
        r3 = cfg.MODEL.R3CNN
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError("R3CNNROIHeads regresses class-agnostically (one regressor, all loops):"
                             " set MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True")
        if cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES:
            raise ValueError("MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES has no meaning in R3CNNROIHeads")
        num_loops_test = r3.NUM_LOOPS_TEST if r3.NUM_LOOPS_TEST >= 1 else r3.NUM_LOOPS_TRAIN
        check_loop_config(r3.NUM_LOOPS_TRAIN, num_loops_test, r3.IOU_THRESHOLDS,
                          r3.LOOP_LOSS_WEIGHTS)
        ret = super().from_config(cfg, input_shape)
        ret.update(
            num_loops_train=r3.NUM_LOOPS_TRAIN,
            num_loops_test=num_loops_test,
            iou_thresholds=list(r3.IOU_THRESHOLDS),
            loop_loss_weights=list(r3.LOOP_LOSS_WEIGHTS),
            score_averaging=r3.SCORE_AVERAGING,
            maskiou_loss_weight=r3.MASKIOU_LOSS_WEIGHT,
            maskiou_logit_thresh=r3.MASKIOU_LOGIT_THRESH,
        )
        if cfg.MODEL.MASK_ON:
            in_channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
            mask_head = ret["mask_head"]
            if r3.MASK_INFO_FLOW and r3.MASK_UNTRAINED_FLOW:
                raise ValueError("MODEL.R3CNN.MASK_INFO_FLOW (our trained flow) and "
                                 "MASK_UNTRAINED_FLOW (the authors' untrained one) exclude each "
                                 "other")
            # A single training loop has no flow to learn (the conv would stay untrained).
            trained_flow = r3.MASK_INFO_FLOW and r3.NUM_LOOPS_TRAIN > 1
            if trained_flow or r3.MASK_UNTRAINED_FLOW:
                if not isinstance(mask_head, MaskRCNNConvUpsampleHead):
                    raise ValueError("MODEL.R3CNN.MASK_INFO_FLOW / MASK_UNTRAINED_FLOW need "
                                     "MODEL.ROI_MASK_HEAD.NAME MaskRCNNConvUpsampleHead (or a "
                                     "subclass)")
                # HTC: the previous pass's features (after the mask convs) go through a 1x1 conv
                # (+ReLU) and are added to the pooled RoI features of the next pass. MSRA fill,
                # zero bias: the init of their conv_res (mmcv kaiming_init, fan_out, normal).
                conv = Conv2d(mask_head.deconv.in_channels, in_channels, kernel_size=1,
                              activation=nn.ReLU())
                weight_init.c2_msra_fill(conv)
                ret["mask_flow_conv"] = conv
                ret["mask_flow_trained"] = bool(trained_flow)
            if r3.MASKIOU_ON:
                num_classes = (1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK
                               else cfg.MODEL.ROI_HEADS.NUM_CLASSES)
                ret["maskiou_head"] = MaskIoUHead(
                    in_channels, cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION, num_classes,
                    num_conv=r3.MASKIOU_NUM_CONV, conv_dim=r3.MASKIOU_CONV_DIM,
                    num_light_conv=r3.MASKIOU_NUM_LIGHT_CONV,
                    light_kernel_size=r3.LIGHT_HEAD_KERNEL_SIZE,
                    use_nonlocal=r3.MASKIOU_NONLOCAL,
                    nonlocal_kernel_size=r3.NONLOCAL_KERNEL_SIZE,
                    nonlocal_reduction=r3.NONLOCAL_REDUCTION)
        elif r3.MASKIOU_ON:
            raise ValueError("MODEL.R3CNN.MASKIOU_ON needs MODEL.MASK_ON")
        return ret

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """
        Args: as :meth:`ROIHeads.forward`.
        Returns:
            In training: the last loop's sampled proposals and the dict of losses
            ``loss_cls_loop{t}``, ``loss_box_reg_loop{t}`` (and the predictor's other keys),
            ``loss_mask_loop{t}``, each weighted by its loop's weight, and ``loss_maskiou``.
            In inference: the detections (``pred_boxes``, ``scores``, ``pred_classes``,
            ``pred_masks`` and, with MaskIoU, ``pred_maskiou`` and ``mask_scores``), and ``{}``.
        """
        del images
        if self.training:
            assert targets, "'targets' argument is required during training"
            # RoISamplingMixin.forward is bypassed (this forward comes first in the MRO): keep the
            # features reachable by its candidate_predictions (OHEM, PISA) as it does.
            with self.sampling_features(features):
                return self._forward_train(features, proposals, targets)
        pred_instances = self._forward_box_inference(features, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def _box_predictions(self, features: List[torch.Tensor], proposals: List[Instances]):
        """One pass of the shared box head and predictor (Eq. 1: h(x^t), f(x^t, b^t))."""
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        return self.box_predictor(self.box_head(box_features))

    def _refined_proposals(self, predictions, proposals: List[Instances]) -> List[Instances]:
        """b^{t+1} = f(x^t, b^t): the regressed boxes, detached and clipped, as new proposals.

        In training, empty boxes and the boxes regressed from appended ground-truth RoIs are
        dropped (no ``objectness_logits``: nothing after the RPN reads them; ``_append_gt`` gives
        them 0); at inference every box is kept, so that the scores of the loops stay aligned.
        """
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        refined = []
        for boxes_per_image, prop in zip(boxes, proposals):
            if boxes_per_image.shape[1] != 4:
                raise ValueError("R3CNNROIHeads needs class-agnostic boxes (R, 4) from the "
                                 f"predictor, got {tuple(boxes_per_image.shape)}")
            b = Boxes(boxes_per_image.detach())
            b.clip(prop.image_size)
            new = Instances(prop.image_size)
            if self.training:
                keep = b.nonempty()
                if prop.has("from_gt"):  # drop the boxes regressed from ground-truth RoIs
                    keep &= ~prop.from_gt
                new.proposal_boxes = b[keep]
            else:
                new.proposal_boxes = b
            refined.append(new)
        return refined

    @staticmethod
    def _append_gt(proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """Add the ground-truth boxes to each image's proposals, after them (the order of
        Detectron2's ``add_ground_truth_to_proposals``), marked by a boolean field ``from_gt``.

        R^3-CNN adds the ground truth in every loop and, as the authors' (mmdetection) code,
        drops the boxes regressed from these ground-truth RoIs before the next loop, so copies of
        the ground truth do not pile up over the loops. Only ``proposal_boxes`` and
        ``objectness_logits`` are kept.
        """
        out = []
        for prop, tgt in zip(proposals, targets):
            boxes = prop.proposal_boxes
            logits = (prop.objectness_logits if prop.has("objectness_logits")
                      else torch.zeros(len(prop), device=boxes.device))
            n, g = len(prop), len(tgt)
            ours = Instances(prop.image_size, proposal_boxes=boxes, objectness_logits=logits,
                             from_gt=torch.zeros(n, dtype=torch.bool, device=boxes.device))
            gt = Instances(prop.image_size, proposal_boxes=tgt.gt_boxes.to(boxes.device),
                           objectness_logits=torch.full((g,), _GT_LOGIT, device=boxes.device),
                           from_gt=torch.ones(g, dtype=torch.bool, device=boxes.device))
            out.append(Instances.cat([ours, gt]))
        return out

    @torch.no_grad()
    def _label_boxes(self, proposals: List[Instances], targets: List[Instances],
                     matcher: Matcher) -> List[Instances]:
        """Label every proposal against the ground truth with ``matcher`` (Eq. 2), no sampling:
        sets ``gt_classes`` (``num_classes`` for background) and the matched ``gt_*`` fields."""
        for prop, tgt in zip(proposals, targets):
            if len(tgt) > 0 and len(prop) > 0:
                matched_idxs, matched_labels = matcher(
                    pairwise_iou(tgt.gt_boxes, prop.proposal_boxes))
                gt_classes = tgt.gt_classes[matched_idxs]
                gt_classes[matched_labels == 0] = self.num_classes
                for name, value in tgt.get_fields().items():
                    if name.startswith("gt_") and name != "gt_classes":
                        prop.set(name, value[matched_idxs])
            else:
                gt_classes = torch.full((len(prop),), self.num_classes, dtype=torch.int64,
                                        device=prop.proposal_boxes.device)
            prop.gt_classes = gt_classes
        return proposals

    @torch.no_grad()
    def _mask_training_rois(self, refined: List[Instances], targets: List[Instances],
                            matcher: Matcher) -> List[Instances]:
        """The mask branch's RoIs of one loop: the loop's regressed boxes plus the ground truth,
        labelled at the loop's threshold, and at most ``mask_positive_cap`` of their positives
        per image, drawn at random (the authors re-assign and re-sample the refined boxes with
        the loop's assigner and RandomSampler, then train the mask on the sampled positives)."""
        rois = self._append_gt(refined, targets) if self.proposal_append_gt else refined
        rois = self._label_boxes(
            [Instances(p.image_size, proposal_boxes=p.proposal_boxes) for p in rois],
            targets, matcher)
        out = []
        for r in rois:
            fg = torch.nonzero(r.gt_classes != self.num_classes).squeeze(1)  # no ignored (-1)
            keep = torch.randperm(fg.numel(), device=fg.device)[:self.mask_positive_cap]
            out.append(r[fg[keep]])
        return out

    def _forward_train(self, features: Dict[str, torch.Tensor], proposals: List[Instances],
                       targets: List[Instances]):
        box_features = [features[f] for f in self.box_in_features]
        loop_losses: List[Dict[str, torch.Tensor]] = []
        mask_rois: List[List[Instances]] = []
        for t in range(self.num_loops_train):
            matcher = self.loop_matchers[t]
            if self.proposal_append_gt:
                proposals = self._append_gt(proposals, targets)
            # Re-label and re-sample b^t at u^t (Eq. 2); logs imbalance/loop{t}/...
            proposals = self.label_and_sample_proposals(proposals, targets, stage=f"loop{t}",
                                                        matcher=matcher, append_gt=False)
            predictions = self._box_predictions(box_features, proposals)
            loop_losses.append(dict(self.box_predictor.losses(predictions, proposals)))
            with torch.no_grad():
                refined = self._refined_proposals(predictions, proposals)
            if self.mask_on:
                # HTC interleaving: the mask head learns on the refined boxes, re-sampled at u^t.
                mask_rois.append(self._mask_training_rois(refined, targets, matcher))
            last_sampled, proposals = proposals, refined
        losses: Dict[str, torch.Tensor] = {}
        if self.mask_on:
            for t, mask_losses in enumerate(self._forward_mask_train(features, mask_rois)):
                if "loss_maskiou" in mask_losses:  # last loop only, not loop-weighted (theirs)
                    losses["loss_maskiou"] = mask_losses.pop("loss_maskiou")
                loop_losses[t].update(mask_losses)
        for t, (weight, loop) in enumerate(zip(self.loop_loss_weights, loop_losses)):
            losses.update({f"{k}_loop{t}": v * weight for k, v in loop.items()})
        return last_sampled, losses

    def _forward_box_inference(self, features: Dict[str, torch.Tensor],
                               proposals: List[Instances]) -> List[Instances]:
        """NUM_LOOPS_TEST loops; merged classification (``SCORE_AVERAGING``), boxes of the last
        loop, then NMS."""
        box_features = [features[f] for f in self.box_in_features]
        merged = None
        for t in range(self.num_loops_test):
            predictions = self._box_predictions(box_features, proposals)
            if self.score_averaging == "logits":  # theirs: mean of the cls_score logits
                scores = predictions[0]
            else:
                scores = cat(self.box_predictor.predict_probs(predictions, proposals))
            merged = scores if merged is None else merged + scores
            if t < self.num_loops_test - 1:
                proposals = self._refined_proposals(predictions, proposals)
        merged = merged / self.num_loops_test
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        if self.score_averaging == "logits":  # softmax (the predictor's) of the mean logits
            probs = self.box_predictor.predict_probs((merged,) + tuple(predictions[1:]), proposals)
        else:
            probs = merged.split([len(p) for p in proposals])
        predictor = self.box_predictor
        instances, _ = fast_rcnn_inference(
            boxes, probs, [p.image_size for p in proposals], predictor.test_score_thresh,
            predictor.test_nms_thresh, predictor.test_topk_per_image)
        return instances

    # ------------------------------------------------------------------ masks
    def _mask_pass(self, x: torch.Tensor, prev_feat: Optional[torch.Tensor],
                   need_logits: bool = True):
        """One pass of the shared mask head with HTC's information flow.

        ``x`` is the pooled RoI features; ``prev_feat`` the previous pass's features after the
        mask convs (None in the first pass). Returns ``(logits or None, features after convs)``.
        """
        head = self.mask_head
        if prev_feat is not None:
            x = x + self.mask_flow_conv(prev_feat)
        for conv in head.conv_norm_relus:
            x = conv(x)
        logits = head.predictor(F.relu(head.deconv(x))) if need_logits else None
        return logits, x

    def _mask_logits(self, x: torch.Tensor, num_passes: int) -> List[torch.Tensor]:
        """Mask logits of each pass: one pass of the plain head, or ``num_passes`` passes chained
        by the information flow (only the last pass's logits when training).

        The authors' untrained flow (``mask_flow_trained`` False) is their ``R3MaskHead``: every
        pass, the first included, adds the conv's output for the previous features, zeros for
        the first pass (``ReLU(bias)``, 0 as their zero bias never learns). Training asks for one
        pass, so the conv only gets zero gradients (weight decay still applies, as theirs)."""
        if self.mask_flow_conv is None:
            return [self.mask_head.layers(x)]
        feat = None
        if not self.mask_flow_trained:
            feat = x.new_zeros((1, self.mask_flow_conv.in_channels, 1, 1))
        logits = []
        for k in range(num_passes):
            need = (not self.training) or k == num_passes - 1
            out, feat = self._mask_pass(x, feat, need_logits=need)
            if out is not None:
                logits.append(out)
        return logits

    def _forward_mask_train(self, features: Dict[str, torch.Tensor],
                            loop_instances: List[List[Instances]]) -> List[Dict[str, torch.Tensor]]:
        """Mask loss of each loop t on ``loop_instances[t]`` (the loop's sampled positives, one
        ``Instances`` per image), and in the last loop the MaskIoU loss if the branch is on.

        One pooler call and, without the trained flow, one mask-head pass over the distinct RoIs
        of all loops: a box in several loops (the ground truth, added in every loop) is pooled and
        passed once, its logits serving each loop that has it. The mask targets are cropped once
        per step, for those distinct RoIs (:meth:`_distinct_mask_targets`), and shared by every
        loop's mask loss and by the MaskIoU targets. Loop t's loss is Detectron2's mask loss on
        its rows (:func:`mask_rcnn_loss`), as if its RoIs were pooled and passed alone."""
        num_images = len(loop_instances[0])
        distinct, rows_of, first_of = [], [], []  # per image: distinct boxes, RoI rows, 1st RoI
        offset = 0
        for i in range(num_images):
            boxes = cat([loop[i].proposal_boxes.tensor for loop in loop_instances])
            unique, inverse = torch.unique(boxes, dim=0, return_inverse=True)
            distinct.append(Boxes(unique))
            rows_of.append(inverse + offset)
            first = torch.full((len(unique),), len(inverse), dtype=torch.int64,
                               device=inverse.device)
            first_of.append(first.scatter_reduce_(
                0, inverse, torch.arange(len(inverse), device=inverse.device), reduce="amin"))
            offset += len(unique)
        x = self.mask_pooler([features[f] for f in self.mask_in_features], distinct)
        rows_of = cat(rows_of)  # image by image, loop by loop within an image
        # The loop of each of those RoIs.
        loop_of_roi = cat([torch.full((len(loop[i]),), t, dtype=torch.int64, device=x.device)
                           for i in range(num_images) for t, loop in enumerate(loop_instances)])
        shared = None if self.mask_flow_trained and self.mask_flow_conv is not None else (
            self._mask_logits(x, 1)[-1])
        last = len(loop_instances) - 1
        gt_masks = None  # (distinct RoIs, M, M) targets, cropped on first use
        out, stats = [], []
        for t, instances in enumerate(loop_instances):
            rows = rows_of[loop_of_roi == t]
            logits = (self._mask_logits(x[rows], t + 1)[-1] if shared is None else shared[rows])
            if len(rows) == 0:  # no positive in the batch: Detectron2's zero loss, no statistics
                out.append({"loss_mask": logits.sum() * 0 * self.mask_head.loss_weight})
                continue
            if gt_masks is None:
                gt_masks = self._distinct_mask_targets(loop_instances, distinct, first_of,
                                                       logits.shape[-1], logits.device)
            gt_classes = cat([i.gt_classes for i in instances]).to(dtype=torch.int64)
            loss, loop_stats = _mask_loss(logits, gt_classes, gt_masks[rows],
                                          self.mask_head.vis_period)
            stats.append(loop_stats)
            losses = {"loss_mask": loss * self.mask_head.loss_weight}
            if t == last and self.maskiou_head is not None:
                losses["loss_maskiou"] = self._maskiou_loss(x[rows], logits, instances,
                                                            gt_masks[rows])
            out.append(losses)
        _put_mask_stats(stats)
        return out

    @torch.no_grad()
    def _distinct_mask_targets(self, loop_instances: List[List[Instances]],
                               distinct: List[Boxes], first_of: List[torch.Tensor], side: int,
                               device: torch.device) -> torch.Tensor:
        """The Mask R-CNN targets (``gt_masks.crop_and_resize``, as Detectron2's mask loss makes
        them: polygons rasterised in the box on the host, bitmasks RoI-aligned on their device)
        of each image's distinct mask RoIs, cropped once per step for all loops.

        A distinct box takes the matched instance of its first RoI: every RoI with that box has
        the same one (the matcher's argmax over the same ground truth).

        Returns:
            (sum of distinct boxes, side, side) booleans, image by image (the pooler's rows).
        """
        targets = []
        for i, (boxes, first) in enumerate(zip(distinct, first_of)):
            if len(boxes) == 0:
                continue
            per_loop = [loop[i] for loop in loop_instances if len(loop[i]) > 0]
            masks = type(per_loop[0].gt_masks).cat([p.gt_masks for p in per_loop])
            targets.append(masks[first].crop_and_resize(boxes.tensor, side).to(device=device))
        return cat(targets, dim=0)

    def _class_mask_logits(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(R, M, M) logits of each RoI's class (or of the class-agnostic mask)."""
        if logits.shape[1] == 1:
            return logits[:, 0]
        return logits[torch.arange(len(classes), device=logits.device), classes]

    def _maskiou_of_class(self, x: torch.Tensor, class_logits: torch.Tensor,
                          classes: torch.Tensor) -> torch.Tensor:
        """The MaskIoU head's prediction for each RoI's class ``classes`` (R,)."""
        pred = self.maskiou_head(x, class_logits)
        idx = classes if pred.shape[1] > 1 else torch.zeros_like(classes)
        return pred[torch.arange(len(idx), device=pred.device), idx]

    def _maskiou_loss(self, x: torch.Tensor, logits: torch.Tensor, instances: List[Instances],
                      gt_masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mask Scoring R-CNN's L2 loss between predicted and target mask IoU (ground-truth
        class), on the positives whose target is > 0, times ``MASKIOU_LOSS_WEIGHT``. As theirs
        (``FCCMaskIoUHead.loss``), the mask logits enter the MaskIoU head undetached.
        ``gt_masks``: the RoIs' cropped targets when already computed (the mask loss's)."""
        gt_classes = cat([i.gt_classes for i in instances])  # one Instances per image
        class_logits = self._class_mask_logits(logits, gt_classes)
        pred_iou = self._maskiou_of_class(x, class_logits, gt_classes)
        target = mask_iou_targets(class_logits.detach(), instances, self.maskiou_logit_thresh,
                                  gt_masks=gt_masks)
        # In float32 under mixed precision: the target is not rounded to the prediction's half
        # dtype, and CUDA (pow, sum in float32) and CPU (bfloat16) autocast agree.
        pred_iou = pred_iou.float()
        # The mean over the positive targets, without gathering them (no host sync): 0 without.
        positive = (target > 0).to(pred_iou.dtype)
        squared = (pred_iou - target.to(pred_iou.dtype)) ** 2 * positive
        return squared.sum() / positive.sum().clamp(min=1.0) * self.maskiou_loss_weight

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """Inference: masks on the final boxes. One pass of the mask head; with a flow,
        NUM_LOOPS_TEST chained passes whose sigmoid probabilities are averaged (theirs:
        ``merge_aug_masks`` of the passes' ``sigmoid``). With MaskIoU, ``pred_maskiou`` (the
        head's output for the predicted class, from the last pass's mask, as theirs) and
        ``mask_scores = scores * pred_maskiou`` are added. (Training: ``_forward_mask_train``.)"""
        if not self.mask_on:
            return instances
        x = self.mask_pooler([features[f] for f in self.mask_in_features],
                             [i.pred_boxes for i in instances])
        passes = self._mask_logits(x, self.num_loops_test)
        classes = cat([i.pred_classes for i in instances])  # one Instances per image
        if len(passes) == 1:
            mask_rcnn_inference(passes[0], instances)
        else:
            probs = torch.stack([self._class_mask_logits(p, classes).sigmoid() for p in passes])
            probs = probs.mean(dim=0)[:, None]
            for inst, prob in zip(instances, probs.split([len(i) for i in instances])):
                inst.pred_masks = prob  # (R, 1, M, M), as Detectron2's mask_rcnn_inference
        if self.maskiou_head is not None:
            maskiou = self._maskiou_of_class(x, self._class_mask_logits(passes[-1], classes),
                                             classes)
            for inst, iou in zip(instances, maskiou.split([len(i) for i in instances])):
                inst.pred_maskiou = iou
                inst.mask_scores = inst.scores * iou
        return instances
