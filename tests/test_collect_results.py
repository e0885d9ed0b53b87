"""benchmarks/collect_results.py --train: training metrics at the end of training, on a hand-made
metrics.json (hand-computed means)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from collect_results import training_means  # noqa: E402


def _metrics(path, rows):
    path.mkdir()
    (path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_training_means_of_the_last_iterations(tmp_path):
    rows = [{"iteration": i, "total_loss": 1.0, "acc": a} for i, a in
            ((19, 0.1), (39, 0.2), (59, 0.3), (79, 0.5), (99, 0.7))]
    rows.insert(3, {"iteration": 59, "bbox/AP": 12.0})  # an evaluation row: not a training row
    rows[-1]["only_last"] = 2.0
    _metrics(tmp_path / "run", rows)
    # the last 40 iterations of 100: the rows of iterations 79 and 99 (> 99 - 40)
    assert training_means(str(tmp_path / "run"), ["acc", "only_last", "absent"], 40) == {
        "acc": pytest.approx(0.6), "only_last": 2.0, "absent": None}
    assert training_means(str(tmp_path / "run"), ["acc"], 1000)["acc"] == pytest.approx(0.36)
    out = subprocess.run([sys.executable, "benchmarks/collect_results.py", "--train", "acc",
                          "absent", "--last", "40", str(tmp_path / "run")], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["| run (mean over the last 40 iterations) | acc | absent |",
                                "|---|---|---|", "| run | 0.600 | – |"]


def test_a_run_without_training_rows_is_an_error(tmp_path):
    _metrics(tmp_path / "eval_only", [{"iteration": 0, "bbox/AP": 1.0}])
    with pytest.raises(ValueError, match="no training row"):
        training_means(str(tmp_path / "eval_only"), ["acc"], 10)
    with pytest.raises(FileNotFoundError, match="train_net.py OUTPUT_DIR"):
        training_means(str(tmp_path / "missing"), ["acc"], 10)
