#!/usr/bin/env python
"""Trainable parameters of configs' models, in total and in the ROI heads (or dense head).

    python tools/count_params.py CONFIG [CONFIG ...]

Builds each model as train_net.py does (random initialisation, on the CPU) and prints a Markdown
table.
"""
import argparse
import os
import sys
from typing import Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_net import Trainer, build_cfg  # noqa: E402


def count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_config(config: str, opts: Sequence[str] = ()) -> Tuple[int, int]:
    """(trainable parameters of the whole model, of its ROI heads or dense head) of ``config``."""
    cfg = build_cfg(config, ["MODEL.DEVICE", "cpu", *opts])
    model = Trainer.build_model(cfg)
    head = getattr(model, "roi_heads", None) or getattr(model, "head", None)
    return count(model), count(head) if head is not None else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+")
    print("| config | total | ROI heads / dense head |\n|---|---|---|")
    for config in p.parse_args().configs:
        total, head = count_config(config)
        print(f"| {config} | {total:,} | {head:,} |", flush=True)


if __name__ == "__main__":
    main()
