from detectron2.config import CfgNode as CN


def add_sampler_config(cfg: CN) -> None:
    """Config of the RoI sampler registry (``MODEL.ROI_HEADS.SAMPLER``), its samplers' parameters,
    and the soft sampling of dense heads (GHM-C, ``MODEL.RETINANET.CLS_LOSS``)."""
    # Name of the RoI sampler in ROI_SAMPLER_REGISTRY: "random" (Detectron2's 1:3 sampling),
    # "ohem", "iou_balanced" or "pisa", or a registered class name.
    cfg.MODEL.ROI_HEADS.SAMPLER = "random"

    # Online hard example mining (Shrivastava et al.): keep the BATCH_SIZE_PER_IMAGE candidates of
    # highest loss (classification + box regression), computed without gradient.
    cfg.MODEL.ROI_HEADS.OHEM = CN()
    # IoU threshold of the NMS among candidates by loss before the top-B selection (OHEM paper:
    # 0.7); 0 or less disables it.
    cfg.MODEL.ROI_HEADS.OHEM.NMS_THRESH = 0.7

    # IoU-balanced sampling (Pang et al., Libra R-CNN): negatives drawn evenly from IoU bins.
    cfg.MODEL.ROI_HEADS.IOU_BALANCED = CN()
    # K, the number of equal IoU bins over [0, ROI_HEADS.IOU_THRESHOLDS[0]) for negatives.
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.NUM_BINS = 3
    # Draw positives evenly from their ground-truth boxes (instance-balanced) instead of uniformly.
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.INSTANCE_BALANCED_POS = True

    # Prime-sample attention (Cao et al.; Oksuz et al., Eqs. 5-6): all candidates kept, weighted
    # by w = ((1 - beta) * r_bar + beta) ** gamma of their IoU-hierarchical local rank.
    cfg.MODEL.ROI_HEADS.PISA = CN()
    # gamma of Eq. 6 for positives (ranked by IoU).
    cfg.MODEL.ROI_HEADS.PISA.POS_GAMMA = 2.0
    # beta of Eq. 6 for positives: the minimum weight before the power.
    cfg.MODEL.ROI_HEADS.PISA.POS_BETA = 0.0
    # gamma of Eq. 6 for negatives (ranked by their highest foreground score).
    cfg.MODEL.ROI_HEADS.PISA.NEG_GAMMA = 2.0
    # beta of Eq. 6 for negatives.
    cfg.MODEL.ROI_HEADS.PISA.NEG_BETA = 0.0

    # Classification loss of ImbalanceRetinaNet: "focal" (Detectron2's) or "ghmc" (Li et al.).
    cfg.MODEL.RETINANET.CLS_LOSS = "focal"
    # GHM-C (gradient harmonizing mechanism, classification).
    cfg.MODEL.RETINANET.GHMC = CN()
    # M, the number of unit regions of the gradient norm g = |p - p*| over [0, 1] (paper: 30).
    cfg.MODEL.RETINANET.GHMC.BINS = 30
    # alpha, momentum of the moving average of the bin counts (paper: 0.75; 0 = this batch only).
    cfg.MODEL.RETINANET.GHMC.MOMENTUM = 0.75
