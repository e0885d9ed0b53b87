#!/usr/bin/env python
"""Training-step time with torchvision's serial CPU RoIAlign and with the channel-parallel one of
``d2infra.modeling.roi_align`` (``train_net.py``'s on the CPU), in one process, on the same model
and batches.

    python benchmarks/roi_align_threads.py --config-file configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml

It needs more than one torch thread. First it checks that one step's losses and gradients are
bitwise equal under both (same weights, batch and RNG state). Then ``--rounds`` times, it times
``--iters`` steps of each, alternating which goes first (a shared machine's drift hits both
alike). It prints the command, machine and date, and a Markdown row: the median seconds per step
of each, and their ratio. The optimizer is train_net.py's, on the built model; the weights move on
between the timed steps.
"""
import argparse
import datetime
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=5, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config opts (KEY VALUE ...)")
    args = p.parse_args()
    import torch
    from detectron2.layers import ROIAlign
    from detectron2.utils.events import EventStorage

    from d2infra.modeling.roi_align import ChannelParallelROIAlign
    # benchmarks/ (this script's directory)
    from iteration_speed import build_training, time_training_steps
    from records import machine_description

    if torch.get_num_threads() < 2:
        raise SystemExit(f"torch has {torch.get_num_threads()} thread here (OMP_NUM_THREADS?): "
                         "the channel-parallel RoIAlign needs 2 or more")
    # on the CPU, train_net's model has channel-parallel RoIAlign modules
    _, model, optimizer, loader = build_training(args.config_file,
                                                 ["MODEL.DEVICE", "cpu"] + args.opts)
    poolers = [m for m in model.modules() if isinstance(m, ROIAlign)]
    if not poolers:
        raise SystemExit(f"{args.config_file}: the model has no RoIAlign")
    model.train()
    batches = iter(loader)

    def use(parallel: bool) -> None:
        for m in poolers:  # the same modules, only the class (no state of its own) changes
            m.__class__ = ChannelParallelROIAlign if parallel else ROIAlign

    def losses_and_grads(batch, parallel: bool):
        use(parallel)
        torch.manual_seed(0)  # the RoI heads sample proposals at random
        optimizer.zero_grad()
        losses = model(batch)
        sum(losses.values()).backward()
        return {**{k: v.detach() for k, v in losses.items()},
                **{n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}}

    times = {False: [], True: []}
    with EventStorage(0):
        batch = next(batches)
        a, b = losses_and_grads(batch, False), losses_and_grads(batch, True)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            raise SystemExit("the losses or gradients differ between the two RoIAlign")
    time_training_steps(model, optimizer, batches, args.warmup, 0)
    for r in range(args.rounds):
        for parallel in ((False, True) if r % 2 == 0 else (True, False)):
            use(parallel)
            times[parallel] += time_training_steps(model, optimizer, batches, 0, args.iters)
    serial, parallel = statistics.median(times[False]), statistics.median(times[True])
    print(f"command: python benchmarks/roi_align_threads.py {' '.join(sys.argv[1:])}\n"
          f"machine: {machine_description()}\ndate: {datetime.date.today().isoformat()}\n")
    print("| config | RoIAlign modules | s/step, torchvision's RoIAlign | s/step, channel-parallel "
          "| ratio | losses and gradients | steps each |")
    print("|---|---:|---:|---:|---:|---|---:|")
    print(f"| {os.path.relpath(os.path.abspath(args.config_file), REPO)} | {len(poolers)} "
          f"| {serial:.3f} | {parallel:.3f} | {parallel / serial:.2f} | bitwise equal "
          f"| {len(times[True])} |")


if __name__ == "__main__":
    main()
