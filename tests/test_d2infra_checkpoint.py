"""d2infra/checkpoint.py: a checkpoint that cannot be read is an error naming the file; a good one
loads as with Detectron2's DetectionCheckpointer."""
import pickle

import pytest
import torch
from torch import nn

from d2infra.checkpoint import CheckpointReadError, D2InfraCheckpointer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _write_truncated(path, data: bytes) -> None:
    path.write_bytes(data[: len(data) // 2])


def test_truncated_pth_names_the_file(tmp_path):
    saved = _model()
    good = tmp_path / "model_good.pth"
    torch.save({"model": saved.state_dict()}, good)
    bad = tmp_path / "model_final.pth"
    _write_truncated(bad, good.read_bytes())

    # Control: the complete file loads the saved weights (torch.save's tensors).
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    D2InfraCheckpointer(model).load(str(good))
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)

    with pytest.raises(CheckpointReadError, match="truncated or corrupt") as e:
        D2InfraCheckpointer(model).load(str(bad))
    assert str(bad) in str(e.value) and f"({bad.stat().st_size} bytes)" in str(e.value)
    assert isinstance(e.value, RuntimeError)  # what torch raises, for callers that catch it


def test_truncated_last_checkpoint_on_resume_names_the_file_and_last_checkpoint(tmp_path):
    torch.save({"model": _model().state_dict(), "iteration": 9}, tmp_path / "model_0000009.pth")
    _write_truncated(tmp_path / "model_0000009.pth", (tmp_path / "model_0000009.pth").read_bytes())
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(CheckpointReadError) as e:
        D2InfraCheckpointer(_model(), save_dir=str(tmp_path)).resume_or_load("", resume=True)
    message = str(e.value)
    assert str(tmp_path / "model_0000009.pth") in message and "truncated or corrupt" in message
    assert str(tmp_path / "last_checkpoint") in message


def test_truncated_pkl_names_the_file(tmp_path):
    """Detectron2 reads .pkl files (model zoo, Caffe2) with pickle, not torch.load."""
    data = pickle.dumps({"model": {"w": torch.zeros(3).numpy()}, "__author__": "test"})
    bad = tmp_path / "R-50.pkl"
    _write_truncated(bad, data)
    with pytest.raises(CheckpointReadError, match="truncated or corrupt") as e:
        D2InfraCheckpointer(_model()).load(str(bad))
    assert str(bad) in str(e.value)


def test_missing_file_is_still_detectron2s_error(tmp_path):
    """Only unreadable files are redefined: a missing MODEL.WEIGHTS stays fvcore's check."""
    with pytest.raises(AssertionError, match="not found"):
        D2InfraCheckpointer(_model()).load(str(tmp_path / "no_such.pth"))
