import os

# One torch (OpenMP) thread in the tests and in the processes they start, unless OMP_NUM_THREADS is
# set: their tensors are small, and on 2 busy cores OpenMP threads that wait by spinning took
# 2-3x the CPU time and wall time of one thread (tests/README.md, "Time"). Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from cli_runs import MASK_RCNN, SMALL, run_script  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def datasets_dir(tmp_path_factory):
    """``$DETECTRON2_DATASETS`` of the train_net.py and demo.py tests: the shapes splits are
    generated there once, on first use."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="session")
def mask_rcnn_trained(datasets_dir, tmp_path_factory):
    """(output dir, log) of ``train_net.py --num-gpus 2`` as a fresh process (two CPU processes,
    gloo): the embedded Mask R-CNN trained 4 iterations on shapes_mini_train (a checkpoint every
    2), then evaluated on shapes_mini_val. Shared by test_train_net.py and test_demo.py; a test
    that writes into the output dir copies it first."""
    out = tmp_path_factory.mktemp("mask_rcnn_trained")
    proc = run_script(datasets_dir, "train_net.py", "--config-file", MASK_RCNN, "--num-gpus", "2",
                      *SMALL, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                      "OUTPUT_DIR", str(out))
    return out, proc.stdout + proc.stderr
