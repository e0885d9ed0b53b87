from detectron2.config import CfgNode as CN

from d2infra import add_d2infra_config

from .samplers.config import add_sampler_config


def add_imbalance_config(cfg: CN) -> None:
    """Config keys of the imbalance toolkit (the samplers, GHM-C) and of the infrastructure they run
    on (:func:`d2infra.add_d2infra_config`). Safe to call more than once, in any order with the
    projects' own add functions: an existing toolkit config is left as it is."""
    add_d2infra_config(cfg)
    if "IMBALANCE_DIAGNOSTICS_PERIOD" not in cfg.MODEL:
        # Compute the imbalance diagnostics (IoU histograms, fg:bg) every N-th iteration, 1: all.
        cfg.MODEL.IMBALANCE_DIAGNOSTICS_PERIOD = 1
    if "SAMPLER" not in cfg.MODEL.ROI_HEADS:
        add_sampler_config(cfg)
