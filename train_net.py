#!/usr/bin/env python
"""Train and evaluate the detectors of this project, and Detectron2's baselines, with Detectron2.

    python train_net.py --config-file configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python train_net.py --config-file CONFIG --resume           # continue where training stopped
    python train_net.py --config-file CONFIG --num-gpus 8       # CUDA: NCCL; no CUDA: gloo on CPU

Every project's config is added, so any config of ``configs/`` runs from here.
"""
import logging
import os
import weakref
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
)
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluators, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from d2infra import add_d2infra_config, fast_coco_eval_available
from d2infra.checkpoint import D2InfraCheckpointer
from d2infra.config import merge_from_file, merge_from_list
from d2infra.data import check_dataset_names, ensure_generated, register_coco_format_datasets
from d2infra.data.checks import check_datasets
from d2infra.engine import (
    build_optimizer, create_ddp_model, device_fallback_warning, launch, plain_text_log_files,
    resolve_device)
from d2infra.modeling import parallelize_roi_align
from imbalance import add_imbalance_config
from imbalance.diagnostics import insert_imbalance_stats_hook
from iou_aware import add_iou_aware_config, build_localization_evaluator
from offset_bin import add_offset_bin_config
from r3cnn import add_r3cnn_config
from r3cnn.evaluation import build_r3cnn_evaluator

logger = logging.getLogger("detectron2")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation, and data-parallel training on the CPU too."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__, except for the DDP wrapper: Detectron2's passes CUDA device_ids,
        # which DistributedDataParallel rejects for a CPU model.
        if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
            # AMPTrainer asserts CUDA at its first step (v0.6 and main): say so before building
            raise ValueError(f"SOLVER.AMP.ENABLED True needs CUDA (Detectron2's AMPTrainer), but "
                             f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r}: set SOLVER.AMP.ENABLED False")
        TrainerBase.__init__(self)
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # Detectron2's checkpointer; a checkpoint it cannot read is an error naming the file.
        self.checkpointer = D2InfraCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def state_dict(self) -> Dict[str, Any]:
        """Detectron2 main's layout under either Detectron2: the iteration and the hooks' states
        (LR scheduler), plus ``_trainer``, the inner trainer's state (optimizer, AMP grad scaler).
        v0.6's ``DefaultTrainer`` leaves ``_trainer`` out, so its checkpoints resume with a fresh
        optimizer (momentum restarts from zero)."""
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Resume from a checkpoint of either layout (:func:`upgrade_trainer_state`). Detectron2
        main's own ``load_state_dict`` fails on a v0.6 checkpoint with ``KeyError: '_trainer'``."""
        state = upgrade_trainer_state(state_dict, self._trainer.state_dict())
        if state is not state_dict:
            logger.warning(
                "Resuming from a checkpoint without optimizer state (written by Detectron2 v0.6's "
                "DefaultTrainer, whose state_dict has no '_trainer'): iteration %d and the LR "
                "schedule are restored; the optimizer starts afresh (momentum from zero).",
                state["iteration"])
        TrainerBase.load_state_dict(self, state)
        try:
            self._trainer.load_state_dict(state["_trainer"])
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"the checkpoint's optimizer state does not fit this model's optimizer ({e}); "
                "was the config changed since it was written? To start a new training from its "
                "weights, drop --resume and set MODEL.WEIGHTS") from e

    def build_hooks(self):
        """Detectron2's hooks, plus the one that totals the imbalance diagnostics between writes."""
        return insert_imbalance_stats_hook(super().build_hooks())

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """Detectron2's model. On the CPU its RoIAlign runs on every intra-op thread, with
        torchvision's output and gradient bit for bit (:mod:`d2infra.modeling.roi_align`)."""
        model = super().build_model(cfg)
        if torch.device(cfg.MODEL.DEVICE).type == "cpu":
            n = parallelize_roi_align(model)
            if n and torch.get_num_threads() > 1:
                logger.info(f"RoIAlign on {torch.get_num_threads()} threads ({n} RoIAlign "
                            "modules; torchvision's output and gradient, bitwise)")
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Detectron2's optimizer; ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"`` clips the norm
        of all gradients together (:func:`d2infra.engine.build_optimizer`)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str = None):
        """COCO AP of boxes, and of masks when the model predicts them; and the localization
        quality of the boxes (AP at IoU 0.5..0.9, score-IoU correlation)."""
        ensure_generated(dataset_name)
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # COCOEvaluator for boxes (and masks; those ranked by R^3-CNN-L's MaskIoU mask scores when
        # its branch is on): Detectron2's fast C++ COCOeval where its compiled ops are installed,
        # pycocotools' otherwise (d2infra.fast_coco_eval_available).
        return DatasetEvaluators([
            build_r3cnn_evaluator(dataset_name, cfg.MODEL.MASK_ON, cfg.MODEL.R3CNN.MASKIOU_ON,
                                  output_folder, distributed=True,
                                  use_fast_impl=fast_coco_eval_available()),
            build_localization_evaluator(cfg, dataset_name, output_folder),
        ])


