"""Tests of r3cnn.maskiou_head (Mask Scoring R-CNN's MaskIoU branch as R^3-CNN-L builds it) and of
its use in R3CNNROIHeads: hand-made mask pairs, the authors' layer sizes, hand-computed losses and
the predicted class's IoU read at inference."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from r3cnn import MaskIoUHead
from r3cnn.maskiou_head import mask_iou_targets

from test_r3cnn_roi_heads import (_one_image, build, make_cfg, make_features, make_proposals,
                                  make_targets, zero_regression)


def _cut_object(masks_type):
    """An 8 (w) x 4 (h) object at the top-left of an 8x8 image; the RoI [0, 0, 4, 4] holds its left
    half. The mask is predicted on all of the RoI (M = 4: one cell per pixel)."""
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 0:4, 0:8] = True
    masks = (BitMasks(gt) if masks_type == "bitmask"
             else PolygonMasks([[[0.0, 0.0, 8.0, 0.0, 8.0, 4.0, 0.0, 4.0]]]))
    return Instances((8, 8), proposal_boxes=Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0]])),
                     gt_masks=masks)


@pytest.mark.parametrize("masks_type", ["bitmask", "polygon"])
def test_target_is_the_iou_with_the_whole_instance_when_the_box_cuts_it(masks_type):
    inst = _cut_object(masks_type)
    logits = torch.full((1, 4, 4), 3.0)  # the whole RoI predicted
    # predicted 16 px, instance 32 px, intersection 16 px: IoU 0.5 (inside the RoI it would be 1)
    assert torch.allclose(mask_iou_targets(logits, [inst]), torch.tensor([0.5]))
    logits[0, :, 2:] = -3.0  # left half of the RoI only: 8 / (8 + 32 - 8)
    assert torch.allclose(mask_iou_targets(logits, [inst]), torch.tensor([0.25]))


def test_target_binarises_the_logits_at_the_threshold():
    inst = _cut_object("bitmask")
    logits = torch.full((1, 4, 4), 0.4)
    logits[0, :, :2] = 0.6  # probability 0.65 vs 0.60: only the left half is > 0.5 as a logit
    assert torch.allclose(mask_iou_targets(logits, [inst], 0.5), torch.tensor([8.0 / 32.0]))
    assert torch.allclose(mask_iou_targets(logits, [inst], 0.0), torch.tensor([16.0 / 32.0]))


def test_target_of_an_exact_mask_inside_the_roi_is_one():
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :, :2] = True
    inst = Instances((4, 4), proposal_boxes=Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0]])),
                     gt_masks=BitMasks(gt))
    logits = torch.where(gt, 2.0, -2.0).float()
    assert torch.allclose(mask_iou_targets(logits, [inst]), torch.tensor([1.0]))
    logits = torch.full((1, 4, 4), -2.0)
    logits[0, :2, :] = 2.0  # top half: intersection 4, union 12
    assert torch.allclose(mask_iou_targets(logits, [inst]), torch.tensor([4.0 / 12.0]))


def test_coco_head_has_the_authors_layers():
    """4 convs 3x3 (257->256, 256->256 x3), non-local(256), 7x7 convs 256->128->64,
    non-local(64), linear 64*7*7 -> 80: FCCMaskIoUHead with num_convs=4, num_fcs=2,
    nl_stages=(True, True), NonLocal2d kernel 7."""
    head = MaskIoUHead(256, 14, 80)
    convs = (257 * 256 * 9 + 256) + 3 * (256 * 256 * 9 + 256)
    nl256 = 3 * (256 * 128 * 49 + 128) + (128 * 256 * 49 + 256)
    light = (256 * 128 * 49 + 128) + (128 * 64 * 49 + 64)
    nl64 = 3 * (64 * 32 * 49 + 32) + (32 * 64 * 49 + 64)
    linear = 64 * 7 * 7 * 80 + 80
    assert sum(p.numel() for p in head.parameters()) == convs + nl256 + light + nl64 + linear
    out = head(torch.rand(2, 256, 14, 14), torch.randn(2, 28, 28))
    assert out.shape == (2, 80)


def test_forward_matches_its_layers_in_order():
    torch.manual_seed(0)
    head = MaskIoUHead(4, 6, 3, num_conv=2, conv_dim=8, num_light_conv=2, use_nonlocal=False,
                       light_kernel_size=3)
    feats, logits = torch.rand(2, 4, 6, 6), torch.randn(2, 12, 12)
    with torch.no_grad():
        x = torch.cat([feats, F.max_pool2d(logits.sigmoid()[:, None], 2)], dim=1)
        for layer in head.layers:
            x = F.relu(layer(x))
        assert x.shape == (2, 2, 3, 3)  # stride 2 on the last 3x3 conv, widths 8 -> 4 -> 2
        expected = head.maskiou(x.flatten(1))
        assert torch.allclose(head(feats, logits), expected)


def _l_cfg(**r3):
    cfg = make_cfg(MASKIOU_ON=True, **r3)
    cfg.MODEL.ROI_BOX_HEAD.NAME = "R3CNNLightConvHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 0
    return cfg


def _set_maskiou_output(heads, per_class):
    """The MaskIoU head outputs the constant ``per_class[c]`` for class c."""
    with torch.no_grad():
        heads.maskiou_head.maskiou.weight.zero_()
        heads.maskiou_head.maskiou.bias.copy_(torch.tensor(per_class))


def test_no_loss_without_positive_targets():
    """Untrained mask logits ~0 are all under the 0.5 logit threshold: every target is 0 and, as
    the authors' loss keeps only targets > 0, the MaskIoU loss is 0."""
    heads = build(_l_cfg())
    with torch.no_grad():
        heads.mask_head.predictor.bias.fill_(-1.0)
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(near_gt=3), make_targets())
    assert losses["loss_maskiou"] == 0


