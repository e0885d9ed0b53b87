"""Config keys of IoU-aware single-stage detectors (Wu et al., "IoU-aware single-stage object detector
for accurate localization", section 3.1)."""
from detectron2.config import CfgNode as CN

from d2infra import add_d2infra_config


def add_iou_aware_config(cfg: CN) -> None:
    """Add ``MODEL.IOU_AWARE`` (the IoU branch, its loss and the detection confidence) and
    ``MODEL.FCOS`` (an FCOS meta-architecture buildable from yaml, which Detectron2 0.6 lacks).

    Adds the shared keys of :func:`d2infra.add_d2infra_config` (the small backbone, datasets from
    files) too, so this function alone configures the project; safe to call more than once (an
    existing ``MODEL.IOU_AWARE`` is kept).
    """
    add_d2infra_config(cfg)
    if "IOU_AWARE" in cfg.MODEL:
        return
    cfg.MODEL.IOU_AWARE = CN()
    # Exponent `alpha` of Eq. 5, S_det = p^alpha * IoU^(1 - alpha): the weight of the classification
    # score p against the predicted IoU in the detection confidence used for top-k, the score
    # threshold, NMS and the output score. In [0, 1]; 1.0 ranks by p alone (plain RetinaNet
    # inference). A negative value selects the plain product p * IoU (Table 3, row "none"). None:
    # the detector's default, 0.5 for IoUAwareRetinaNet (the paper's, Table 3) and 0.3 for
    # IoUAwareFCOS (the authors' iou_aware_fcos_head.py).
    cfg.MODEL.IOU_AWARE.ALPHA = None
    # Loss `CE(IoU_i, \hat{IoU}_i)` of Eq. 3 on the predicted IoU: "bce" (binary cross-entropy, the
    # paper's choice) or "l2" (squared error on the sigmoid output), Table 2.
    cfg.MODEL.IOU_AWARE.LOSS_TYPE = "bce"
    # Weight of L_IoU in the total loss of Eq. 4 (the paper uses 1, an unweighted sum).
    cfg.MODEL.IOU_AWARE.LOSS_WEIGHT = 1.0
    # Whether the target \hat{IoU}_i (IoU of the decoded predicted box with its ground truth) carries
    # gradient into the regression branch. True is the authors' code (confirmed intended by the
    # author); False detaches the target (PAA-style).
    cfg.MODEL.IOU_AWARE.TARGET_GRADIENT = True
    # IoUAwareFCOS only: how the predicted IoU meets FCOS's centerness. "train_only" (the authors'
    # code): centerness is trained, the confidence of Eq. 5 uses the IoU alone; "replace": no
    # centerness branch nor loss, the IoU takes its place; "multiply": both are predicted and the
    # localization quality in Eq. 5 is centerness * IoU.
    cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS = "train_only"
    # IoUAwareFCOS only: the tower whose last feature the centerness conv reads: "box" (Detectron2's
    # FCOS, our baseline) or "cls" (the authors' head, built on an earlier FCOS).
    cfg.MODEL.IOU_AWARE.FCOS_CENTERNESS_TOWER = "box"

    # FCOS (Tian et al.) from yaml: the arguments of Detectron2's LazyConfig-only `FCOS` class.
    cfg.MODEL.FCOS = CN()
    # Number of foreground classes.
    cfg.MODEL.FCOS.NUM_CLASSES = 80
    # Backbone features the head runs on, high to low resolution.
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Convs in each of the classification and box towers.
    cfg.MODEL.FCOS.NUM_CONVS = 4
    # Normalisation of the tower convs ("GN" in FCOS; "" for none).
    cfg.MODEL.FCOS.NORM = "GN"
    # Prior probability of the classification bias initialisation (RetinaNet's pi).
    cfg.MODEL.FCOS.PRIOR_PROB = 0.01
    # Center-sampling radius, in units of the level's stride.
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    # Focal loss alpha and gamma of the classification loss.
    cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    # Inference: confidence threshold, candidates kept per level before NMS, NMS IoU threshold.
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
    cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.FCOS.NMS_THRESH_TEST = 0.6