def upgrade_trainer_state(state: Dict[str, Any], fresh_inner: Dict[str, Any]) -> Dict[str, Any]:
    """A trainer state in Detectron2 main's layout (``DefaultTrainer.state_dict``, which adds
    ``_trainer``: the inner SimpleTrainer/AMPTrainer's ``iteration``, ``hooks`` and ``optimizer``
    state). ``state`` itself if it has ``_trainer``; for v0.6's layout (``iteration`` and
    ``hooks`` only), a copy whose ``_trainer`` is ``fresh_inner``, the inner trainer's current
    (untrained) state, so loading it leaves the optimizer as it is."""
    if not isinstance(state, dict) or "iteration" not in state:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a Detectron2 trainer state (no 'iteration'; got {keys})")
    if "_trainer" in state:
        return state
    inner = dict(fresh_inner, iteration=state["iteration"])
    return dict(state, _trainer=inner)


def build_cfg(config_file: str, opts: List[str]) -> CfgNode:
    """The frozen config of ``config_file`` with ``opts`` on top of every project's defaults; no
    side effect (no output dir, logging or dataset registration)."""
    cfg = get_cfg()
    add_d2infra_config(cfg)
    add_imbalance_config(cfg)
    add_r3cnn_config(cfg)
    add_iou_aware_config(cfg)
    add_offset_bin_config(cfg)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file!r} does not exist")
    merge_from_file(cfg, config_file)  # an unknown key: an error suggesting the closest keys
    merge_from_list(cfg, opts)
    resolve_device(cfg)  # CUDA asked for, none here: an error, or the CPU with a warning
    cfg.freeze()
    return cfg


def setup(args) -> CfgNode:
    """:func:`build_cfg` of the command line; then the datasets and Detectron2's default setup
    (output dir, logging, seed)."""
    cfg = build_cfg(args.config_file, args.opts)
    register_coco_format_datasets(cfg)
    check_dataset_names(cfg)
    plain_text_log_files(cfg.OUTPUT_DIR)  # log.txt without the config dump's colour codes
    log_device_fallback()  # the log's first line: the loggers default_setup uses are set up
    default_setup(cfg, args)
    check_datasets(cfg, training=not args.eval_only)  # the data against the config
    return cfg


def check_weights(cfg: CfgNode) -> None:
    """``--eval-only`` must not silently evaluate a randomly initialised model."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise ValueError("--eval-only needs trained weights: add MODEL.WEIGHTS path/to/model.pth")
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights!r} does not exist")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_weights(cfg)
        model = Trainer.build_model(cfg)
        D2InfraCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        log_device_fallback()
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    log_device_fallback()
    return results


def log_device_fallback() -> None:
    """The CPU fallback's warning (:func:`d2infra.engine.resolve_device`), if this run fell back:
    the log's first line and, again, its last."""
    if device_fallback_warning():
        logger.warning(device_fallback_warning())


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    cfg = build_cfg(args.config_file, args.opts)  # a bad config or device stops here
    if args.num_gpus * args.num_machines > 1:
        # setup() checks the data on rank 0 only, which stops no other rank (or machine): each
        # machine checks its own disk before its processes start
        register_coco_format_datasets(cfg)
        check_datasets(cfg, training=not args.eval_only)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
