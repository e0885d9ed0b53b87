#!/usr/bin/env python
"""One command for a CUDA machine: do the headline embedded configs train and run there, with and
without mixed precision, and how fast?

    python benchmarks/gpu_check.py [--iters 20] [--warmup 3] [--images 20] [--models NAME ...]

For each headline embedded config (Mask R-CNN, Cascade Mask R-CNN, R^3-CNN naive, RetinaNet,
IoU-aware RetinaNet, Faster R-CNN, Offset-Bin Faster R-CNN; ``configs/*/*_smallR_FPN_shapes.yaml``)
and each of AMP off and on (``torch.autocast`` fp16 with a ``GradScaler``, as Detectron2's
``AMPTrainer``), it trains ``--iters`` iterations after ``--warmup`` untimed ones, then, AMP off,
times the inference of ``--images`` test images one by one. It prints one Markdown table:
seconds per iteration (median, ``torch.cuda.synchronize()`` around each step), peak memory
(``torch.cuda.max_memory_allocated``), whether every loss was finite, and host syncs per training
step (forward and backward) and per inference image, counted by ``host_syncs.py``'s
``HostSyncCounter`` as in its table; inference ms per image with its ratio to the pair's baseline
(R^3-CNN against Cascade Mask R-CNN, IoU-aware against RetinaNet, Offset-Bin against Faster
R-CNN).

It needs torch, torchvision and Detectron2 only, not ``scripts/setup.sh``: when this repository's
packages are not installed, it puts ``projects/`` on ``sys.path`` itself. The shapes datasets are
generated on first use under ``$DETECTRON2_DATASETS`` (default ``./datasets``). Without a CUDA
device it says so and exits with status 0.
"""
import argparse
import contextlib
import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time
from typing import List, NamedTuple, Optional, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Model(NamedTuple):
    name: str
    config: str  # relative to the repository
    baseline: Optional[str] = None  # the pair's baseline, by name


MODELS = [
    Model("cascade_mask_rcnn", "configs/baselines/cascade_mask_rcnn_smallR_FPN_shapes.yaml"),
    Model("r3cnn_naive", "configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml", "cascade_mask_rcnn"),
    Model("retinanet", "configs/baselines/retinanet_smallR_FPN_shapes.yaml"),
    Model("iou_aware_retinanet", "configs/iou_aware/iou_aware_retinanet_smallR_FPN_shapes.yaml",
          "retinanet"),
    Model("faster_rcnn", "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml"),
    Model("offset_bin_faster_rcnn",
          "configs/offset_bin/offset_bin_faster_rcnn_smallR_FPN_shapes.yaml", "faster_rcnn"),
    Model("mask_rcnn", "configs/baselines/mask_rcnn_smallR_FPN_shapes.yaml"),
]


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
def add_project_path() -> None:
    """Make ``train_net`` and the packages of ``projects/`` importable: the repository on
    ``sys.path``, and ``projects/`` too when they are not installed (no ``scripts/setup.sh``)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    if importlib.util.find_spec("d2infra") is None:
        sys.path.insert(0, os.path.join(REPO, "projects"))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: bool):
    """Detectron2's AMPTrainer's autocast: fp16 on CUDA; bfloat16 for the CPU twin."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def measure(config: str, device: str, amp: bool, iters: int, warmup: int, images: int,
            opts: Sequence[str] = ()) -> dict:
    """Train ``config`` (relative to the repository, with ``opts`` on top) on ``device`` for
    ``warmup`` + ``iters`` iterations (AMP or not), then count one more step's host syncs; with
    ``images`` > 0, time and count the inference of test images, one per batch, after one untimed
    image.

    Returns a dict: ``s_per_iter`` (median of the timed steps), ``peak_mib`` (CUDA only, else
    None), ``finite`` (every step's total loss finite), ``syncs_per_step``, ``sync_names``, and
    with ``images`` > 0 ``infer_ms`` (median) and ``syncs_per_image``."""
    add_project_path()
    from detectron2.data import build_detection_test_loader
    from detectron2.utils.events import EventStorage
    from host_syncs import HostSyncCounter, mark_host

    from train_net import Trainer, build_cfg

    cfg = build_cfg(os.path.join(REPO, config), [
        "MODEL.DEVICE", device, "SOLVER.AMP.ENABLED", str(amp), "DATALOADER.NUM_WORKERS", "0",
        *opts])
    dev = torch.device(cfg.MODEL.DEVICE)
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda") if amp and dev.type == "cuda" else None
    batches = iter(Trainer.build_train_loader(cfg))
    finite = torch.ones((), dtype=torch.bool, device=dev)

    def step(counter=None) -> None:
        """One iteration; ``counter`` (a HostSyncCounter) sees its forward and backward."""
        nonlocal finite
        batch = next(batches)
        optimizer.zero_grad()
        with counter or contextlib.nullcontext():
            mark_host(batch)  # the loader's tensors, on the host
            with _autocast(dev, amp):
                losses = sum(model(batch).values())
            (scaler.scale(losses) if scaler is not None else losses).backward()
        finite = finite & torch.isfinite(losses.detach())
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    model.train()
    with EventStorage(0) as storage:
        for i in range(warmup + iters):
            storage.iter = i
            _synchronize(dev)
            start = time.perf_counter()
            step()
            _synchronize(dev)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        storage.iter = warmup + iters
        counter = HostSyncCounter()
        step(counter)
    out = {"s_per_iter": statistics.median(times) if times else float("nan"),
           "peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
           "finite": bool(finite.item()), "syncs_per_step": counter.total,
           "sync_names": dict(counter.counts)}
    if images > 0:
        out.update(_inference(model, build_detection_test_loader(cfg, cfg.DATASETS.TEST[0]),
                              dev, images, HostSyncCounter, mark_host))
    return out


