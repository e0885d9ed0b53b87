#!/usr/bin/env python
"""Benchmark every method beside its Detectron2 baseline: accuracy, parameters, speed and memory.

    python benchmarks/run.py --suite embedded                  # full suite (resumable)
    python benchmarks/run.py --suite embedded --seeds 1        # one seed for every pair
    python benchmarks/run.py --suite embedded --quick --only faster_vs_offset_bin   # CI smoke run
    python benchmarks/run.py --readme benchmarks/results/embedded-2026-11-23.json   # Results text
    python benchmarks/run.py --readme benchmarks/results/embedded-2026-11-23.json --into README.md
    python benchmarks/run.py --suite embedded --plan           # what would run, nothing trained

Phases, each resumable (a finished piece is skipped when the command is run again):

1. train: every (model, seed) of the suite (``benchmarks/suites.py``) is trained and evaluated in
   its own child process with ``train_net.Trainer``, into ``<work>/<model>-seed<k>/`` (its
   OUTPUT_DIR); ``result.json`` there is written when it is done. An interrupted training resumes
   from its last checkpoint. Both members of a pair get the same config schedule, ``SEED`` and data
   order (the sampler's order comes from ``SEED``; the loader workers' augmentation seeds from a
   generator seeded with ``SEED``); each run records a digest of the image ids and boxes it was fed.
2. speed: per pair, one child process times training iterations and inference of every member on
   the trained weights, one after the other and then again in reverse order, so the ratios to the
   baseline come from the same process and machine state.
3. ablations: eval-only sweeps of one config key on one trained model.
4. report: ``<results>/<suite>-<date>.json`` and ``.md`` (the README Results section text).

Peak memory is the peak resident set size of the training process, from
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of its training and evaluation (data
loader worker processes are not included).
"""
import argparse
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from suites import Suite, get_suite, models_to_train  # noqa: E402

