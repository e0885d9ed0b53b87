from detectron2.config import CfgNode as CN


def add_sampler_config(cfg: CN) -> None:
    """Config of the RoI sampler registry (``MODEL.ROI_HEADS.SAMPLER``), its samplers' parameters,
    and the losses of dense heads (GHM-C, GHM-R: ``MODEL.RETINANET.CLS_LOSS``, ``BBOX_LOSS``)."""
    # Name of the RoI sampler in ROI_SAMPLER_REGISTRY: "random" (Detectron2's 1:3 sampling),
    # "ohem", "iou_balanced" or "pisa", or a registered class name.
    cfg.MODEL.ROI_HEADS.SAMPLER = "random"

    # Online hard example mining (Shrivastava et al.): the head's losses on every candidate,
    # computed without gradient, choose the BATCH_SIZE_PER_IMAGE RoIs trained on.
    cfg.MODEL.ROI_HEADS.OHEM = CN()
    # "paper": the OHEM paper's (Sec. 4.1): the top RoIs by classification + box loss after an NMS
    # by loss, positive or negative alike (no foreground fraction). "mmdetection": mmdetection's
    # OHEMSampler: the top POSITIVE_FRACTION * BATCH_SIZE_PER_IMAGE positives by classification
    # loss, the rest negatives by classification loss, no NMS.
    cfg.MODEL.ROI_HEADS.OHEM.VARIANT = "paper"
    # IoU threshold of the "paper" variant's NMS among candidates by loss before the top-B
    # selection (OHEM paper: 0.7); 0 or less disables it.
    cfg.MODEL.ROI_HEADS.OHEM.NMS_THRESH = 0.7

    # IoU-balanced sampling (Pang et al., Libra R-CNN): negatives drawn evenly from IoU bins.
    cfg.MODEL.ROI_HEADS.IOU_BALANCED = CN()
    # K, the number of equal IoU bins over [0, ROI_HEADS.IOU_THRESHOLDS[0]) for negatives.
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.NUM_BINS = 3
    # Draw positives evenly from their ground-truth boxes (instance-balanced) instead of uniformly.
    cfg.MODEL.ROI_HEADS.IOU_BALANCED.INSTANCE_BALANCED_POS = True

    # Prime-sample attention (Cao et al.; Oksuz et al., Eqs. 5-6), defaults from mmdetection's
    # configs/pisa/faster-rcnn_r50_fpn_pisa_1x_coco.py. A weight from a hierarchical local rank r
    # (HLR) is w = ((1 - beta) * r_bar + beta) ** gamma with r_bar = (N_max - r) / N_max.
    cfg.MODEL.ROI_HEADS.PISA = CN()
    # gamma (mmdetection: isr.k) of ISR-P, the positives' classification weights by IoU-HLR.
    cfg.MODEL.ROI_HEADS.PISA.POS_GAMMA = 2.0
    # beta (mmdetection: isr.bias) of ISR-P.
    cfg.MODEL.ROI_HEADS.PISA.POS_BETA = 0.0
    # gamma (mmdetection: ScoreHLRSampler k) of ISR-N, the negatives' weights by score-HLR.
    cfg.MODEL.ROI_HEADS.PISA.NEG_GAMMA = 0.5
    # beta (mmdetection: ScoreHLRSampler bias) of ISR-N.
    cfg.MODEL.ROI_HEADS.PISA.NEG_BETA = 0.0
    # Negatives whose highest foreground score is at most this are not ranked, only drawn at
    # random if too few are (ScoreHLRSampler score_thr).
    cfg.MODEL.ROI_HEADS.PISA.NEG_SCORE_THRESH = 0.05
    # IoU threshold of the NMS that groups the ranked negatives' regressed boxes
    # (ScoreHLRSampler iou_thr, mmcv nms_match).
    cfg.MODEL.ROI_HEADS.PISA.NEG_NMS_THRESH = 0.5
    # Add CARL, the classification-aware regression loss (PISA Sec. 3.3), as "loss_carl".
    cfg.MODEL.ROI_HEADS.PISA.CARL = True
    # k of CARL's weight c_i = ((1 - b) * p_i + b) ** k of the positives' class score p_i.
    cfg.MODEL.ROI_HEADS.PISA.CARL_K = 1.0
    # b of CARL's weight.
    cfg.MODEL.ROI_HEADS.PISA.CARL_BIAS = 0.2

    # Classification loss of ImbalanceRetinaNet: "focal" (Detectron2's) or "ghmc" (Li et al.).
    cfg.MODEL.RETINANET.CLS_LOSS = "focal"
    # GHM-C (gradient harmonizing mechanism, classification); imbalance.losses.ghm.
    cfg.MODEL.RETINANET.GHMC = CN()
    # M, the number of unit regions of the gradient norm g = |p - p*| over [0, 1] (paper: 30).
    cfg.MODEL.RETINANET.GHMC.BINS = 30
    # alpha, momentum of the moving average of the bin counts (paper: 0.75; 0 = this batch only).
    cfg.MODEL.RETINANET.GHMC.MOMENTUM = 0.75
    # Count the gradient density per FPN level, one moving average updated level after level,
    # and sum the levels' losses (the authors' code: a loss call per level); False counts it over
    # all anchors of the batch at once (the paper's formula).
    cfg.MODEL.RETINANET.GHMC.PER_LEVEL = True
    # Box loss of ImbalanceRetinaNet: "retinanet" (Detectron2's, MODEL.RETINANET.BBOX_REG_LOSS_TYPE)
    # or "ghmr" (GHM-R, Li et al.).
    cfg.MODEL.RETINANET.BBOX_LOSS = "retinanet"
    # GHM-R (gradient harmonizing mechanism, regression), defaults from the authors' RetinaNet.
    cfg.MODEL.RETINANET.GHMR = CN()
    # mu of the authentic smooth L1 loss sqrt(d^2 + mu^2) - mu (paper Eq. 12: 0.02).
    cfg.MODEL.RETINANET.GHMR.MU = 0.02
    # M, the number of unit regions of the gradient norm |d| / sqrt(d^2 + mu^2) (authors: 10).
    cfg.MODEL.RETINANET.GHMR.BINS = 10
    # alpha, momentum of the moving average of the bin counts (authors: 0.7).
    cfg.MODEL.RETINANET.GHMR.MOMENTUM = 0.7
    # Factor of the GHM-R loss (authors: 10).
    cfg.MODEL.RETINANET.GHMR.LOSS_WEIGHT = 10.0
    # As GHMC.PER_LEVEL, for GHM-R.
    cfg.MODEL.RETINANET.GHMR.PER_LEVEL = True
