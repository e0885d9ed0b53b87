"""Checkpoints across Detectron2 versions, and loading them without pickle's code execution.

Detectron2 main's ``DefaultTrainer.state_dict`` adds ``_trainer`` (the optimizer state) to v0.6's
``iteration`` and ``hooks``; main's ``load_state_dict`` then requires it. train_net.Trainer writes
main's layout under both versions and resumes from either (``upgrade_trainer_state``); that it
resumes main's layout exactly is tests/test_resume.py.
"""
import logging

import pytest
import torch
from detectron2.engine import DefaultTrainer
from toy_training import TinyModel, toy_cfg, toy_trainer

from train_net import upgrade_trainer_state

BATCH = {"x": torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]]), "y": torch.eye(2)}
ToyTrainer = toy_trainer(TinyModel, lambda: BATCH)


def make_cfg(output_dir):
    # 6 iterations, warmup over 2, a checkpoint every 3.
    return toy_cfg(output_dir, "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "2",
                   "SOLVER.MOMENTUM", "0.9", "SOLVER.CHECKPOINT_PERIOD", "3")


def test_upgrade_of_a_v06_state_adds_the_fresh_inner_state():
    hooks = {"LRScheduler": {"base_lrs": [0.02], "last_epoch": 8}}
    v06 = {"iteration": 7, "hooks": hooks}  # v0.6's TrainerBase.state_dict
    fresh = {"iteration": 0, "hooks": {}, "optimizer": {"state": {}, "param_groups": [{"lr": 1}]}}
    up = upgrade_trainer_state(v06, fresh)
    assert up == {"iteration": 7, "hooks": hooks,
                  "_trainer": {"iteration": 7, "hooks": {},
                               "optimizer": {"state": {}, "param_groups": [{"lr": 1}]}}}
    assert v06 == {"iteration": 7, "hooks": hooks}  # not modified in place


def test_upgrade_keeps_a_main_state_and_rejects_other_dicts():
    main = {"iteration": 3, "hooks": {}, "_trainer": {"iteration": 3, "optimizer": {"state": {1: 2}}}}
    assert upgrade_trainer_state(main, {"optimizer": {}}) is main
    with pytest.raises(ValueError, match="not a Detectron2 trainer state.*'model'"):
        upgrade_trainer_state({"model": {}}, {})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """train_net's Trainer, checkpointer and hooks on the tiny model of toy_training: 6
    iterations, checkpointed after the third (warmup done, momentum non-zero)."""
    out = tmp_path_factory.mktemp("whole")
    ToyTrainer(make_cfg(out)).train()
    return out / "model_0000002.pth"


def _resume(ckpt_state, tmp_path):
    """A new trainer resuming from ``ckpt_state`` saved as the last checkpoint of ``tmp_path``."""
    torch.save(ckpt_state, tmp_path / "model_0000002.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    trainer = ToyTrainer(make_cfg(tmp_path))
    trainer.resume_or_load(resume=True)
    return trainer


def test_checkpoint_is_in_main_layout(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["trainer"]
    assert state["iteration"] == 2 and state["_trainer"]["iteration"] == 2
    assert all(v["momentum_buffer"].abs().sum() > 0
               for v in state["_trainer"]["optimizer"]["state"].values())


def test_v06_checkpoint_resumes_with_a_clear_warning(checkpoint, tmp_path, caplog):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # What Detectron2 v0.6's DefaultTrainer writes: TrainerBase.state_dict, no '_trainer'.
    ckpt["trainer"] = {k: v for k, v in ckpt["trainer"].items() if k != "_trainer"}
    if "state_dict" in vars(DefaultTrainer):  # Detectron2 main: its own loader cannot resume it
        stock = ToyTrainer(make_cfg(tmp_path / "stock"))
        with pytest.raises(KeyError, match="_trainer"):
            DefaultTrainer.load_state_dict(stock, ckpt["trainer"])
    with caplog.at_level(logging.WARNING, logger="detectron2"):
        trainer = _resume(ckpt, tmp_path)
    assert "without optimizer state" in caplog.text and "v0.6" in caplog.text
    assert trainer.start_iter == 3  # the iteration and the LR schedule are restored
    assert trainer.scheduler.last_epoch == ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"]
    assert trainer.optimizer.state_dict()["state"] == {}  # a fresh optimizer


def test_resume_with_another_optimizer_is_a_clear_error(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    groups = ckpt["trainer"]["_trainer"]["optimizer"]["param_groups"]
    groups.append(dict(groups[0], params=[10 ** 6]))  # a parameter group this model lacks
    with pytest.raises(ValueError, match="does not fit this model's optimizer.*MODEL.WEIGHTS"):
        _resume(ckpt, tmp_path)


def test_checkpoints_load_without_pickle_code(checkpoint):
    # Detectron2 loads .pkl weights with pickle, which can run code. The .pth checkpoints that
    # train_net writes (model, trainer and hook states) hold only tensors, numbers, strings and
    # containers, so torch.load's restricted unpickler (weights_only=True) loads them.
    for path in (checkpoint, checkpoint.parent / "model_final.pth"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert {"model", "trainer", "iteration"} <= ckpt.keys()
        assert all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())
