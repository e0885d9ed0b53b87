"""A tiny linear model trained by train_net's Trainer, for the tests of the training machinery
(two processes, resume) whose reference is plain autograd on the same model."""
import os
from typing import Callable, Dict, Type

import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyModel(nn.Module):
    """Linear regression 3 -> 2, seeded; loss: the mean squared error over the batch
    ``{"x": (N, 3), "y": (N, 2)}``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 2)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {"loss_mse": ((self.linear(batch["x"]) - batch["y"]) ** 2).mean()}


def toy_trainer(model_cls: Type[nn.Module], batch: Callable[[], Dict[str, torch.Tensor]]):
    """``train_net.Trainer`` with ``model_cls()`` as the model and ``batch()`` as every step's
    data; no evaluation. Its optimizer, scheduler, checkpointer and hooks are train_net's."""
    import train_net

    class ToyTrainer(train_net.Trainer):
        @classmethod
        def build_model(cls, cfg):
            return model_cls()

        @classmethod
        def build_train_loader(cls, cfg):
            while True:
                yield batch()

        @classmethod
        def test(cls, cfg, model, evaluators=None):
            return {}

    return ToyTrainer


def toy_cfg(output_dir: str, *opts: str):
    """A CPU config for :func:`toy_trainer`: the embedded base config's solver with ``opts``."""
    import train_net

    return train_net.build_cfg(os.path.join(REPO, "configs", "Base-Shapes-RCNN-FPN.yaml"), [
        "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()", "OUTPUT_DIR", str(output_dir), *opts])
