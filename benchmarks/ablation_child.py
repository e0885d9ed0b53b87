"""Running, child process: an eval-only ablation, one config key varied on the trained weights of
one run; one record per value (with the run and config digest whose weights it evaluated)."""
import datetime
import os

from coco_ap import metrics_from_results
from records import machine_description, read_json_or_none, write_json
from train_child import setup_cfg

__all__ = ["child_ablation"]


def child_ablation(spec: dict) -> None:
    """Evaluate one trained model with each value of one config key; one file per value."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils.events import EventStorage

    from train_net import Trainer

    for value in spec["values"]:
        path = os.path.join(spec["records_dir"], f"{value}.json")
        have = read_json_or_none(path)
        if have and (have.get("run"), have.get("config_digest")) == (spec["run"],
                                                                     spec["config_digest"]):
            print(f"[ablation] {spec['ablation']}: {spec['key']}={value} done, skipped", flush=True)
            continue
        print(f"[ablation] {spec['ablation']}: {spec['key']}={value}", flush=True)
        out = os.path.join(spec["output_dir"], str(value))
        opts = spec["opts"] + ["OUTPUT_DIR", out, spec["key"], str(value)]
        cfg = setup_cfg(spec["config"], opts)
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model).load(spec["weights"])
        with EventStorage(0):
            results = Trainer.test(cfg, model)
        row = {"value": value, "run": spec["run"], "config_digest": spec["config_digest"],
               "machine": machine_description(), "date": datetime.date.today().isoformat(),
               **metrics_from_results(results, out, cfg.DATASETS.TEST[0],
                                      cfg.TEST.DETECTIONS_PER_IMAGE)}
        write_json(path, row)
