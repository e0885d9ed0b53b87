"""demo.py: draws a briefly trained Mask R-CNN's predictions onto an image of the shapes dataset,
at the input's size; clear errors for a missing or unreadable input."""
import shutil

import cv2
import numpy as np
import pytest

from cli_runs import MASK_RCNN as CONFIG
from cli_runs import SMALL, detectron2_log, run_script


@pytest.fixture(scope="module")
def trained(mask_rcnn_trained, datasets_dir):
    """(datasets dir, weights) of a Mask R-CNN trained for 4 iterations (conftest.py)."""
    return datasets_dir, mask_rcnn_trained[0] / "model_final.pth"


@pytest.fixture(scope="module")
def image(trained, tmp_path_factory):
    """A non-square crop of a shapes validation image (so width and height are both checked)."""
    datasets, _ = trained
    val = datasets / "shapes" / "mini_val"
    src = sorted(val.rglob("*.png")) + sorted(val.rglob("*.jpg"))
    img = cv2.imread(str(src[0]))[:, :200]
    path = tmp_path_factory.mktemp("inputs") / "crop.png"
    cv2.imwrite(str(path), img)
    return path, img


def demo_args(trained, image_path, out_dir, *extra):
    _, weights = trained
    return ["--config-file", CONFIG, "--input", str(image_path), "--output", str(out_dir), *extra,
            "--opts", "MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            *SMALL]


def demo(trained, image_path, out_dir, *extra):
    """demo.py as a fresh process (its exit status and messages)."""
    return run_script(trained[0], "demo.py", *demo_args(trained, image_path, out_dir, *extra),
                      check=False)


def demo_main(trained, image_path, out_dir, *extra):
    """demo.py's main in this process (cli_runs.py)."""
    import demo as demo_py

    with detectron2_log(trained[0]):
        return demo_py.main(demo_args(trained, image_path, out_dir, *extra))


def test_demo_draws_boxes_at_the_input_size(trained, image, tmp_path):
    path, img = image
    assert demo_main(trained, path, tmp_path / "drawn") == [str(tmp_path / "drawn" / "crop.png")]
    out = cv2.imread(str(tmp_path / "drawn" / "crop.png"))
    assert out is not None and out.shape == img.shape == (256, 200, 3)
    # Control: the same run drawing nothing (threshold above every score). Detectron2's Visualizer
    # renders the image through matplotlib, which moves some pixels of this noisy texture by one
    # pixel; so it is close to the input on average, and drawings are what differs from it.
    demo_main(trained, path, tmp_path / "empty", "--confidence-threshold", "1.01")
    empty = cv2.imread(str(tmp_path / "empty" / "crop.png"))
    assert empty.shape == img.shape
    assert np.abs(empty.astype(int) - img.astype(int)).mean() < 10
    assert np.abs(out.astype(int) - img.astype(int)).mean() > \
        np.abs(empty.astype(int) - img.astype(int)).mean()
    changed = np.abs(out.astype(int) - empty.astype(int)).max(axis=2) > 30
    assert changed.sum() > 100
    # A box outline: some row of changed pixels runs straight for at least 10 pixels.
    runs = [np.diff(np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))) for row in changed]
    assert max((r[::2].max() for r in runs if r.size), default=0) >= 10


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_on_a_training_runs_config_writes_only_to_its_output(mask_rcnn_trained, trained,
                                                                   image, tmp_path):
    """The config.yaml of a training run names that run's OUTPUT_DIR: the demo leaves the run's
    files as they were (no config.yaml rewritten, nothing appended to log.txt) and writes only
    its drawing into --output."""
    run = tmp_path / "run"
    shutil.copytree(mask_rcnn_trained[0], run)  # the fixture is shared: a copy, pointing at itself
    config = run / "config.yaml"
    text = config.read_text()
    assert f"OUTPUT_DIR: {mask_rcnn_trained[0]}\n" in text
    config.write_text(text.replace(f"OUTPUT_DIR: {mask_rcnn_trained[0]}\n", f"OUTPUT_DIR: {run}\n"))
    before = _snapshot(run)
    assert "log.txt" in {str(p) for p in before}
    path, _ = image
    out = tmp_path / "drawn"
    with detectron2_log(trained[0]):
        import demo as demo_py

        demo_py.main(["--config-file", str(config), "--input", str(path), "--output", str(out),
                      "--opts", "MODEL.WEIGHTS", str(run / "model_final.pth"), *SMALL])
    assert _snapshot(run) == before
    assert sorted(p.name for p in out.iterdir()) == ["crop.png"]


def test_missing_input_is_a_clear_error(trained, tmp_path):
    proc = demo(trained, tmp_path / "no_such.png", tmp_path / "o")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "no_such.png" in proc.stderr


def test_unreadable_image_is_a_clear_error(trained, tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    proc = demo(trained, bad, tmp_path / "o")
    assert proc.returncode == 2 and "not an image" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_truncated_weights_are_a_clear_error_naming_the_file(trained, image, tmp_path, capsys):
    """MODEL.WEIGHTS cut short (an interrupted copy): exit status 2 and D2InfraCheckpointer's
    message naming the file, not torch's "PytorchStreamReader failed reading zip archive"."""
    import demo as demo_py

    _, weights = trained
    data = weights.read_bytes()
    cut = tmp_path / "model_final.pth"
    cut.write_bytes(data[:len(data) // 2])
    path, _ = image
    args = ["--config-file", CONFIG, "--input", str(path), "--output", str(tmp_path / "o"),
            "--opts", *SMALL, "MODEL.WEIGHTS", str(cut)]
    with detectron2_log(trained[0]):
        assert demo_py.cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("demo.py: error: cannot read the checkpoint") and str(cut) in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_cuda_config_without_cuda_is_a_clear_error(trained, image, tmp_path, capsys,
                                                   monkeypatch):
    """A config asking for CUDA without the CPU fallback (a GPU training run's config.yaml), on a
    machine without CUDA: exit status 2, the device rule's message and the demo's --opts fix;
    before any model is built."""
    import torch

    import demo as demo_py

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path, _ = image
    args = ["--config-file", CONFIG, "--input", str(path), "--output", str(tmp_path / "o"),
            "--opts", *SMALL, "MODEL.DEVICE", "cuda", "MODEL.ALLOW_CPU_FALLBACK", "False"]
    with detectron2_log(trained[0]):
        assert demo_py.cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("demo.py: error: MODEL.DEVICE 'cuda'") and "Traceback" not in err
    assert err.rstrip().endswith("For the demo: add MODEL.DEVICE cpu to --opts.")
    assert not (tmp_path / "o").exists()
