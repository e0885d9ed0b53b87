"""Detectron2's checkpointer, with an error naming the file when a checkpoint cannot be read."""
import os
import pickle
from typing import Any, Dict

from detectron2.checkpoint import DetectionCheckpointer


class CheckpointReadError(RuntimeError):
    """A checkpoint file exists but cannot be read: truncated (an interrupted save or copy) or
    corrupt. A ``RuntimeError``, as torch's own error for a damaged file is."""


class D2InfraCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose ``_load_file`` names the file it could not read.

    Only reading the file is redefined; what is read (Detectron2 ``.pth``, model-zoo and Caffe2
    ``.pkl``, pycls ``.pyth``), and how it is matched to the model, stay Detectron2's. Without it,
    a truncated ``MODEL.WEIGHTS`` or ``last_checkpoint`` file ends in torch's ``PytorchStreamReader
    failed reading zip archive``, with the file's path only in an earlier log line.
    """

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            return super()._load_file(filename)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise CheckpointReadError(self._unreadable_message(filename, e)) from e

    def _unreadable_message(self, filename: str, error: Exception) -> str:
        size = f"{os.path.getsize(filename)} bytes" if os.path.isfile(filename) else "size unknown"
        cause = str(error).strip().split("\n")[0].split(". ")[0]  # torch's first sentence
        if "weights only load failed" in cause.lower():  # torch.load(weights_only=True) refused it
            what = "torch.load refused an object in it"
        else:
            what = "it looks truncated or corrupt"
        msg = (f"cannot read the checkpoint {filename!r} ({size}): {what} "
               f"({type(error).__name__}: {cause})")
        if self.save_dir and self.has_checkpoint() and self.get_checkpoint_file() == filename:
            # --resume read it from last_checkpoint
            msg += (f"; it is the one {os.path.join(self.save_dir, 'last_checkpoint')} names: to "
                    "resume from an earlier one, write the file name of an earlier model_*.pth "
                    "there")
        return msg
