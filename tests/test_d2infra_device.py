"""The device rule of d2infra.engine.device, through train_net.build_cfg and train_net.main: a
config asking for CUDA on a machine without it stops with an error naming the key and the fix,
unless it allows the CPU (the embedded configs), which then runs there with a warning in the log's
first lines and at its end. torch.cuda.is_available is monkeypatched, so the tests mean the same
on a GPU machine."""
import os

import pytest
import torch

import train_net
from cli_runs import MASK_RCNN, SMALL, train_net_main
from d2infra import device_fallback_warning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = os.path.join(REPO, "configs", "baselines", "mask_rcnn_R_50_FPN_1x_coco.yaml")
COCO_RETINANET = os.path.join(REPO, "configs", "baselines", "retinanet_R_50_FPN_1x_coco.yaml")
SHAPES = os.path.join(REPO, MASK_RCNN)
NUCLEI = os.path.join(REPO, "configs", "nuclei", "r3cnn_naive_smallR_FPN_nuclei.yaml")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("config", [COCO, COCO_RETINANET])
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_paper_scale_config_without_cuda_is_an_error_naming_the_fix(no_cuda, config, device):
    with pytest.raises(RuntimeError) as e:
        train_net.build_cfg(config, ["MODEL.DEVICE", device])
    msg = str(e.value)
    assert msg.startswith(f"MODEL.DEVICE '{device}' but torch.cuda.is_available() is False (")
    assert f"torch {torch.__version__}" in msg  # which torch, for which CUDA
    if torch.version.cuda:  # the fix: a driver and torch build that match,
        assert f"built for CUDA {torch.version.cuda}" in msg
        assert f"install an NVIDIA driver that supports CUDA {torch.version.cuda}" in msg
    else:
        assert "is a CPU-only build" in msg and "install a CUDA build of torch" in msg
    assert "or pass MODEL.DEVICE cpu" in msg  # or the CPU on purpose
    assert "MODEL.ALLOW_CPU_FALLBACK is False" in msg


def test_cpu_only_torch_build_is_named_with_its_fix(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError) as e:
        train_net.build_cfg(COCO, [])
    assert f"(torch {torch.__version__} is a CPU-only build)" in str(e.value)
    assert "install a CUDA build of torch" in str(e.value)


def test_paper_scale_config_by_default_asks_for_cuda(no_cuda):
    """Detectron2's default MODEL.DEVICE is "cuda": the COCO config without opts is the error."""
    with pytest.raises(RuntimeError, match=r"MODEL.DEVICE 'cuda' but torch.cuda.is_available\(\)"):
        train_net.build_cfg(COCO, [])


@pytest.mark.parametrize("config", [SHAPES, NUCLEI])
def test_embedded_config_falls_back_with_a_warning(no_cuda, config):
    cfg = train_net.build_cfg(config, [])
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.ALLOW_CPU_FALLBACK
    warning = device_fallback_warning()
    assert warning.startswith("Running on device 'cpu', not MODEL.DEVICE 'cuda': "
                              "torch.cuda.is_available() is False (")
    assert "pass MODEL.DEVICE cpu" in warning


def test_the_cpu_asked_for_or_cuda_present_changes_nothing(no_cuda, monkeypatch):
    assert train_net.build_cfg(COCO, ["MODEL.DEVICE", "cpu"]).MODEL.DEVICE == "cpu"
    assert device_fallback_warning() is None
    assert train_net.build_cfg(SHAPES, ["MODEL.DEVICE", "cpu"]).MODEL.DEVICE == "cpu"
    assert device_fallback_warning() is None
    # A fallback is forgotten by the next config that needs none.
    train_net.build_cfg(SHAPES, [])
    assert device_fallback_warning() is not None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_net.build_cfg(COCO, []).MODEL.DEVICE == "cuda"
    assert train_net.build_cfg(SHAPES, []).MODEL.DEVICE == "cuda"
    assert device_fallback_warning() is None


