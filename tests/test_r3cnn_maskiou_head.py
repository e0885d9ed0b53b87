"""Tests of r3cnn.maskiou_head (Mask Scoring R-CNN's MaskIoU branch) and of its use in R^3-CNN-L."""
import torch
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from r3cnn import MaskIoUHead
from r3cnn.maskiou_head import mask_iou_targets

from test_r3cnn_roi_heads import build, make_cfg, make_features, make_proposals, make_targets


def test_mask_iou_targets_hand_computed():
    # gt mask = left half of a 4x4 image; the RoI is the whole image; M = 4
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :, :2] = True
    inst = Instances((4, 4), proposal_boxes=Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0]])),
                     gt_masks=BitMasks(gt))
    probs = torch.zeros(1, 4, 4)
    probs[0, :2, :] = 0.9  # top half predicted: intersection 4, union 12
    assert torch.allclose(mask_iou_targets(probs, [inst]), torch.tensor([4.0 / 12.0]))
    probs = torch.where(gt, 0.8, 0.1).float()  # exact: IoU 1
    assert torch.allclose(mask_iou_targets(probs, [inst]), torch.tensor([1.0]))


def test_head_shapes_and_parameters():
    head = MaskIoUHead(8, 14, 3, num_conv=2, conv_dim=4, num_fc=1, fc_dim=5, use_nonlocal=False)
    out = head(torch.rand(2, 8, 14, 14), torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 3)
    expected = (9 * 4 * 9 + 4) + (4 * 4 * 9 + 4) + (4 * 7 * 7 * 5 + 5) + (5 * 3 + 3)
    assert sum(p.numel() for p in head.parameters()) == expected


def test_convolutions_only_head_pools_globally():
    head = MaskIoUHead(8, 14, 3, num_conv=1, conv_dim=4, num_fc=0, use_nonlocal=True,
                       nonlocal_kernel_size=3)
    assert head(torch.rand(2, 8, 14, 14), torch.rand(2, 1, 28, 28)).shape == (2, 3)
    non_local = 3 * (4 * 2 * 9 + 2) + (2 * 4 + 4)
    expected = (9 * 4 * 9 + 4) + non_local + (4 * 3 + 3)
    assert sum(p.numel() for p in head.parameters()) == expected


def test_r3cnn_L_trains_and_rescales_mask_scores():
    cfg = make_cfg(MASKIOU_ON=True)
    cfg.MODEL.ROI_BOX_HEAD.NAME = "R3CNNLightConvHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    heads = build(cfg)
    with EventStorage():
        _, losses = heads(None, make_features(), make_proposals(), make_targets())
    assert {f"loss_maskiou_loop{t}" for t in range(3)} <= set(losses)
    sum(losses.values()).backward()
    assert heads.maskiou_head.maskiou.weight.grad is not None
    heads.eval()
    with torch.no_grad():
        out, _ = heads(None, make_features(), make_proposals())
    for inst in out:
        assert len(inst) > 0
        assert ((inst.pred_maskiou >= 0) & (inst.pred_maskiou <= 1)).all()
        assert torch.allclose(inst.mask_scores, inst.scores * inst.pred_maskiou)


def test_evaluator_ranks_masks_by_mask_scores():
    from r3cnn.evaluation import with_mask_scores
    inst = Instances((4, 4), scores=torch.tensor([0.9, 0.5]),
                     mask_scores=torch.tensor([0.2, 0.4]))
    swapped = with_mask_scores(inst)
    assert torch.equal(swapped.scores, torch.tensor([0.2, 0.4]))
    assert torch.equal(inst.scores, torch.tensor([0.9, 0.5]))  # the model's output is untouched
    plain = Instances((4, 4), scores=torch.tensor([0.9]))
    assert with_mask_scores(plain) is plain
