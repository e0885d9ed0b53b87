"""Two CPU processes (gloo) through d2infra's launch and train_net's Trainer: the gradients are
those of one process on the whole batch (DDP synchronises them; a bare model would keep each
process's half), and ImbalanceStatsHook's totals are the sums over both processes.

The model is a tiny linear one with a deterministic loss, so the reference is plain autograd on
the whole batch in this process.
"""
import json
import os
from datetime import timedelta

import torch
from detectron2.utils import comm

from d2infra.engine import launch
from imbalance.diagnostics import log_sampling_stats
from toy_training import TinyModel, toy_cfg, toy_trainer

WORLD = 2
# The whole batch: 4 samples of 3 features and a target each; process r trains on samples 2r, 2r+1.
INPUTS = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0], [-2.0, 0.0, 1.0], [4.0, 1.0, 0.5]])
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0], [3.0, -2.0]])
# What each process logs for the diagnostics: IoUs of its positives and its negatives' count.
RANK_STATS = {0: ([0.55], 5), 1: ([0.75, 0.97], 9)}


class LoggingModel(TinyModel):
    """TinyModel that also logs this process's sampling statistics at each training step."""

    def forward(self, batch):
        ious, num_bg = RANK_STATS[comm.get_rank()]
        log_sampling_stats("toy", torch.tensor(ious), len(ious), num_bg)
        return super().forward(batch)


def half_batch():
    rows = [2 * comm.get_rank(), 2 * comm.get_rank() + 1]
    return {"x": INPUTS[rows], "y": TARGETS[rows]}


def _worker(output_dir: str) -> None:
    """One process: train_net's Trainer for one step on this process's half of the batch."""
    cfg = toy_cfg(output_dir, "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "4",
                  "SOLVER.BASE_LR", "0.1", "SOLVER.WARMUP_ITERS", "0")
    trainer = toy_trainer(LoggingModel, half_batch)(cfg)
    trainer.train()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}
    torch.save(grads, os.path.join(output_dir, f"grads_rank{comm.get_rank()}.pth"))


def test_two_processes_average_gradients_and_sum_the_diagnostics(tmp_path):
    launch(_worker, WORLD, dist_url="auto", args=(str(tmp_path),), timeout=timedelta(minutes=2))

    # Reference: one process, the whole batch.
    model = TinyModel()
    ((model.linear(INPUTS) - TARGETS) ** 2).mean().backward()
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"grads_rank{rank}.pth")
        names = sorted(grads)
        assert [n.replace("module.", "") for n in names] == ["linear.bias", "linear.weight"]
        for name in names:
            expected = dict(model.named_parameters())[name.replace("module.", "")].grad
            assert torch.allclose(grads[name], expected, atol=1e-6), (rank, name)
    # Each half's own gradient differs from the whole batch's (else the test could not fail).
    half = TinyModel()
    ((half.linear(INPUTS[:2]) - TARGETS[:2]) ** 2).mean().backward()
    assert not torch.allclose(half.linear.weight.grad, model.linear.weight.grad, atol=1e-3)

    # ImbalanceStatsHook: totals over both processes, by hand from RANK_STATS.
    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    last = {k: v for row in rows for k, v in row.items() if k.startswith("imbalance_cum/toy/")}
    assert last["imbalance_cum/toy/num_fg"] == 1 + 2
    assert last["imbalance_cum/toy/num_bg"] == 5 + 9
    assert last["imbalance_cum/toy/num_iters"] == 2  # one logging iteration on each process
    assert last["imbalance_cum/toy/iou_0.55"] == 1
    assert last["imbalance_cum/toy/iou_0.75"] == 1
    assert last["imbalance_cum/toy/iou_0.95"] == 1
    assert last["imbalance_cum/toy/iou_0.50"] == 0
    assert last["imbalance_cum/toy/fg_bg_ratio"] == 3 / 14
