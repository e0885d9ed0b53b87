"""--resume with train_net's Trainer restores the optimizer (momentum buffers) and the LR scheduler,
not only the iteration: a run checkpointed at iteration 3 and resumed ends exactly where the
uninterrupted run ends.

The model is a tiny linear one fed the same batch every step, so the data loader starting over on
resume changes nothing; the optimizer, scheduler, checkpointer and hooks are train_net's.
"""
import copy
import os
import shutil

import torch
from detectron2.engine import HookBase

from toy_training import TinyModel, toy_cfg, toy_trainer

X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]])
Y = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
ToyTrainer = toy_trainer(TinyModel, lambda: {"x": X, "y": Y})


class Snapshot(HookBase):
    """The optimizer's and scheduler's state and the weights after every step."""

    def __init__(self):
        self.states = {}

    def after_step(self):
        t = self.trainer
        self.states[t.iter] = (copy.deepcopy(t.optimizer.state_dict()),
                               copy.deepcopy(t.scheduler.state_dict()),
                               copy.deepcopy(t.model.state_dict()))


def make_cfg(output_dir):
    # Warmup over 2 iterations, LR x0.1 at iteration 4: the LR differs at every phase.
    return toy_cfg(output_dir, "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)",
                   "SOLVER.WARMUP_ITERS", "2", "SOLVER.BASE_LR", "0.05", "SOLVER.MOMENTUM", "0.9",
                   "SOLVER.CHECKPOINT_PERIOD", "3")


def momentum_buffers(optimizer_state):
    return [s["momentum_buffer"] for _, s in sorted(optimizer_state["state"].items())]


def assert_same(a, b):
    (opt_a, sched_a, model_a), (opt_b, sched_b, model_b) = a, b
    buffers_a, buffers_b = momentum_buffers(opt_a), momentum_buffers(opt_b)
    assert len(buffers_a) == len(buffers_b) == 2
    for x, y in zip(buffers_a, buffers_b):
        assert torch.allclose(x, y, atol=1e-7)
    assert sched_a["last_epoch"] == sched_b["last_epoch"]
    assert [g["lr"] for g in opt_a["param_groups"]] == [g["lr"] for g in opt_b["param_groups"]]
    for key in model_a:
        assert torch.allclose(model_a[key], model_b[key], atol=1e-7), key


def test_resume_restores_optimizer_and_scheduler(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    trainer = ToyTrainer(make_cfg(whole))
    seen = Snapshot()
    trainer.register_hooks([seen])
    trainer.train()
    assert sorted(seen.states) == list(range(6))
    assert os.path.isfile(whole / "model_0000002.pth")  # after 3 iterations
    # The uninterrupted run has momentum and a scheduler past warmup at the checkpoint.
    at_checkpoint = seen.states[2]
    assert at_checkpoint[1]["last_epoch"] == 3
    assert all(b.abs().sum() > 0 for b in momentum_buffers(at_checkpoint[0]))

    os.makedirs(resumed)
    shutil.copy(whole / "model_0000002.pth", resumed)
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    trainer = ToyTrainer(make_cfg(resumed))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3
    # Right after loading: the optimizer and scheduler are those of the checkpointed iteration.
    assert_same((trainer.optimizer.state_dict(), trainer.scheduler.state_dict(),
                 trainer.model.state_dict()), at_checkpoint)
    seen_resumed = Snapshot()
    trainer.register_hooks([seen_resumed])
    trainer.train()
    assert sorted(seen_resumed.states) == [3, 4, 5]
    for it in (3, 4, 5):
        assert_same(seen_resumed.states[it], seen.states[it])
