#!/usr/bin/env python
"""Where a training step's time goes: torch.profiler over a few training steps of a config (after
warm-up steps), the ops by self CPU time. On the CPU this finds what to speed up in the suite's
own trainings (e.g. torchvision's RoIAlign backward).

    python benchmarks/profile_step.py --config-file configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config opts (KEY VALUE ...)")
    args = p.parse_args()
    import torch
    from detectron2.utils.events import EventStorage

    from iteration_speed import build_training  # benchmarks/ (this script's directory)

    _, model, optimizer, loader = build_training(args.config_file, args.opts)
    model.train()
    batches = iter(loader)

    def step():
        loss = sum(model(next(batches)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with EventStorage(0):
        for _ in range(args.warmup):
            step()
        with torch.profiler.profile() as prof:
            for _ in range(args.steps):
                step()
    print(f"{args.config_file}, {args.steps} steps after {args.warmup}, "
          f"{torch.get_num_threads()} threads:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