__all__ = ["ap_at_iou", "box_ap_at_ious", "render_markdown", "replace_results_section", "main"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
# AP at these IoUs is reported besides COCO's AP, AP50, AP75 (the papers' tables).
EXTRA_IOUS = (0.6, 0.7, 0.8, 0.9)
METRICS = ("AP", "AP50", "AP75", "AP60", "AP70", "AP80", "AP90", "mask_AP")

# --quick: a few iterations on the mini splits, so the whole pipeline runs in CI.
QUICK_OPTS = [
    "DATASETS.TRAIN", '("shapes_mini_train",)', "DATASETS.TEST", '("shapes_mini_val",)',
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "0",
]
# Speed phase: (warmup iterations, timed iterations, timed inference images) per model and pass.
SPEED_FULL = (3, 10, 30)
SPEED_QUICK = (1, 2, 2)


# ---------------------------------------------------------------------------------------------
# AP at one IoU threshold from pycocotools' precision array
# ---------------------------------------------------------------------------------------------
def ap_at_iou(coco_eval_or_precision, iou: float, iou_thresholds: Optional[Sequence[float]] = None,
              area_index: int = 0, max_dets_index: int = -1) -> float:
    """AP (in %) at IoU threshold ``iou``, from pycocotools.

    Args:
        coco_eval_or_precision: a ``COCOeval`` after ``accumulate()``, or its
            ``eval["precision"]`` array of shape (T IoU thresholds, R recall points, K classes,
            A area ranges, M maxDets), where -1 marks an empty cell (a class without ground truth).
        iou: one of the IoU thresholds of the array (COCO's are 0.5:0.05:0.95).
        iou_thresholds: the T thresholds of a bare array (default COCO's); read from the COCOeval's
            ``params.iouThrs`` otherwise.
        area_index, max_dets_index: area range "all" (0) and the largest maxDets (-1), as COCO's
            AP.

    Returns:
        the mean of the precision over recall points and classes, x100, as COCOeval's summarize()
        does; NaN when no class has ground truth.
    """
    if hasattr(coco_eval_or_precision, "eval"):
        precision = coco_eval_or_precision.eval["precision"]
        thresholds = coco_eval_or_precision.params.iouThrs
    else:
        precision = np.asarray(coco_eval_or_precision)
        thresholds = COCO_IOU_THRESHOLDS if iou_thresholds is None else iou_thresholds
    thresholds = np.asarray(thresholds, dtype=np.float64)
    matches = np.where(np.isclose(thresholds, iou, atol=1e-6))[0]
    if len(matches) == 0:
        raise ValueError(f"IoU {iou} is not one of the thresholds {thresholds.tolist()}")
    p = precision[matches[0], :, :, area_index, max_dets_index]
    p = p[p > -1]
    return float(p.mean() * 100) if p.size else float("nan")


def box_ap_at_ious(results_json: str, gt_json: str, ious: Sequence[float] = EXTRA_IOUS,
                   max_dets: int = 100) -> Dict[str, float]:
    """Box AP at each of ``ious`` (keys "AP60" ...) and at 0.5 ("AP50"), from a COCO results file
    (``coco_instances_results.json`` of Detectron2's COCOEvaluator) and the ground-truth json.
    No detection at all gives 0."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = [f"AP{int(round(t * 100))}" for t in (0.5, *ious)]
    with open(results_json) as f:
        dets = json.load(f)
    if not dets:
        return {n: 0.0 for n in names}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        coco_eval = COCOeval(gt, gt.loadRes(dets), "bbox")
        coco_eval.params.maxDets = [1, 10, max_dets]
        coco_eval.evaluate()
        coco_eval.accumulate()
    return {n: ap_at_iou(coco_eval, t) for n, t in zip(names, (0.5, *ious))}


# ---------------------------------------------------------------------------------------------
# Child processes: train one model, time one pair, sweep one ablation
# ---------------------------------------------------------------------------------------------
_FIRST_HANDLERS: Dict[str, list] = {}


def _setup_cfg(config: str, opts: List[str]):
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


def _spec_opts(spec: dict, seed: int) -> List[str]:
    """The opts that define one run: the model's, the quick or schedule overrides and the seed
    (what ``run_spec.json`` and ``result.json`` record)."""
    opts = list(spec["model_opts"])
    if spec["quick"]:
        opts += QUICK_OPTS
    opts += list(spec.get("schedule_opts", []))
    return opts + ["SEED", str(seed)]


def _run_opts(spec: dict, seed: int, output_dir: str) -> List[str]:
    """:func:`_spec_opts` and the run's output dir."""
    return _spec_opts(spec, seed) + ["OUTPUT_DIR", output_dir]


def _count_params(model) -> Dict[str, object]:
    """Trainable parameters of the whole model and of its ROI heads (two-stage) or dense head."""
    model = getattr(model, "module", model)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_name = "roi_heads" if hasattr(model, "roi_heads") else "head"
    head = getattr(model, head_name, None)
    head_params = (sum(p.numel() for p in head.parameters() if p.requires_grad)
                   if head is not None else None)
    return {"params_total": total, "params_head": head_params, "head_module": head_name}


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _metrics(results: dict, output_dir: str, test_dataset: str, max_dets: int) -> dict:
    """The table's metrics from Trainer.test's results, and AP at 0.6..0.9 recomputed with
    :func:`ap_at_iou` from COCOEvaluator's results file (checked against the loc_quality ones)."""
    from detectron2.data import MetadataCatalog

    bbox = results.get("bbox", {})
    out = {k: _finite(bbox.get(k)) for k in ("AP", "AP50", "AP75")}
    # COCOEvaluator reports NaN when a model made no detection: its AP is 0.
    out = {k: (0.0 if v is None else v) for k, v in out.items()}
    res_file = os.path.join(output_dir, "inference", test_dataset, "coco_instances_results.json")
    gt_json = MetadataCatalog.get(test_dataset).json_file
    ours = box_ap_at_ious(res_file, gt_json, max_dets=max_dets)
    for k in ("AP60", "AP70", "AP80", "AP90"):
        out[k] = _finite(ours[k])
    loc = results.get("loc_quality", {})
    out["check_max_abs_diff_loc_quality"] = max(
        [abs(ours[k] - loc[k]) for k in ("AP60", "AP70", "AP80", "AP90")
         if k in loc and math.isfinite(loc[k]) and math.isfinite(ours[k])] or [0.0])
    out["mask_AP"] = _finite(results["segm"].get("AP", float("nan"))) if "segm" in results else None
    if "segm" in results and out["mask_AP"] is None:
        out["mask_AP"] = 0.0
    with open(res_file) as f:
        out["num_detections"] = len(json.load(f))
    for k in ("pearson", "spearman"):
        if k in loc:
            out[f"score_iou_{k}"] = _finite(loc[k])
    return out


def config_changes(spec: dict, seed: int, out_dir: str, limit: int = 5) -> List[str]:
    """How the merged config of a finished run (the ``config.yaml`` Detectron2 saved in its
    OUTPUT_DIR) differs from the config the suite would train now: "KEY: old -> new" for up to
    ``limit`` keys (OUTPUT_DIR aside); empty when identical or when the run saved no config.
    Catches a config file edited after its run finished, e.g. a fixed default."""
    import yaml

    from train_net import build_cfg

    saved = os.path.join(out_dir, "config.yaml")
    if not os.path.isfile(saved):
        return []
    with open(saved) as f:
        old = yaml.safe_load(f)
    new = yaml.safe_load(build_cfg(os.path.join(REPO, spec["config"]),
                                   _run_opts(spec, seed, out_dir)).dump())

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(old), flat(new)
    keys = sorted(k for k in (set(old) | set(new)) - {"OUTPUT_DIR"}  # a moved work dir: same run
                  if old.get(k, "<absent>") != new.get(k, "<absent>"))
    return [f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}" for k in keys[:limit]]


def _check_resumable(out_dir: str, spec: dict) -> None:
    """A work dir holds one configuration: resuming with another config, opts or schedule (e.g.
    after the suite's schedule changed) would mix two trainings in one checkpoint, so it stops
    with an error instead. The first start records the configuration in ``run_spec.json``."""
    path = os.path.join(out_dir, "run_spec.json")
    want = {"config": spec["config"], "opts": _spec_opts(spec, spec["seed"])}
    if os.path.isfile(path):
        have = _read_json(path)
        if have != want:
            raise SystemExit(f"{out_dir} holds an interrupted run of another configuration:\n"
                             f"  there: {have}\n  asked: {want}\n"
                             "Delete that directory or use another --work-dir.")
        return
    if os.path.isfile(os.path.join(out_dir, "last_checkpoint")):
        raise SystemExit(f"{out_dir} holds checkpoints of an unknown configuration (no "
                         "run_spec.json); delete it or use another --work-dir.")
    _write_json(path, want)


def child_train(spec: dict) -> None:
    """Train and evaluate one (model, seed); write ``result.json`` into its OUTPUT_DIR last."""
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

    class BenchmarkTrainer(Trainer):
        digest_loader: Optional[DigestLoader] = None

        @classmethod
        def build_train_loader(cls, cfg):
            loader = super().build_train_loader(cfg)
            inner = getattr(loader, "dataset", None)
            if isinstance(inner, torch.utils.data.DataLoader):
                # Workers' augmentation seeds from SEED, not from the state the model build left.
                inner.generator = torch.Generator().manual_seed(cfg.SEED)
            cls.digest_loader = DigestLoader(loader)
            return cls.digest_loader

    out_dir = spec["output_dir"]
    _check_resumable(out_dir, spec)
    cfg = _setup_cfg(spec["config"], _run_opts(spec, spec["seed"], out_dir))
    timer = StepTimer()
    trainer = BenchmarkTrainer(cfg)
    trainer.register_hooks([timer])
    trainer.resume_or_load(resume=True)
    start_iter = trainer.start_iter
    t0 = time.perf_counter()
    diverged = None
    try:
        trainer.train()
    except FloatingPointError as e:
        # Detectron2's check for Inf/NaN losses or boxes. A rerun with the same seed diverges
        # again, so this is the run's result: recorded, and the suite goes on.
        diverged = {"iteration": int(trainer.iter), "error": str(e).splitlines()[0][:300]}
    wall = time.perf_counter() - t0
    steps = timer.times[min(5, max(len(timer.times) - 1, 0)):]  # skip warm-up steps
    result = {
        "model": spec["model"], "seed": spec["seed"], "config": spec["config"],
        "opts": _spec_opts(spec, spec["seed"]),
        "max_iter": cfg.SOLVER.MAX_ITER, "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "train_dataset": list(cfg.DATASETS.TRAIN), "test_dataset": list(cfg.DATASETS.TEST),
        "resumed_from_iter": start_iter,
        "diverged": diverged,
        "metrics": ({k: None for k in METRICS} if diverged else
                    _metrics(trainer._last_eval_results,  # set by the EvalHook at the last iteration
                             cfg.OUTPUT_DIR, cfg.DATASETS.TEST[0], cfg.TEST.DETECTIONS_PER_IMAGE)),
        **_count_params(trainer.model),
        "train_s_per_iter_median": statistics.median(steps) if steps else None,
        "train_and_eval_wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "data_digest": (trainer.digest_loader.sha.hexdigest()
                        if trainer.digest_loader and start_iter == 0 else None),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    _write_json(os.path.join(out_dir, "result.json"), result)


def _time_training(cfg, weights: str, warmup: int, iters: int) -> List[float]:
    from detectron2.checkpoint import DetectionCheckpointer

    from iteration_speed import time_training_steps
    from train_net import Trainer

    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return time_training_steps(model, Trainer.build_optimizer(cfg, model),
                               Trainer.build_train_loader(cfg), warmup, iters)


def _time_inference(cfg, weights: str, warmup: int, images: int) -> List[float]:
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader

    from train_net import Trainer

    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    times = []
    with torch.no_grad():
        for i, batch in enumerate(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])):
            if i >= warmup + images:
                break
            start = time.perf_counter()
            model(batch)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def child_speed(spec: dict) -> None:
    """Training s/iter and inference ms/image of each model of one pair, in this one process:
    every model once in order, then once in reverse order; medians over both passes."""
    warmup, iters, images = SPEED_QUICK if spec["quick"] else SPEED_FULL
    train_t: Dict[str, List[float]] = {m["model"]: [] for m in spec["models"]}
    infer_t: Dict[str, List[float]] = {m["model"]: [] for m in spec["models"]}
    for order in (spec["models"], list(reversed(spec["models"]))):
        for m in order:
            print(f"[speed] {spec['pair']}: {m['model']}", flush=True)
            opts = _run_opts(m, spec["seed"], os.path.join(spec["output_dir"], m["model"]))
            cfg = _setup_cfg(m["config"], opts + ["DATALOADER.NUM_WORKERS", "0"])
            train_t[m["model"]] += _time_training(cfg, m["weights"], warmup, iters)
            infer_t[m["model"]] += _time_inference(cfg, m["weights"], 1, images)
    base = spec["models"][0]["model"]
    b_train, b_infer = statistics.median(train_t[base]), statistics.median(infer_t[base]) * 1e3
    rows = {}
    for name in train_t:
        tr, inf = statistics.median(train_t[name]), statistics.median(infer_t[name]) * 1e3
        rows[name] = {"train_s_per_iter": tr, "infer_ms_per_image": inf,
                      "train_ratio": tr / b_train, "infer_ratio": inf / b_infer,
                      "train_iters_timed": len(train_t[name]),
                      "infer_images_timed": len(infer_t[name])}
    _write_json(spec["result"], {"pair": spec["pair"], "baseline": base, "models": rows,
                                 "note": "DATALOADER.NUM_WORKERS 0, batch of the schedule, "
                                         "inference batch 1, trained weights"})


