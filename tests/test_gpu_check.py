"""benchmarks/gpu_check.py: its exit without CUDA (as a fresh process), one measured training and
inference of an embedded config, and its table. The CUDA case is skipped without CUDA and asserts
the contracts of its CPU twin. (Its host-sync counter is host_syncs.py's.)"""
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import gpu_check  # noqa: E402
from cli_runs import SMALL  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA: no 'no CUDA' exit")
def test_without_cuda_it_says_so_and_exits_0():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"),
                           "--iters", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("gpu_check: no CUDA device found (torch.cuda.is_available() is "
                                  "False; torch ")
    assert "|" not in proc.stdout  # no table


@pytest.mark.parametrize("device", DEVICES)
def test_measure_trains_and_runs_an_embedded_config(device, datasets_dir, monkeypatch):
    """The embedded Faster R-CNN on the mini splits: 1 timed step after 1 warm-up, then 1 timed
    inference image (after one untimed); AMP on (bfloat16 autocast on the CPU, fp16 with a
    GradScaler on CUDA)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets_dir))
    r = gpu_check.measure("configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml", device,
                          amp=True, iters=1, warmup=1, images=1, opts=SMALL)
    assert r["finite"] is True
    assert r["s_per_iter"] > 0 and r["infer_ms"] > 0
    # RPN and RoI sampling read data-dependent sizes (nonzero, masks): some syncs in each step
    assert r["syncs_per_step"] > 0 and r["syncs_per_step"] == sum(r["sync_names"].values())
    assert r["syncs_per_image"] > 0
    assert (r["peak_mib"] > 0) if device == "cuda" else (r["peak_mib"] is None)


def test_table():
    rows = [
        dict(model="retinanet", amp=False, baseline=None, s_per_iter=0.1234, peak_mib=512.4,
             finite=True, syncs_per_step=40, infer_ms=20.0, syncs_per_image=7),
        dict(model="retinanet", amp=True, baseline=None, s_per_iter=0.1, peak_mib=300.0,
             finite=False, syncs_per_step=41, infer_ms=None, syncs_per_image=None),
        dict(model="iou_aware_retinanet", amp=False, baseline="retinanet", s_per_iter=0.2,
             peak_mib=None, finite=True, syncs_per_step=45, infer_ms=25.0, syncs_per_image=8),
    ]
    assert gpu_check.format_table(rows).splitlines() == [
        "| model | AMP | s/iter | peak MiB | finite losses | host syncs/step | inference ms/img "
        "| x baseline | host syncs/img |",
        "|---|---|---|---|---|---|---|---|---|",
        "| retinanet | off | 0.123 | 512 | yes | 40 | 20.0 | 1.00 | 7 |",
        "| retinanet | on | 0.100 | 300 | NO | 41 | - | - | - |",
        "| iou_aware_retinanet | off | 0.200 | - | yes | 45 | 25.0 | 1.25 | 8 |",
    ]


def test_projects_dir_is_added_when_the_packages_are_not_installed(monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != REPO])
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None)
    gpu_check.add_project_path()
    assert sys.path[:2] == [os.path.join(REPO, "projects"), REPO]