def test_config_keys():
    """The key is False by default (a config of one's own stops) and True in both embedded
    bases."""
    assert train_net.build_cfg(COCO, ["MODEL.DEVICE", "cpu"]).MODEL.ALLOW_CPU_FALLBACK is False
    for base in ("Base-Shapes-RCNN-FPN.yaml", "Base-Shapes-RetinaNet.yaml"):
        cfg = train_net.build_cfg(os.path.join(REPO, "configs", base), ["MODEL.DEVICE", "cpu"])
        assert cfg.MODEL.ALLOW_CPU_FALLBACK is True, base


def test_fallback_warning_opens_and_closes_the_log(no_cuda, datasets_dir, tmp_path):
    """train_net.py on the embedded Mask R-CNN with Detectron2's default MODEL.DEVICE ("cuda") and
    no CUDA: it trains on the CPU, and the log file's first line and the run's last log line are
    the WARNING."""
    out = tmp_path / "out"
    log = train_net_main(datasets_dir, "--config-file", MASK_RCNN, *SMALL, "SOLVER.MAX_ITER", "1",
                         "DATASETS.TEST", "()", "OUTPUT_DIR", str(out))
    lines = [line for line in log.splitlines() if line.strip()]
    expected = "Running on device 'cpu', not MODEL.DEVICE 'cuda'"
    assert lines[-1].startswith(f"detectron2 WARNING: {expected}")
    with open(out / "log.txt") as f:
        first = f.readline()
    assert " detectron2 WARNING: " + expected in first
    assert (out / "model_final.pth").is_file()


@pytest.mark.parametrize("config", [SHAPES, NUCLEI])
def test_embedded_config_with_amp_does_not_fall_back(no_cuda, config):
    """Mixed precision needs CUDA (below): the fallback of an embedded config with
    SOLVER.AMP.ENABLED True stops at config time, naming the key and both fixes."""
    with pytest.raises(RuntimeError) as e:
        train_net.build_cfg(config, ["SOLVER.AMP.ENABLED", "True"])
    msg = str(e.value)
    assert msg.startswith("SOLVER.AMP.ENABLED True needs CUDA (Detectron2's AMPTrainer runs CUDA "
                          "autocast), but MODEL.DEVICE 'cuda' would fall back to the CPU: "
                          "torch.cuda.is_available() is False (")
    assert "Pass SOLVER.AMP.ENABLED False to train on the CPU" in msg
    fix = ("install a CUDA build of torch" if torch.version.cuda is None
           else f"install an NVIDIA driver that supports CUDA {torch.version.cuda}")
    assert f"to train on the GPU with mixed precision, {fix}" in msg
    assert device_fallback_warning() is None
    # without AMP, the same config falls back
    assert train_net.build_cfg(config, ["SOLVER.AMP.ENABLED", "False"]).MODEL.DEVICE == "cpu"


def test_detectron2_amp_trainer_needs_cuda(no_cuda):
    """Why the rule above: Detectron2's AMPTrainer (v0.6 and main) asserts CUDA at its first
    step, whatever the model's device. If a Detectron2 ran it on the CPU, this test would fail and
    the rule could become the CPU fallback with AMP."""
    from detectron2.engine import AMPTrainer

    class Model(torch.nn.Linear):
        def forward(self, x):
            return {"loss": super().forward(x).sum()}

    model = Model(2, 1)
    trainer = AMPTrainer(model, [torch.ones(1, 2)] * 2, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(AssertionError, match="CUDA is required for AMP training"):
        trainer.run_step()


def test_mixed_precision_on_the_cpu_stops_before_the_model_is_built():
    """``MODEL.DEVICE cpu`` asked for explicitly with ``SOLVER.AMP.ENABLED True``: Detectron2's
    AMPTrainer would assert CUDA at the first step; train_net's Trainer refuses it at once."""
    cfg = train_net.build_cfg(SHAPES, ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "True"])
    with pytest.raises(ValueError, match=r"SOLVER.AMP.ENABLED True needs CUDA .* 'cpu'"):
        train_net.Trainer(cfg)