def child_ablation(spec: dict) -> None:
    """Evaluate one trained model with each value of one config key; one file per value."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils.events import EventStorage

    from train_net import Trainer

    for value in spec["values"]:
        path = os.path.join(spec["output_dir"], f"{value}.json")
        if os.path.isfile(path):
            print(f"[ablation] {spec['ablation']}: {spec['key']}={value} done, skipped", flush=True)
            continue
        print(f"[ablation] {spec['ablation']}: {spec['key']}={value}", flush=True)
        out = os.path.join(spec["output_dir"], str(value))
        opts = _run_opts(spec, spec["seed"], out) + [spec["key"], str(value)]
        cfg = _setup_cfg(spec["config"], opts)
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model).load(spec["weights"])
        with EventStorage(0):
            results = Trainer.test(cfg, model)
        row = {"value": value, **_metrics(results, out, cfg.DATASETS.TEST[0],
                                          cfg.TEST.DETECTIONS_PER_IMAGE)}
        _write_json(path, row)


# ---------------------------------------------------------------------------------------------
# The parent: plan, run the pieces, aggregate, render
# ---------------------------------------------------------------------------------------------
def _write_json(path: str, data) -> None:
    """Atomically (tmp file + rename), strict JSON (NaN written as null)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_strict(data), f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def _strict(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _run_child(kind: str, spec: dict) -> None:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} of {spec.get('model') or spec.get('pair') or spec.get('ablation')}"
                         f" failed (exit {proc.returncode}); rerun the same command to resume")


