from detectron2.config import CfgNode as CN

from imbalance import add_imbalance_config


def add_r3cnn_config(cfg: CN) -> None:
    """Add ``MODEL.R3CNN``: the loops of R^3-CNN (Sec. 3 of the paper) and its R^3-CNN-L parts.

    Use with ``MODEL.ROI_HEADS.NAME: "R3CNNROIHeads"``. The heads also read the shared keys of
    ``imbalance.add_imbalance_config`` (``MODEL.ROI_HEADS.SAMPLER``, ``MODEL.ROI_BOX_HEAD.PREDICTOR``)
    and require ``MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG: True`` (one regressor for all loops).
    Adds those shared keys too, so this function alone configures R^3-CNN; safe to call more than
    once, in any order with the other projects' add functions (an existing ``MODEL.R3CNN`` is kept).
    """
    add_imbalance_config(cfg)
    if "R3CNN" in cfg.MODEL:
        return
    cfg.MODEL.R3CNN = CN()
    # Number of loops L_t of the single box head during training (Table 3 of the paper).
    cfg.MODEL.R3CNN.NUM_LOOPS_TRAIN = 3
    # Number of loops L_e at inference (Table 2). 0 (or any value < 1) means "the same as
    # NUM_LOOPS_TRAIN"; a positive value may differ from the training loops.
    cfg.MODEL.R3CNN.NUM_LOOPS_TEST = 0
    # IoU threshold u^t of each loop, Eq. (2): a proposal of loop t is positive iff IoU >= u^t.
    # One per training loop, each in (0, 1); increasing or decreasing (Table 1, rows 4 and 5).
    cfg.MODEL.R3CNN.IOU_THRESHOLDS = [0.5, 0.6, 0.7]
    # Weight of each loop's losses (classification, box, mask), as in the authors' configs.
    cfg.MODEL.R3CNN.LOOP_LOSS_WEIGHTS = [1.0, 0.75, 0.5]
    # The mask branch, as the authors' code trains it (mmdetection branch r3_cnn,
    # mmdet/models/roi_heads/r3_cnn_roi_head.py): in loop t, the loop's regressed boxes (plus the
    # ground truth) are re-labelled at u^t and re-sampled; the mask head makes one plain pass on
    # the positives, at most BATCH_SIZE_PER_IMAGE x POSITIVE_FRACTION per image. True adds HTC's
    # mask information flow, ours (their HTC flow never runs in training, it gets stage index 0):
    # loop t runs the mask head t+1 times, each pass receiving the previous pass's mask features
    # through a trained 1x1 conv, and inference averages the probabilities of NUM_LOOPS_TEST
    # chained passes (as theirs does). Costs t+1 mask passes in loop t (6 over 3 loops) and 3 at
    # inference. Ignored (no conv is built) when NUM_LOOPS_TRAIN is 1.
    cfg.MODEL.R3CNN.MASK_INFO_FLOW = False
    # True: the authors' mask branch as their configs run it (mask_info_flow=True, but training at
    # HTC stage index 0): the 1x1 flow conv is built and fed zeros in training (ReLU(bias) = 0:
    # it never learns, weight decay aside), and inference chains NUM_LOOPS_TEST mask passes
    # through it and averages their sigmoid probabilities. False (ours): one trained pass at
    # inference (the extra passes add a random layer's output; projects/r3cnn/README.md). Excludes
    # MASK_INFO_FLOW.
    cfg.MODEL.R3CNN.MASK_UNTRAINED_FLOW = False
    # How the loops' classifications merge at inference (Sec. 3, last paragraph: "the mean of the
    # classification values"): "logits" = softmax of the mean of the loops' class logits (the
    # authors' code: mean_cls of the cls_score, then get_bboxes' softmax); "probs" = mean of the
    # loops' softmax probabilities.
    cfg.MODEL.R3CNN.SCORE_AVERAGING = "logits"

    # R^3-CNN-L box head ("R3CNNLightConvHead"): kernel of its convs (the paper's 7x7 convs).
    # Their number is MODEL.ROI_BOX_HEAD.NUM_CONV (2; each halves the channels); NUM_FC must be 0.
    cfg.MODEL.R3CNN.LIGHT_HEAD_KERNEL_SIZE = 7
    # Non-local block (Wang et al.) of the R^3-CNN-L heads: kernel of its theta/phi/g/output convs
    # ("a Non-Local block with incremented kernel size of 7x7") and channel reduction of the
    # embedding (C' = in_channels // reduction).
    cfg.MODEL.R3CNN.NONLOCAL_KERNEL_SIZE = 7
    cfg.MODEL.R3CNN.NONLOCAL_REDUCTION = 2

    # MaskIoU branch of Mask Scoring R-CNN (R^3-CNN-L): predicts the IoU of each predicted mask
    # with its whole ground-truth instance; at inference the mask score is class score x
    # predicted mask IoU (of the predicted class). Trained in the last loop only.
    cfg.MODEL.R3CNN.MASKIOU_ON = False
    # 3x3 convs (the last one has stride 2) and their width.
    cfg.MODEL.R3CNN.MASKIOU_NUM_CONV = 4
    cfg.MODEL.R3CNN.MASKIOU_CONV_DIM = 256
    # Then 7x7 convs (LIGHT_HEAD_KERNEL_SIZE), each halving the channels (256 -> 128 -> 64), before
    # the flatten and the one linear layer (the authors' num_fcs=2 "fcs" are these convs).
    cfg.MODEL.R3CNN.MASKIOU_NUM_LIGHT_CONV = 2
    # A non-local block after the 3x3 convs and one after the 7x7 convs (the paper's branch "using
    # only convolutions and Non-Local blocks"; their nl_stages=(True, True)).
    cfg.MODEL.R3CNN.MASKIOU_NONLOCAL = True
    # Weight of the MaskIoU L2 loss, on the positives whose target IoU is > 0 (their MSELoss
    # loss_weight 0.5); not multiplied by LOOP_LOSS_WEIGHTS, as theirs.
    cfg.MODEL.R3CNN.MASKIOU_LOSS_WEIGHT = 0.5
    # A mask cell counts as predicted foreground for the MaskIoU target iff its logit exceeds this.
    # 0.5 as the authors' code (it compares the logits with mask_thr_binary 0.5, i.e. probability
    # > 0.62); 0.0 is probability > 0.5 (Mask Scoring R-CNN's paper).
    cfg.MODEL.R3CNN.MASKIOU_LOGIT_THRESH = 0.5
