"""Running, child process: train and evaluate one run of the suite; its result (the record to
commit) goes to ``result.json`` in its OUTPUT_DIR when it is done.

Both members of a pair see the same batches: the sampler order comes from ``SEED`` and the loader
workers' augmentation seeds from a generator seeded with ``SEED``; each run stores a digest of the
image ids and boxes it was fed. A run resumed from a checkpoint (it had stopped) is fed the same
batches as an uninterrupted one: Detectron2's resume restarts the loader's stream from its start,
so the batches already trained on are drawn again and skipped first (their digest included).
A run with ``TEST.EVAL_PERIOD`` (a learning curve) records every periodic evaluation's metrics
in ``curve.json`` as it happens, so that a resumed run keeps the points before its interruption;
the record's ``curve`` lists them in order. It stops early by the curve's rule (``spec["stop"]``,
``curves.stop_reason``): its record's ``stopped`` says where and why, its metrics are those of
its last evaluation, and its weights are saved as ``model_final.pth``.
Peak memory is the peak resident set size of this process
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; data-loader workers not included).
"""
import argparse
import datetime
import hashlib
import logging
import os
import resource
import statistics
import time
from typing import Dict, List, Optional

import numpy as np

from coco_ap import METRICS, metrics_from_results
from curves import evaluation_missing, stop_reason
from records import (REPO, config_dict, config_digest, git_head, machine_description,
                     read_json, write_json)

__all__ = ["child_train", "setup_cfg", "count_params", "check_resumable", "train_command"]

_FIRST_HANDLERS: Dict[str, list] = {}


class CurveStop(Exception):
    """Raised after an evaluation of a learning curve that ends it (``curves.stop_reason``): the
    one way out of Detectron2's training loop before MAX_ITER; not an error. ``stopped``: the
    record's entry, {"iteration", "why"}."""

    def __init__(self, iteration: int, reason: str):
        self.stopped = {"iteration": iteration,
                        "why": f"learning curve stopped at iteration {iteration}: {reason}"}
        super().__init__(self.stopped["why"])


def setup_cfg(config: str, opts: List[str]):
    """train_net's setup. Detectron2's default_setup adds log handlers for every new OUTPUT_DIR;
    a child that sets up several configs keeps only the first ones (else each line is repeated)."""
    from train_net import setup

    args = argparse.Namespace(config_file=os.path.join(REPO, config), opts=list(opts),
                              eval_only=False, resume=False, num_gpus=1)
    cfg = setup(args)
    for name in ("detectron2", "d2", "fvcore"):
        lg = logging.getLogger(name)
        first = _FIRST_HANDLERS.setdefault(name, list(lg.handlers))
        for h in list(lg.handlers):
            if h not in first:
                lg.removeHandler(h)
    return cfg


def count_params(model) -> Dict[str, object]:
    """Trainable parameters of the whole model and of its ROI heads (two-stage) or dense head."""
    model = getattr(model, "module", model)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_name = "roi_heads" if hasattr(model, "roi_heads") else "head"
    head = getattr(model, head_name, None)
    head_params = (sum(p.numel() for p in head.parameters() if p.requires_grad)
                   if head is not None else None)
    return {"params_total": total, "params_head": head_params, "head_module": head_name}


def train_command(config: str, opts: List[str]) -> str:
    """The train_net.py command that trains the same run (OUTPUT_DIR aside)."""
    quoted = [f"'{o}'" if any(c in o for c in " ()[],") else o for o in opts]
    return f"python train_net.py --config-file {config} " + " ".join(quoted)


