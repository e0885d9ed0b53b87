"""Config keys of the Offset Bin Classification Network (Qiu et al., "Offset Bin Classification
Network for Accurate Object Detection", section 3.2)."""
from detectron2.config import CfgNode as CN

from imbalance import add_imbalance_config


def add_offset_bin_config(cfg: CN) -> None:
    """Add ``MODEL.OFFSET_BIN``: the offset bins (Eq. 5), their loss (Eqs. 7, 9), the decoding
    (Eq. 10) and the hierarchical focusing (Eq. 11) of :class:`offset_bin.OffsetBinOutputLayers`.

    Values are checked when the predictor is built (:class:`offset_bin.OffsetBinCoder`), so an
    impossible value fails at model construction with a message naming the key.

    Adds the shared keys its ROI heads read (the samplers', ``MODEL.ROI_BOX_HEAD.PREDICTOR``, the
    small backbone's: :func:`imbalance.add_imbalance_config`), so this function alone configures
    the project; safe to call more than once (an existing ``MODEL.OFFSET_BIN`` is kept).
    """
    add_imbalance_config(cfg)
    if "OFFSET_BIN" in cfg.MODEL:
        return
    cfg.MODEL.OFFSET_BIN = CN()
    # Offset range `a` (a_1 of section 3.2.4) of the first focusing stage, in Box2BoxTransform units
    # (weights (10, 10, 5, 5) make them the paper's normalised offsets of Eq. 1): the inner bins
    # split (-a, a); the 2 outer bins take (-inf, -a] and [a, inf). Paper: a = 3. Must be > 0.
    cfg.MODEL.OFFSET_BIN.RANGE = 3.0
    # Number of bins `n` = m + 2 per coordinate and per focusing stage, counting the 2 outer bins
    # (section 3.2.1; n_k = n for every stage k, section 4.1). Paper: n = 20. Must be >= 3.
    cfg.MODEL.OFFSET_BIN.NUM_BINS = 20
    # Number of hierarchical focusing stages `K` (section 3.2.4, Eq. 11): stage k classifies the
    # residual offset inside the bin of stage k-1 over (-a_k, a_k), a_k = w_{k-1} / 2.
    # 1 disables the focusing (Table 1 rows without "Hierarchical"). Paper: K = 2. Must be >= 1.
    cfg.MODEL.OFFSET_BIN.NUM_STAGES = 2
    # Decoding of each stage's offset: True is the expectation of the bin representatives under the
    # softmax (Eq. 10, "Expectation" in Table 1); False is the representative of the argmax bin.
    cfg.MODEL.OFFSET_BIN.EXPECTATION = True
    # Weight `lambda_bin` of the bin loss L_bin in L = L_cls + lambda_bin * L_bin (Eq. 9); applied
    # to every focusing stage's loss. Paper: 1. Must be >= 0.
    cfg.MODEL.OFFSET_BIN.LOSS_WEIGHT = 1.0
    # One set of bin scores for all classes (True) or one per class (False). None (or "") inherits
    # MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG, like the regression it replaces. Detectron2's
    # CascadeROIHeads requires class-agnostic boxes.
    cfg.MODEL.OFFSET_BIN.CLS_AGNOSTIC = None