@pytest.mark.parametrize("weight", [None, 0.25])
def test_maskiou_loss_hand_computed_last_loop_only(weight):
    """Boxes inside the one gt box whose mask fills it, the mask predicted on the whole RoI
    (logit 5): each target is the box's IoU r (the RoI holds r of the instance). The loss is
    0.5 x mean (0.9 - r)^2 over the last loop's positives (r >= 0.7, and the gt box), the
    ground-truth class's output (0.9; the others 0.1, 0.2) and no loop weight. A
    MASKIOU_LOSS_WEIGHT set in the config replaces the 0.5 (None: the default)."""
    extra = {} if weight is None else {"MASKIOU_LOSS_WEIGHT": weight}
    cfg = _l_cfg(IOU_THRESHOLDS=[0.5, 0.6, 0.7], LOOP_LOSS_WEIGHTS=[1.0, 0.75, 0.3], **extra)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    heads = build(cfg)
    zero_regression(heads)
    _set_maskiou_output(heads, [0.1, 0.2, 0.9])
    with torch.no_grad():
        heads.mask_head.predictor.weight.zero_()
        heads.mask_head.predictor.bias.fill_(5.0)
    ious = [0.55, 0.65, 0.75, 0.85]
    prop, target = _one_image([[10.0, 10.0, 50.0, 10.0 + 40.0 * r] for r in ious], gt_class=2)
    with EventStorage():
        _, losses = heads(None, {"p2": make_features()["p2"][:1]}, [prop], [target])
    assert [k for k in losses if "maskiou" in k] == ["loss_maskiou"]
    r = torch.tensor([0.75, 0.85, 1.0])
    expected = (0.5 if weight is None else weight) * ((0.9 - r) ** 2).mean()
    assert torch.allclose(losses["loss_maskiou"], expected, atol=1e-4)


def test_maskiou_gradient_reaches_the_mask_head():
    """As the authors' code, the mask logits enter the MaskIoU head undetached."""
    heads = build(_l_cfg())
    with torch.no_grad():  # predicted masks not empty: positive targets
        heads.mask_head.predictor.bias.fill_(1.0)
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(near_gt=3), make_targets())
    assert losses["loss_maskiou"] > 0
    losses["loss_maskiou"].backward()
    assert heads.maskiou_head.maskiou.weight.grad.abs().sum() > 0
    assert heads.mask_head.predictor.weight.grad.abs().sum() > 0


def test_inference_reads_the_maskiou_of_the_predicted_class():
    heads = build(_l_cfg())
    per_class = [0.3, 0.6, 0.9]
    _set_maskiou_output(heads, per_class)
    heads.eval()
    with torch.no_grad():
        out, _ = heads(None, make_features(), make_proposals())
    classes = set()
    for inst in out:
        assert len(inst) > 0
        expected = torch.tensor(per_class)[inst.pred_classes]
        assert torch.allclose(inst.pred_maskiou, expected)
        assert torch.allclose(inst.mask_scores, inst.scores * expected)
        classes |= set(inst.pred_classes.tolist())
    assert len(classes) > 1  # several classes read


