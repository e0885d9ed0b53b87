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
    # HTC's mask information flow: the mask features of loop t-1 enter the mask head of loop t
    # through a 1x1 conv (needs a MaskRCNNConvUpsampleHead-like mask head). Ignored (no conv
    # is built) when NUM_LOOPS_TRAIN is 1.
    cfg.MODEL.R3CNN.MASK_INFO_FLOW = True

    # R^3-CNN-L box head ("R3CNNLightConvHead"): kernel of its convs (the paper's 7x7 convs).
    # Number and width of the convs are MODEL.ROI_BOX_HEAD.NUM_CONV / CONV_DIM, then
    # NUM_FC fc layers of FC_DIM after global average pooling.
    cfg.MODEL.R3CNN.LIGHT_HEAD_KERNEL_SIZE = 7
    # Non-local block (Wang et al.) of the R^3-CNN-L heads: kernel of its theta/phi/g convs
    # ("a Non-Local block with incremented kernel size of 7x7") and channel reduction of the
    # embedding (inner channels = in_channels // reduction).
    cfg.MODEL.R3CNN.NONLOCAL_KERNEL_SIZE = 7
    cfg.MODEL.R3CNN.NONLOCAL_REDUCTION = 2

    # MaskIoU branch of Mask Scoring R-CNN (R^3-CNN-L): predicts the IoU of each predicted mask
    # with its ground truth; at inference the mask score is class score x predicted mask IoU.
    cfg.MODEL.R3CNN.MASKIOU_ON = False
    # Convs (3x3; the last one has stride 2) and their width, then a non-local block.
    cfg.MODEL.R3CNN.MASKIOU_NUM_CONV = 4
    cfg.MODEL.R3CNN.MASKIOU_CONV_DIM = 256
    # FC layers after the convs. 0 (R^3-CNN-L's convolutions-only branch): global average pooling
    # and one linear layer; Mask Scoring R-CNN's own head has 2 FCs of 1024.
    cfg.MODEL.R3CNN.MASKIOU_NUM_FC = 0
    cfg.MODEL.R3CNN.MASKIOU_FC_DIM = 1024
    # Add a non-local block after the MaskIoU convs (the paper's branch "using only convolutions
    # and Non-Local blocks").
    cfg.MODEL.R3CNN.MASKIOU_NONLOCAL = True
    # Weight of the L2 MaskIoU loss (per loop it is further multiplied by LOOP_LOSS_WEIGHTS).
    cfg.MODEL.R3CNN.MASKIOU_LOSS_WEIGHT = 1.0