def machine_description() -> str:
    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    except OSError:
        pass
    return (f"{platform.machine()} {cpu}".strip() + f", {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}")


def _schedule_opts(max_iter: Optional[int]) -> List[str]:
    """The configs' 1500-iteration schedule scaled to ``max_iter`` (LR steps at the same
    fractions, 1100/1500 and 1350/1500); no opts for None."""
    if not max_iter:
        return []
    return ["SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.STEPS", f"({round(max_iter * 1100 / 1500)}, {round(max_iter * 1350 / 1500)})",
            "SOLVER.WARMUP_ITERS", str(min(100, max_iter // 10))]


def _fmt_duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_suite(args) -> str:
    suite: Suite = get_suite(args.suite).select(args.only)
    tag = f"{suite.name}-quick" if args.quick else suite.name
    if args.max_iter and not args.quick:
        tag += f"-it{args.max_iter}"  # another schedule: other work dir, nothing reused
    work = os.path.abspath(args.work_dir or os.path.join(REPO, "benchmarks", "work", tag))
    seeds = list(args.seeds or suite.seeds)

    def run_dir(model: str, seed: int) -> str:
        return os.path.join(work, f"{model}-seed{seed}")

    def schedule(model: str) -> Optional[int]:
        return None if args.quick else (args.max_iter or suite.schedule(model))

    def model_spec(model: str) -> dict:
        m = suite.models[model]
        return {"model": model, "config": m.config, "model_opts": list(m.opts),
                "quick": args.quick,
                "schedule_opts": _schedule_opts(schedule(model)) + list(args.opts)}

    # 1. train
    todo = models_to_train(suite, seeds)
    print(f"Suite {suite.name!r}{' (quick)' if args.quick else ''}: {len(todo)} trainings, "
          f"{len(suite.pairs)} speed comparisons, {len(suite.ablations)} ablations; work dir {work}")
    if args.plan:
        for i, (model, seed) in enumerate(todo, 1):
            done = os.path.isfile(os.path.join(run_dir(model, seed), "result.json"))
            iters = schedule(model) or "config's"
            print(f"  [{i}/{len(todo)}] {model} seed {seed}, {iters} iterations: "
                  f"{suite.models[model].config}{'  (done)' if done else ''}")
        return ""
    walls: List[float] = []
    for i, (model, seed) in enumerate(todo, 1):
        out = run_dir(model, seed)
        result_file = os.path.join(out, "result.json")
        if os.path.isfile(result_file):
            changed = config_changes(model_spec(model), seed, out)
            if not changed:
                walls.append(_read_json(result_file)["train_and_eval_wall_s"])
                print(f"[{i}/{len(todo)}] {model} seed {seed}: done, skipped", flush=True)
                continue
            # Its config changed since it was trained: set the run (and what was measured on its
            # weights) aside, nothing deleted, and train it again.
            aside = f"{out}.stale-{datetime.datetime.now():%Y%m%d-%H%M%S}"
            print(f"[{i}/{len(todo)}] {model} seed {seed}: its config changed since it was "
                  f"trained ({'; '.join(changed)}); moved to {aside}, training again", flush=True)
            os.replace(out, aside)
            if seed == seeds[0]:
                for pair in suite.pairs:
                    speed = os.path.join(work, f"speed-{pair.name}.json")
                    if model in pair.models and os.path.isfile(speed):
                        os.replace(speed, os.path.join(aside, os.path.basename(speed)))
                for ab in suite.ablations:
                    ab_dir = os.path.join(work, f"ablation-{ab.name}")
                    if ab.model == model and os.path.isdir(ab_dir):
                        os.replace(ab_dir, os.path.join(aside, os.path.basename(ab_dir)))
        left = 1 + sum(not os.path.isfile(os.path.join(run_dir(m, s), "result.json"))
                       for m, s in todo[i:])  # this one and the later ones not trained yet
        eta = (f", rough ETA of the training phase {_fmt_duration(statistics.mean(walls) * left)}"
               if walls else "")
        print(f"[{i}/{len(todo)}] training {model} seed {seed} -> {out}{eta}", flush=True)
        t0 = time.time()
        _run_child("train", {**model_spec(model), "seed": seed, "output_dir": out})
        walls.append(time.time() - t0)

    # 2. speed, per pair, first seed's weights
    for pair in suite.pairs:
        path = os.path.join(work, f"speed-{pair.name}.json")
        members = [{**model_spec(m), "weights": os.path.join(run_dir(m, seeds[0]),
                                                             "model_final.pth")}
                   for m in pair.models
                   if not _read_json(os.path.join(run_dir(m, seeds[0]), "result.json")).get("diverged")]
        # Done when it timed exactly these members (a member added to the pair: timed again).
        if (os.path.isfile(path)
                and set(_read_json(path)["models"]) == {m["model"] for m in members}):
            print(f"[speed] {pair.name}: done, skipped", flush=True)
            continue
        _run_child("speed", {"pair": pair.name, "models": members, "seed": seeds[0],
                             "quick": args.quick, "result": path,
                             "output_dir": os.path.join(work, f"speed-{pair.name}")})

    # 3. ablations
    for ab in suite.ablations:
        _run_child("ablation", {**model_spec(ab.model), "ablation": ab.name, "key": ab.key,
                                "values": list(ab.values), "seed": seeds[0],
                                "weights": os.path.join(run_dir(ab.model, seeds[0]),
                                                        "model_final.pth"),
                                "output_dir": os.path.join(work, f"ablation-{ab.name}")})

    # 4. report
    report = aggregate(suite, work, seeds, args)
    date = report["date"]
    os.makedirs(args.results_dir, exist_ok=True)
    base = os.path.join(args.results_dir, f"{tag}-{date}")
    _write_json(base + ".json", report)
    with open(base + ".md", "w") as f:
        f.write(render_markdown(report))
    print(f"Wrote {base}.json and {base}.md")
    return base + ".json"


def _mean_std(values: List[Optional[float]]):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(suite: Suite, work: str, seeds: List[int], args) -> dict:
    models = {}
    for model, seed in models_to_train(suite, seeds):
        r = _read_json(os.path.join(work, f"{model}-seed{seed}", "result.json"))
        entry = models.setdefault(model, {"label": suite.models[model].label,
                                          "config": suite.models[model].config, "runs": {}})
        entry["runs"][str(seed)] = r
    for entry in models.values():
        runs = list(entry["runs"].values())
        entry["seeds"] = [r["seed"] for r in runs]
        for k in METRICS:
            mean, std = _mean_std([r["metrics"].get(k) for r in runs])
            entry.setdefault("mean", {})[k] = mean
            entry.setdefault("std", {})[k] = std
        first = runs[0]
        for k in ("params_total", "params_head", "head_module", "max_iter", "ims_per_batch"):
            entry[k] = first[k]
        entry["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        entry["diverged"] = {str(r["seed"]): r["diverged"] for r in runs if r.get("diverged")}
    pairs = []
    for p in suite.pairs:
        speed = _read_json(os.path.join(work, f"speed-{p.name}.json"))
        # A diverged run stopped early and saw only the first batches: its digest is not compared.
        firsts = {m: models[m]["runs"][str(seeds[0])] for m in p.models}
        digests = {m: r.get("data_digest") for m, r in firsts.items() if not r.get("diverged")}
        known = {d for d in digests.values() if d}
        pairs.append({"name": p.name, "title": p.title, "baseline": p.models[0],
                      "models": list(p.models), "claim": p.claim, "metric": p.metric,
                      "headline": p.headline, "noise_from": p.noise_from,
                      "max_iter": models[p.models[0]]["max_iter"],
                      "speed": speed["models"],
                      "same_data_order": len(known) == 1 and len(known) == len(set(digests.values()))})
    ablations = []
    for ab in suite.ablations:
        rows = [_read_json(os.path.join(work, f"ablation-{ab.name}", f"{v}.json"))
                for v in ab.values]
        ablations.append({"name": ab.name, "title": ab.title, "model": ab.model, "key": ab.key,
                          "rows": rows})
    first = next(iter(models.values()))["runs"]
    run0 = next(iter(first.values()))
    return {
        "suite": suite.name, "quick": args.quick,
        "command": "python benchmarks/run.py " + " ".join(args.argv),
        "machine": machine_description(), "date": datetime.date.today().isoformat(),
        "note": suite.note,
        "seeds": seeds, "schedule": {"max_iter": sorted({e["max_iter"] for e in models.values()}),
                                     "ims_per_batch": run0["ims_per_batch"],
                                     "train": run0["train_dataset"], "test": run0["test_dataset"]},
        "memory": "peak RSS of the training+evaluation process (resource.getrusage RUSAGE_SELF "
                  "ru_maxrss), data-loader workers excluded; max over seeds",
        "speed": "ratios to the pair's baseline, timed in one process on the trained weights "
                 "(DATALOADER.NUM_WORKERS 0 for training steps, inference batch 1)",
        "models": models, "pairs": pairs, "ablations": ablations,
    }


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _cell(mean, std=None, digits=1) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _verdict(report: dict, pair: dict) -> str:
    """One sentence: does the paper's effect appear at this scale (on ``pair['metric']``)?

    A difference is called real when it exceeds twice its seed noise: sqrt(std_a^2 + std_b^2) when
    both sides have seeds; sqrt(2) times the seeded side's std (or the ``noise_from`` model's, on
    the same schedule) when one run stands against another."""
    k = pair["metric"]
    base = report["models"][pair["baseline"]]
    b_mean, b_std = base["mean"][k], base["std"][k]
    ref_std, ref_label = b_std, f"the baseline's {len(base['seeds'])} seeds"
    ref = report["models"].get(pair.get("noise_from") or "")
    if ref_std is None and ref is not None and ref["std"][k] is not None:
        ref_std, ref_label = ref["std"][k], f"{ref['label']}'s {len(ref['seeds'])} seeds"
    parts = []
    for m in pair["models"][1:]:
        e = report["models"][m]
        mean, std = e["mean"][k], e["std"][k]
        if e.get("diverged") or base.get("diverged"):
            which = e if e.get("diverged") else base
            its = ", ".join(f"seed {sd} at iteration {d['iteration']}"
                            for sd, d in which["diverged"].items())
            parts.append(f"{which['label']} diverged ({its})")
            continue
        if mean is None or b_mean is None:
            parts.append(f"{e['label']}: no {k}")
            continue
        d = mean - b_mean
        if std is not None and b_std is not None:
            noise = math.sqrt(std ** 2 + b_std ** 2)
            what = ("a real gain" if d > 2 * noise else "a real loss" if d < -2 * noise
                    else "within seed noise")
            parts.append(f"{e['label']} {d:+.1f} {k} ({what}, {len(e['seeds'])} seeds)")
        elif ref_std is not None or std is not None:
            noise = math.sqrt(2) * (ref_std if ref_std is not None else std)
            label = ref_label if ref_std is not None else f"its {len(e['seeds'])} seeds"
            what = "beyond" if abs(d) > 2 * noise else "within"
            parts.append(f"{e['label']} {d:+.1f} {k} (one seed; {what} twice the noise "
                         f"{label} show)")
        else:
            parts.append(f"{e['label']} {d:+.1f} {k} (one seed: not separable from noise)")
    head = "Quick run (a few iterations): the numbers are meaningless. " if report["quick"] else ""
    return (f"{head}Paper: {pair['claim']}. Here, against {base['label']}: " + "; ".join(parts)
            + ".")


def render_markdown(report: dict) -> str:
    """The README "Results" section: command, machine, date, one table and sentence per pair,
    the ablations."""
    s = report["schedule"]
    lines = [
        "## Results", "",
        f"- Command: `{report['command']}`",
        f"- Machine: {report['machine']}",
        f"- Date: {report['date']}",
        f"- Schedule: {' or '.join(map(str, s['max_iter']))} iterations (per pair, in its heading) "
        f"at batch {s['ims_per_batch']} on {', '.join(s['train'])}, evaluated on "
        f"{', '.join(s['test'])}; seeds {report['seeds']} (the seeded models of headline pairs "
        "over all seeds, mean ± std; the others on the first seed).",
        f"- Speed: {report['speed']}.",
        f"- Memory: {report['memory']}.", "",
    ]
    if report.get("note"):
        lines += [report["note"], ""]
    head = ("| model | AP | AP50 | AP75 | AP60 | AP70 | AP80 | AP90 | mask AP | params (M) | "
            "head params (M) | train s/iter (x base) | inference ms/img (x base) | peak RSS (MB) |")
    for pair in report["pairs"]:
        lines += [f"### {pair['title']}{' (headline)' if pair['headline'] else ''}, "
                  f"{pair['max_iter']} iterations", "", head,
                  "|" + "---|" * 14]
        for m in pair["models"]:
            e, sp = report["models"][m], pair["speed"].get(m)
            cells = [_cell(e["mean"][k], e["std"][k]) for k in METRICS]
            head_p = "-" if e["params_head"] is None else f"{e['params_head'] / 1e6:.2f}"
            label = e["label"] + ("".join(f" (seed {sd} diverged at iteration {d['iteration']})"
                                          for sd, d in e.get("diverged", {}).items()))
            speed = (f"{sp['train_s_per_iter']:.3f} (x{sp['train_ratio']:.2f}) | "
                     f"{sp['infer_ms_per_image']:.1f} (x{sp['infer_ratio']:.2f})" if sp else "- | -")
            lines.append(
                f"| {label} | " + " | ".join(cells) + f" | {e['params_total'] / 1e6:.2f} | "
                f"{head_p} | {speed} | {e['peak_rss_mb']:.0f} |")
        lines += ["", _verdict(report, pair)
                  + ("" if pair["same_data_order"] else
                     " (Warning: the members of this pair were not fed identical batches.)"), ""]
    for ab in report["ablations"]:
        lines += [f"### {ab['title']}", "",
                  f"Eval-only, weights of {report['models'][ab['model']]['label']} (first seed), "
                  f"`{ab['key']}` varied.", "",
                  f"| {ab['key']} | AP | AP50 | AP75 | AP60 | AP70 | AP80 | AP90 | mask AP |",
                  "|" + "---|" * 9]
        for r in ab["rows"]:
            lines.append(f"| {r['value']} | " + " | ".join(_cell(r.get(k)) for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


RESULTS_BEGIN = "<!-- benchmarks/run.py results: begin -->"
RESULTS_END = "<!-- benchmarks/run.py results: end -->"


def replace_results_section(path: str, text: str) -> None:
    """Put ``text`` between the ``RESULTS_BEGIN`` and ``RESULTS_END`` lines of the Markdown file
    ``path`` (e.g. README.md), replacing what was there; the rest of the file is kept."""
    with open(path) as f:
        lines = f.read().split("\n")
    try:
        begin, end = lines.index(RESULTS_BEGIN), lines.index(RESULTS_END)
    except ValueError:
        raise SystemExit(f"{path}: needs the lines {RESULTS_BEGIN!r} and {RESULTS_END!r} "
                         "around its Results section") from None
    if end < begin:
        raise SystemExit(f"{path}: {RESULTS_END!r} comes before {RESULTS_BEGIN!r}")
    lines[begin + 1:end] = text.rstrip("\n").split("\n")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        logging.basicConfig(level=logging.INFO)
        kind, spec = argv[1], json.loads(argv[2])
        {"train": child_train, "speed": child_speed, "ablation": child_ablation}[kind](spec)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suite", default="embedded")
    p.add_argument("--quick", action="store_true",
                   help="3 iterations on shapes_mini_train, evaluated on shapes_mini_val")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="headline pairs' seeded models run with every seed, the rest with the "
                        "first (default: the suite's, 1 2 3 for embedded)")
    p.add_argument("--only", nargs="+", default=[], help="pair or ablation names of the suite")
    p.add_argument("--max-iter", type=int, default=None,
                   help="train every model this many iterations (the configs' schedule scaled) "
                        "instead of the suite's schedules; work dir <suite>-it<N>")
    p.add_argument("--work-dir", default=None, help="default benchmarks/work/<suite>[-quick]")
    p.add_argument("--results-dir", default=os.path.join(REPO, "benchmarks", "results"))
    p.add_argument("--plan", action="store_true", help="list the trainings; run nothing")
    p.add_argument("--readme", metavar="RESULTS_JSON",
                   help="print the Markdown Results section of a results json and exit")
    p.add_argument("--into", metavar="MARKDOWN_FILE",
                   help="with --readme: replace the text between the file's "
                        f"'{RESULTS_BEGIN}' and '{RESULTS_END}' lines instead of printing")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config opts added to every model (after the suite's)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.readme:
        text = render_markdown(_read_json(args.readme))
        if args.into:
            replace_results_section(args.into, text)
        else:
            print(text)
        return
    run_suite(args)


if __name__ == "__main__":
    main()