def check_resumable(out_dir: str, spec: dict) -> None:
    """A work dir holds one configuration: resuming with another config or opts (e.g. after the
    suite's schedule changed) would mix two trainings in one checkpoint, so it stops with an error
    instead. The first start records the configuration in ``run_spec.json``."""
    path = os.path.join(out_dir, "run_spec.json")
    want = {"config": spec["config"], "opts": spec["opts"]}
    if os.path.isfile(path):
        have = read_json(path)
        if have != want:
            raise SystemExit(f"{out_dir} holds an interrupted run of another configuration:\n"
                             f"  there: {have}\n  asked: {want}\n"
                             "Delete that directory or use another --work-dir.")
        return
    if os.path.isfile(os.path.join(out_dir, "last_checkpoint")):
        raise SystemExit(f"{out_dir} holds checkpoints of an unknown configuration (no "
                         "run_spec.json); delete it or use another --work-dir.")
    write_json(path, want)


def child_train(spec: dict) -> None:
    """Train and evaluate one run; write its record to ``result.json`` in its OUTPUT_DIR last."""
    import torch
    from detectron2.engine import HookBase

    from train_net import Trainer

    class StepTimer(HookBase):
        """Wall time of every training step, data loading included."""

        def __init__(self):
            self.times: List[float] = []

        def before_step(self):
            self._t0 = time.perf_counter()

        def after_step(self):
            self.times.append(time.perf_counter() - self._t0)

    class DigestLoader:
        """The train loader, recording a digest of the image ids and boxes it yields."""

        def __init__(self, loader):
            self.loader, self.sha, self.images = loader, hashlib.sha1(), 0

        def __iter__(self):
            for batch in self.loader:
                for d in batch:
                    self.sha.update(str(d.get("image_id")).encode())
                    if "instances" in d:
                        boxes = d["instances"].gt_boxes.tensor
                        self.sha.update(np.round(boxes.numpy(), 1).tobytes())
                    self.images += 1
                yield batch

    out_dir = spec["output_dir"]
    curve_file = os.path.join(out_dir, "curve.json")

    class BenchmarkTrainer(Trainer):
        digest_loader: Optional[DigestLoader] = None
        curve: List[dict] = []
        stop: Optional[dict] = spec.get("stop")

        @classmethod
        def test(cls, cfg, model, evaluators=None):
            """Detectron2's evaluation; with TEST.EVAL_PERIOD, each one's metrics are a point of
            the learning curve (the EvalHook's iteration), written to curve.json at once."""
            from detectron2.utils.events import get_event_storage

            results = super().test(cfg, model, evaluators)
            if cfg.TEST.EVAL_PERIOD > 0:
                # after a step the storage holds that step's index; in after_train (the final
                # evaluation) Detectron2 has moved it to MAX_ITER already
                it = min(get_event_storage().iter + 1, cfg.SOLVER.MAX_ITER)
                point = {"iteration": it, **metrics_from_results(
                    results, cfg.OUTPUT_DIR, cfg.DATASETS.TEST[0], cfg.TEST.DETECTIONS_PER_IMAGE)}
                cls.curve = [p for p in cls.curve if p["iteration"] != point["iteration"]]
                cls.curve.append(point)
                write_json(curve_file, cls.curve)
                reason = stop_reason(cls.curve, cls.stop)
                if reason:
                    raise CurveStop(it, reason)
            return results

        @classmethod
        def build_train_loader(cls, cfg):
            loader = super().build_train_loader(cfg)
            inner = getattr(loader, "dataset", None)
            if isinstance(inner, torch.utils.data.DataLoader):
                # Workers' augmentation seeds from SEED, not from the state the model build left.
                inner.generator = torch.Generator().manual_seed(cfg.SEED)
            cls.digest_loader = DigestLoader(loader)
            return cls.digest_loader

    check_resumable(out_dir, spec)
    cfg = setup_cfg(spec["config"], spec["opts"] + ["OUTPUT_DIR", out_dir])
    timer = StepTimer()
    trainer = BenchmarkTrainer(cfg)
    trainer.register_hooks([timer])
    trainer.resume_or_load(resume=True)
    start_iter = trainer.start_iter
    if os.path.isfile(curve_file):  # the points evaluated before an interruption
        BenchmarkTrainer.curve = [p for p in read_json(curve_file) if p["iteration"] <= start_iter]
    stopped = None
    reason = stop_reason(BenchmarkTrainer.curve, BenchmarkTrainer.stop)
    if reason:  # killed after the evaluation that ended it, before its record was written
        stopped = CurveStop(BenchmarkTrainer.curve[-1]["iteration"], reason).stopped
    elif evaluation_missing(BenchmarkTrainer.curve, start_iter, cfg.TEST.EVAL_PERIOD,
                            cfg.SOLVER.MAX_ITER):
        # stopped during the evaluation at start_iter (its checkpoint came first): do it now
        from detectron2.utils.events import EventStorage

        try:
            with EventStorage(start_iter - 1):
                BenchmarkTrainer.test(cfg, trainer.model)
        except CurveStop as e:
            stopped = e.stopped
    if start_iter > 0 and stopped is None:
        # Fast-forward the stream past the start_iter batches the checkpoint has trained on: the
        # same sampler indices and augmentation draws (the loader's workers take turns in a fixed
        # order, each seeded from SEED). Killed during the final evaluation, the run loads all
        # its batches again for nothing but its digest (a minute or two).
        logging.getLogger(__name__).info("Resumed at iteration %d: skipping the %d batches "
                                         "already trained on", start_iter, start_iter)
        batches = trainer._trainer._data_loader_iter
        for _ in range(start_iter):
            next(batches)
    t0 = time.perf_counter()
    diverged = None
    try:
        if stopped is None:
            trainer.train()
    except CurveStop as e:
        stopped = e.stopped
    except FloatingPointError as e:
        # Detectron2's check for Inf/NaN losses or boxes. A rerun with the same seed diverges
        # again, so this is the run's result: recorded, and the suite goes on.
        diverged = {"iteration": int(trainer.iter), "error": str(e).splitlines()[0][:300]}
    wall = time.perf_counter() - t0
    if stopped is not None:
        # the weights it stopped with, where a finished run's are (Planner.weights), as the
        # checkpoint of its last trained iteration
        trainer.checkpointer.save("model_final", iteration=stopped["iteration"] - 1)
    steps = timer.times[min(5, max(len(timer.times) - 1, 0)):]  # skip warm-up steps
    merged = config_dict(cfg)
    result = {
        "run": spec["run"], "suite": spec["suite"], "why": spec["why"],
        "model": spec["model"], "seed": spec["seed"], "lr": spec["lr"], "factor": spec["factor"],
        "config": spec["config"], "opts": spec["opts"],
        "command": train_command(spec["config"], spec["opts"]),
        "suite_command": spec["suite_command"],
        "machine": machine_description(), "git_commit": git_head(),
        "date": datetime.date.today().isoformat(),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "max_iter": cfg.SOLVER.MAX_ITER, "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "base_lr": cfg.SOLVER.BASE_LR,
        "train_dataset": list(cfg.DATASETS.TRAIN), "test_dataset": list(cfg.DATASETS.TEST),
        "resumed_from_iter": start_iter,
        "diverged": diverged,
        "stopped": stopped,
        "metrics": ({k: None for k in METRICS} if diverged else
                    {k: v for k, v in BenchmarkTrainer.curve[-1].items() if k != "iteration"}
                    if stopped else
                    metrics_from_results(
                        trainer._last_eval_results,  # set by the EvalHook at the last iteration
                        cfg.OUTPUT_DIR, cfg.DATASETS.TEST[0], cfg.TEST.DETECTIONS_PER_IMAGE)),
        "curve": BenchmarkTrainer.curve if cfg.TEST.EVAL_PERIOD > 0 else None,
        **count_params(trainer.model),
        "train_s_per_iter_median": statistics.median(steps) if steps else None,
        "train_and_eval_wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "data_digest": trainer.digest_loader.sha.hexdigest() if trainer.digest_loader else None,
        "config_digest": config_digest(merged),
        "merged_config": merged,
    }
    write_json(os.path.join(out_dir, "result.json"), result)
