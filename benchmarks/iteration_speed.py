#!/usr/bin/env python
"""Seconds per training iteration of configs on this machine, with their real data loader.

    python benchmarks/iteration_speed.py --iters 30 --warmup 5 [--inference N] [--rounds R] \
        [--weights W1 --weights W2 ...] CONFIG [CONFIG ...] [--opts K V ...]

Builds each config's model and train loader as train_net.py does, runs ``warmup`` iterations, then
times ``iters`` forward+backward+SGD steps, and prints one Markdown row per config with the command,
machine and date (and appends them as JSON lines to ``--out``). ``--inference N`` also times the
inference of N images (batch 1, after one untimed image) of the config's first test set with the
model as trained by those steps. ``--weights`` gives one checkpoint per config: the model starts
from it and its inference is timed on it (reloaded after the training steps); with ``--iters 0``
only the inference is timed. ``--rounds R`` times every config once in the given order, then once
in reverse, and so on R times, and reports medians over all rounds (drift of a shared machine hits
all configs alike).
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_net import Trainer, setup  # noqa: E402


def _synchronize(model: torch.nn.Module) -> None:
    """Wait for the model's device (CUDA kernels run asynchronously; a clock read right after a
    step would time the kernel launches, not the step). Nothing to wait for on the CPU."""
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cuda":
        torch.cuda.synchronize(param.device)


def build_training(config_file: str, opts: list):
    """``(cfg, model, optimizer, train loader)`` of a config as ``train_net.py`` builds them, with
    no loader workers (to time or profile the step itself) and its training sets generated."""
    from d2infra.data import ensure_generated, register_coco_format_datasets
    from train_net import build_cfg

    cfg = build_cfg(config_file, ["DATALOADER.NUM_WORKERS", "0"] + list(opts))
    register_coco_format_datasets(cfg)
    for name in cfg.DATASETS.TRAIN:
        ensure_generated(name)
    model = Trainer.build_model(cfg)
    return cfg, model, Trainer.build_optimizer(cfg, model), Trainer.build_train_loader(cfg)


def time_training_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader,
                        warmup: int, iters: int) -> List[float]:
    """Seconds of each of ``iters`` training steps (forward, backward, SGD step) after ``warmup``
    untimed ones; fetching the batch from ``loader`` is not timed. On CUDA the clock is read after
    ``torch.cuda.synchronize()``, so a step's time includes its kernels."""
    from detectron2.utils.events import EventStorage

    batches = iter(loader)
    model.train()
    times = []
    with EventStorage(0):
        for i in range(warmup + iters):
            batch = next(batches)
            _synchronize(model)
            start = time.perf_counter()
            losses = sum(model(batch).values())
            optimizer.zero_grad()
            losses.backward()
            optimizer.step()
            _synchronize(model)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def time_inference(model: torch.nn.Module, loader, images: int, warmup: int = 1) -> List[float]:
    """Seconds of the inference of each of ``images`` batches of ``loader`` after ``warmup``; a
    test set with fewer batches (nuclei_val is one image) is gone through again until they are
    all timed."""
    model.eval()
    times: List[float] = []
    seen = 0
    with torch.no_grad():
        while len(times) < images:
            before = seen
            for batch in loader:
                if len(times) >= images:
                    break
                _synchronize(model)
                start = time.perf_counter()
                model(batch)
                _synchronize(model)
                if seen >= warmup:
                    times.append(time.perf_counter() - start)
                seen += 1
            if seen == before:
                raise ValueError("time_inference: the test loader yields no batch")
    return times


def time_config(config_file: str, iters: int, warmup: int, opts: list, images: int = 0,
                weights: str = "") -> dict:
    """Training-step times (none if ``iters`` is 0) and, for ``images`` > 0, inference times of
    one config; from the checkpoint ``weights`` if given (inference on it as loaded)."""
    from detectron2.checkpoint import DetectionCheckpointer

    args = argparse.Namespace(config_file=config_file, opts=list(opts) + [
        "OUTPUT_DIR", "/tmp/iteration_speed", "SOLVER.MAX_ITER", str(max(iters + warmup, 1))],
        eval_only=False, resume=False, num_gpus=1)
    cfg = setup(args)
    model = Trainer.build_model(cfg)
    if weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"--weights: no checkpoint file {weights!r} for {config_file}")
        DetectionCheckpointer(model).load(weights)
    times = []
    if iters > 0:
        times = sorted(time_training_steps(model, Trainer.build_optimizer(cfg, model),
                                           Trainer.build_train_loader(cfg), warmup, iters))
        if weights:
            DetectionCheckpointer(model).load(weights)  # inference on the given weights
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {"config": config_file, "iters": iters, "batch": cfg.SOLVER.IMS_PER_BATCH,
           "params": params, "train_times": times, "weights": weights or None}
    if images:
        from detectron2.data import build_detection_test_loader

        out["infer_times"] = sorted(time_inference(
            model, build_detection_test_loader(cfg, cfg.DATASETS.TEST[0]), images))
    return out


def _median(values: List[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--inference", type=int, default=0, help="also time N inference images")
    p.add_argument("--rounds", type=int, default=1,
                   help="times the configs in order, then in reverse, ... R times in all")
    p.add_argument("--weights", action="append", default=[],
                   help="a checkpoint; once per config, in the configs' order (inference timed on "
                        "it; with --iters 0 only that)")
    p.add_argument("--out", default="benchmarks/results/iteration_speed.jsonl")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    a = p.parse_args()
    if a.weights and len(a.weights) != len(a.configs):
        p.error(f"--weights is needed once per config: {len(a.weights)} checkpoints for "
                f"{len(a.configs)} configs")
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    if a.iters <= 0 and not a.inference:
        p.error("--iters 0 times nothing without --inference N")
    weights = dict(zip(a.configs, a.weights))
    meta = {"command": "python " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads"}
    print(f"command: {meta['command']}\nmachine: {meta['machine']}\ndate: {meta['date']}\n")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    runs = {c: [] for c in a.configs}
    for rnd in range(a.rounds):
        for c in a.configs if rnd % 2 == 0 else list(reversed(a.configs)):
            runs[c].append(time_config(c, a.iters, a.warmup, a.opts, a.inference,
                                       weights.get(c, "")))
    base = None
    print("| config | s/iter (median) | s/iter (mean) | x first | inference ms/img (median) "
          "| x first | batch | params |\n|---|---|---|---|---|---|---|---|")
    for c in a.configs:
        train = [t for r in runs[c] for t in r["train_times"]]
        infer = [t for r in runs[c] for t in r.get("infer_times", [])]
        r = {"config": c, "sec_per_iter_median": _median(train),
             "sec_per_iter_mean": sum(train) / len(train) if train else float("nan"),
             "iters": len(train), "weights": runs[c][0]["weights"],
             "infer_ms_per_image_median": _median(infer) * 1e3 if infer else None,
             "images": len(infer), "batch": runs[c][0]["batch"], "params": runs[c][0]["params"],
             **meta}
        base = base or r
        infer_cell, infer_ratio = "-", "-"
        if infer:
            infer_cell = f"{r['infer_ms_per_image_median']:.1f}"
            infer_ratio = f"{r['infer_ms_per_image_median'] / base['infer_ms_per_image_median']:.2f}"
        print(f"| {c} | {r['sec_per_iter_median']:.3f} | {r['sec_per_iter_mean']:.3f} | "
              f"{r['sec_per_iter_median'] / base['sec_per_iter_median']:.2f} | {infer_cell} | "
              f"{infer_ratio} | {r['batch']} | {r['params'] / 1e6:.2f}M |", flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
