"""Running, child process: the speed of one pair's members, all in this one process on their
trained weights (each once in order and once in reverse order), so the ratios to the baseline
come from one machine state."""
import datetime
import os
import statistics
from typing import Dict, List

from records import machine_description, write_json
from train_child import setup_cfg

__all__ = ["child_speed"]

# (warmup iterations, timed iterations, timed inference images) per model and pass.
SPEED_FULL = (3, 10, 30)
SPEED_QUICK = (1, 2, 2)


def _time_training(cfg, weights: str, warmup: int, iters: int) -> List[float]:
    from detectron2.checkpoint import DetectionCheckpointer

    from iteration_speed import time_training_steps
    from train_net import Trainer

    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return time_training_steps(model, Trainer.build_optimizer(cfg, model),
                               Trainer.build_train_loader(cfg), warmup, iters)


def _time_inference(cfg, weights: str, warmup: int, images: int) -> List[float]:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader

    from iteration_speed import time_inference
    from train_net import Trainer

    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return time_inference(model, build_detection_test_loader(cfg, cfg.DATASETS.TEST[0]), images,
                          warmup)


def child_speed(spec: dict) -> None:
    """Training s/iter and inference ms/image of each model of one pair, in this one process:
    every model once in order, then once in reverse order; medians over both passes. ``spec``:
    "pair", "quick", "result" (the record's path) and "models", each with "model", "run",
    "config_digest", "config", "opts" and "weights"."""
    warmup, iters, images = SPEED_QUICK if spec["quick"] else SPEED_FULL
    train_t: Dict[str, List[float]] = {m["model"]: [] for m in spec["models"]}
    infer_t: Dict[str, List[float]] = {m["model"]: [] for m in spec["models"]}
    for order in (spec["models"], list(reversed(spec["models"]))):
        for m in order:
            print(f"[speed] {spec['pair']}: {m['model']}", flush=True)
            out = os.path.join(spec["output_dir"], m["model"])
            cfg = setup_cfg(m["config"], m["opts"] + ["OUTPUT_DIR", out,
                                                      "DATALOADER.NUM_WORKERS", "0"])
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
    write_json(spec["result"], {
        "pair": spec["pair"], "baseline": base, "models": rows,
        "runs": {m["model"]: {"run": m["run"], "config_digest": m["config_digest"]}
                 for m in spec["models"]},
        "machine": machine_description(), "date": datetime.date.today().isoformat(),
        "note": "DATALOADER.NUM_WORKERS 0, batch of the schedule, inference batch 1, trained "
                "weights"})
