#!/usr/bin/env python
"""Benchmark every method beside its Detectron2 baseline under the protocol of benchmarks/README.md:
accuracy, parameters, speed and memory.

    python benchmarks/run.py --suite embedded --plan           # the pieces left and their hours
    python benchmarks/run.py --suite embedded --commit         # run (resumable), commit records
    python benchmarks/run.py --suite embedded --only lr_sweep  # the LR sweep alone
    python benchmarks/run.py --suite embedded --report         # report of the records so far
    python benchmarks/run.py --suite embedded --curves         # learning curves so far
    python benchmarks/run.py --suite embedded --quick --only fcos_vs_iou_aware   # CI smoke run
    python benchmarks/run.py --readme benchmarks/results/embedded-2026-12-08.json   # Results text
    python benchmarks/run.py --readme benchmarks/results/embedded-2026-12-08.json --into docs/RESULTS.md

The code is split along its seams: planning (``suites.py``: what to compare; ``lr_sweep.py``: the
rate rule; ``planning.py``: the pieces, their order, status and time), running (``running.py``:
one piece after the other; the child processes ``train_child.py``, ``speed_child.py``,
``ablation_child.py``; ``records.py``: the committed records the suite resumes from) and reporting
(``report_aggregate.py``: the report from the records; ``report_markdown.py``: the Results text of docs/RESULTS.md;
``coco_ap.py``: AP at one IoU).
"""
import argparse
import json
import logging
import os
import sys
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from records import read_json  # noqa: E402
from report_markdown import (RESULTS_BEGIN, RESULTS_END, render_markdown,  # noqa: E402
                             replace_results_section)

__all__ = ["main"]

# Where ``--readme ... --into`` writes when given no file name: the Results of the documentation.
RESULTS_FILE = os.path.join(REPO, "docs", "RESULTS.md")


def _child(kind: str, spec: dict) -> None:
    logging.basicConfig(level=logging.INFO)
    if kind == "train":
        from train_child import child_train as fn
    elif kind == "speed":
        from speed_child import child_speed as fn
    else:
        from ablation_child import child_ablation as fn
    fn(spec)


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        _child(argv[1], json.loads(argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suite", default="embedded")
    p.add_argument("--quick", action="store_true",
                   help="3 iterations on shapes_mini_train, evaluated on shapes_mini_val; records "
                        "in the work dir")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="the pairs' seeded models run with every seed, the rest with the first "
                        "(default: the suite's, 1 2 3 for embedded)")
    p.add_argument("--only", nargs="+", default=[],
                   help="pair or ablation names of the suite, 'lr_sweep' or 'long_schedule'")
    p.add_argument("--max-iter", type=int, default=None,
                   help="train every model this many iterations (the configs' schedule scaled) "
                        "instead of the protocol's; work dir and records <suite>-it<N>")
    p.add_argument("--work-dir", default=None, help="default benchmarks/work/<suite>[-quick]")
    p.add_argument("--results-dir", default=os.path.join(REPO, "benchmarks", "results"),
                   help="reports; records under <results-dir>/runs/<suite>/")
    p.add_argument("--plan", action="store_true",
                   help="list the pieces, their status and the hours left; run nothing")
    p.add_argument("--report", action="store_true",
                   help="write the report (json and Markdown, into --results-dir) of the records "
                        "committed so far, partial while pieces are missing; run nothing")
    p.add_argument("--curves", action="store_true",
                   help="write the learning curves recorded so far (PNG per group in docs/, "
                        "tables in <results-dir>/<suite>-curves.md); run nothing")
    p.add_argument("--commit", action="store_true",
                   help="git-commit each finished piece's record (only those files)")
    p.add_argument("--lock", metavar="FILE",
                   help="run each child process (a training, a speed comparison) under "
                        "`flock FILE`, one heavy job at a time with other users of FILE")
    p.add_argument("--rerun", nargs="+", default=[], metavar="MODEL",
                   help="set these models' records aside and train them again (their code "
                        "changed in a way their config does not show)")
    p.add_argument("--readme", metavar="RESULTS_JSON",
                   help="print the Markdown Results section of a results json and exit")
    p.add_argument("--into", metavar="MARKDOWN_FILE", nargs="?", const=RESULTS_FILE,
                   help="with --readme: replace the text between the file's "
                        f"'{RESULTS_BEGIN}' and '{RESULTS_END}' lines instead of printing "
                        f"(without a file name: {os.path.relpath(RESULTS_FILE, REPO)})")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config opts added to every model (after the suite's)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.readme:
        text = render_markdown(read_json(args.readme))
        if args.into:
            replace_results_section(args.into, text)
        else:
            print(text)
        return
    from running import run_suite

    run_suite(args)


if __name__ == "__main__":
    main()