def _inference(model: torch.nn.Module, loader, dev: torch.device, images: int,
               counter_class, mark_host) -> dict:
    """Median ms per image of ``images`` timed batches of one image after one untimed, going
    through ``loader`` again if it is shorter; and the host syncs of one more image
    (``counter_class``, with the batch marked as on the host by ``mark_host``)."""
    model.eval()
    times: List[float] = []
    seen, counted = 0, None
    with torch.no_grad():
        while counted is None:
            before = seen
            for batch in loader:
                if len(times) >= images:
                    with counter_class() as counter:
                        mark_host(batch)
                        model(batch)
                    counted = counter.total
                    break
                _synchronize(dev)
                start = time.perf_counter()
                model(batch)
                _synchronize(dev)
                if seen >= 1:
                    times.append(time.perf_counter() - start)
                seen += 1
            if seen == before and counted is None:
                raise ValueError("the test loader yields no batch")
    return {"infer_ms": statistics.median(times) * 1e3, "syncs_per_image": counted}


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------
def format_table(rows: List[dict]) -> str:
    """One Markdown table of ``rows`` (dicts of :func:`measure` plus ``model``, ``amp`` and
    ``baseline``); a pair member's inference is divided by its baseline's (AMP off)."""
    infer = {r["model"]: r["infer_ms"] for r in rows if r.get("infer_ms") is not None}
    lines = ["| model | AMP | s/iter | peak MiB | finite losses | host syncs/step "
             "| inference ms/img | x baseline | host syncs/img |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "-"
        ms = r.get("infer_ms")
        base = infer.get(r.get("baseline") or r["model"])
        ratio = f"{ms / base:.2f}" if ms is not None and base else "-"
        lines.append(
            f"| {r['model']} | {'on' if r['amp'] else 'off'} | {r['s_per_iter']:.3f} | {peak} | "
            f"{'yes' if r['finite'] else 'NO'} | {r['syncs_per_step']} | "
            f"{f'{ms:.1f}' if ms is not None else '-'} | {ratio} | "
            f"{r['syncs_per_image'] if r.get('syncs_per_image') is not None else '-'} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iters", type=int, default=20, help="timed training iterations per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations before them")
    p.add_argument("--images", type=int, default=20, help="timed inference images (AMP off)")
    p.add_argument("--models", nargs="+", choices=[m.name for m in MODELS],
                   default=[m.name for m in MODELS])
    a = p.parse_args(argv)
    if a.iters < 1:
        p.error(f"--iters must be >= 1, got {a.iters}")
    if not torch.cuda.is_available():
        cuda = torch.version.cuda or "none: a CPU-only build"
        print(f"gpu_check: no CUDA device found (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, built for CUDA {cuda}): nothing to check on this machine.")
        return 0
    print(f"command: python {' '.join(sys.argv)}\nmachine: {platform.machine()}, "
          f"{torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA {torch.version.cuda})"
          f"\ndate: {datetime.date.today().isoformat()}\n", flush=True)
    rows = []
    for m in (m for m in MODELS if m.name in a.models):
        for amp in (False, True):
            print(f"[gpu_check] {m.name}, AMP {'on' if amp else 'off'}", flush=True)
            r = measure(m.config, "cuda", amp, a.iters, a.warmup, 0 if amp else a.images)
            rows.append(dict(r, model=m.name, amp=amp, baseline=m.baseline))
    print("\n" + format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
