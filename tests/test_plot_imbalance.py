"""tools/plot_imbalance.py writes non-empty PNGs from a metrics.json as Detectron2 writes it."""
import importlib.util
import json
import os

import pytest
import torch
from detectron2.engine.hooks import PeriodicWriter
from detectron2.engine.train_loop import TrainerBase
from detectron2.utils.events import JSONWriter

from imbalance.diagnostics import insert_imbalance_stats_hook, log_sampling_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "plot_imbalance", os.path.join(ROOT, "tools", "plot_imbalance.py"))
plot_imbalance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_imbalance)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Trainer(TrainerBase):
    """Logs three cascade stages (IoUs shifting up by stage) and the anchors of a dense head."""

    def run_step(self):
        g = torch.Generator().manual_seed(self.iter)
        for k in range(3):
            ious = (0.5 + 0.1 * k + torch.rand(20, generator=g) * (0.5 - 0.1 * k)).clamp(max=1)
            log_sampling_stats(f"stage{k}", ious, 20, 44 - 10 * k)
        log_sampling_stats("anchors", 0.5 + torch.rand(8, generator=g) * 0.5, 8, 5000)
        self.storage.put_scalar("total_loss", 1.0 / (self.iter + 1))


def write_metrics(output_dir, with_hook=True, max_iter=45):
    trainer = _Trainer()
    hooks = [PeriodicWriter([JSONWriter(os.path.join(output_dir, "metrics.json"))], period=20)]
    trainer.register_hooks(insert_imbalance_stats_hook(hooks) if with_hook else hooks)
    trainer.train(0, max_iter)


@pytest.mark.parametrize("with_hook", [True, False])
def test_plot_writes_pngs(tmp_path, with_hook):
    write_metrics(str(tmp_path), with_hook)
    written = plot_imbalance.main([str(tmp_path)])
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["imbalance_fg_bg.png", "imbalance_iou_hist.png"]
    for path in written:
        with open(path, "rb") as f:
            data = f.read()
        assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_histogram_and_series_read_from_metrics(tmp_path):
    write_metrics(str(tmp_path), with_hook=True)
    rows = plot_imbalance.read_metrics(os.path.join(str(tmp_path), "metrics.json"))
    hists, complete = plot_imbalance.iou_histograms(rows)
    assert complete and set(hists) == {"stage0", "stage1", "stage2", "anchors"}
    # the running totals cover all 45 iterations: 20 positives per iteration per stage
    assert sum(hists["stage1"].values()) == 45 * 20
    series, complete = plot_imbalance.fg_bg_series(rows)
    iters, ratios = series["stage2"]
    assert iters == [19, 39, 44] and ratios == pytest.approx([20 / 24] * 3)


def test_hand_written_metrics_json(tmp_path):
    # the format of Detectron2's JSONWriter: one object per line, with "iteration"
    rows = [{"iteration": 19, "total_loss": 1.2, "imbalance/roi_head/iou_0.50": 5,
             "imbalance/roi_head/iou_0.95": 1, "imbalance/roi_head/num_fg": 6,
             "imbalance/roi_head/num_bg": 18},
            {"iteration": 39, "total_loss": 1.0, "imbalance/roi_head/iou_0.50": 3,
             "imbalance/roi_head/iou_0.60": 2, "imbalance/roi_head/num_fg": 5,
             "imbalance/roi_head/num_bg": 19},
            {"bbox/AP": 1.0, "iteration": 39}]
    with open(os.path.join(str(tmp_path), "metrics.json"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    out = os.path.join(str(tmp_path), "plots")
    written = plot_imbalance.main([str(tmp_path), "--out", out])
    assert len(written) == 2 and all(os.path.getsize(p) > 0 for p in written)
    hists, complete = plot_imbalance.iou_histograms(plot_imbalance.read_metrics(
        os.path.join(str(tmp_path), "metrics.json")))
    assert not complete and hists["roi_head"] == {"0.50": 8, "0.95": 1, "0.60": 2}