def test_r3cnn_L_trains_on_images_without_objects():
    heads = build(_l_cfg())
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(), make_targets(with_empty=True))
    assert torch.isfinite(sum(losses.values()))
    sum(losses.values()).backward()


def test_evaluator_ranks_masks_by_mask_scores():
    from r3cnn.evaluation import with_mask_scores
    inst = Instances((4, 4), scores=torch.tensor([0.9, 0.5]),
                     mask_scores=torch.tensor([0.2, 0.4]))
    swapped = with_mask_scores(inst)
    assert torch.equal(swapped.scores, torch.tensor([0.2, 0.4]))
    assert torch.equal(inst.scores, torch.tensor([0.9, 0.5]))  # the model's output is untouched
    plain = Instances((4, 4), scores=torch.tensor([0.9]))
    assert with_mask_scores(plain) is plain


def test_logit_threshold_reaches_the_target():
    """MASKIOU_LOGIT_THRESH binarises the predicted mask of the target: with every mask logit at 5,
    a threshold of 5.5 leaves no predicted cell, so every target is 0 and so is the loss, where
    the default 0.5 gives positive targets."""
    losses = []
    for thresh in (0.5, 5.5):
        heads = build(_l_cfg(MASKIOU_LOGIT_THRESH=thresh))
        with torch.no_grad():
            heads.mask_head.predictor.weight.zero_()
            heads.mask_head.predictor.bias.fill_(5.0)
        with EventStorage():
            losses.append(heads(None, make_features(), make_proposals(near_gt=3),
                                make_targets())[1]["loss_maskiou"])
    assert losses[0] > 0 and losses[1] == 0


def test_inference_reads_the_maskiou_of_the_predicted_class_with_two_classes():
    """Two classes, class-specific masks: each detection reads its own class's output."""
    cfg = _l_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    heads = build(cfg)
    _set_maskiou_output(heads, [0.3, 0.8])
    heads.eval()
    with torch.no_grad():
        out, _ = heads(None, make_features(), make_proposals())
    classes = torch.cat([i.pred_classes for i in out])
    assert set(classes.tolist()) == {0, 1}
    expected = torch.tensor([0.3, 0.8])[classes]
    assert torch.allclose(torch.cat([i.pred_maskiou for i in out]), expected)


def _shaped(kind, masks_type):
    """An 8x8 image holding an L (left two columns plus bottom two rows: 16 + 12 = 28 px) or a
    ring (the image less its middle 4x4: 48 px); the RoI is the whole image (M = 8)."""
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    if kind == "L":
        gt[0, :, :2] = True
        gt[0, 6:, :] = True
        polygons = [[0.0, 0.0, 2.0, 0.0, 2.0, 6.0, 8.0, 6.0, 8.0, 8.0, 0.0, 8.0]]
    else:
        gt[0] = True
        gt[0, 2:6, 2:6] = False
        polygons = [[0.0, 0.0, 8.0, 0.0, 8.0, 2.0, 0.0, 2.0],
                    [0.0, 6.0, 8.0, 6.0, 8.0, 8.0, 0.0, 8.0],
                    [0.0, 2.0, 2.0, 2.0, 2.0, 6.0, 0.0, 6.0],
                    [6.0, 2.0, 8.0, 2.0, 8.0, 6.0, 6.0, 6.0]]
    masks = BitMasks(gt) if masks_type == "bitmask" else PolygonMasks([polygons])
    return gt[0], Instances((8, 8), proposal_boxes=Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]])),
                            gt_masks=masks)


@pytest.mark.parametrize("masks_type", ["bitmask", "polygon"])
@pytest.mark.parametrize("kind,area", [("L", 28), ("ring", 48)])
def test_target_of_masks_that_are_not_their_box(masks_type, kind, area):
    """The whole RoI predicted: IoU area / 64 (a target taken from the box would be 1); the mask
    itself predicted: 1; the targets given (as the mask loss's cropped ones) or cropped here
    agree."""
    gt, inst = _shaped(kind, masks_type)
    full = torch.full((1, 8, 8), 3.0)
    assert torch.allclose(mask_iou_targets(full, [inst]), torch.tensor([area / 64.0]))
    exact = torch.where(gt, 3.0, -3.0)[None]
    assert torch.allclose(mask_iou_targets(exact, [inst]), torch.tensor([1.0]))
    cropped = inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, 8)
    assert torch.equal(cropped, gt[None])
    assert torch.allclose(mask_iou_targets(full, [inst], gt_masks=cropped),
                          torch.tensor([area / 64.0]))
