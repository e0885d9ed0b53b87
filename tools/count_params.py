#!/usr/bin/env python
"""Trainable parameters of configs' models, in total and in the ROI heads (or dense head).

    python tools/count_params.py CONFIG [CONFIG ...]

Builds each model as train_net.py does (random initialisation, on the CPU) and prints a Markdown
table.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_net import Trainer, setup  # noqa: E402


def count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+")
    print("| config | total | ROI heads / dense head |\n|---|---|---|")
    for config in p.parse_args().configs:
        args = argparse.Namespace(config_file=config, opts=["MODEL.DEVICE", "cpu", "OUTPUT_DIR",
                                  "/tmp/count_params"], eval_only=True, resume=False, num_gpus=1)
        model = Trainer.build_model(setup(args))
        head = getattr(model, "roi_heads", None) or getattr(model, "head", None)
        print(f"| {config} | {count(model):,} | {count(head) if head is not None else 0:,} |",
              flush=True)


if __name__ == "__main__":
    main()
