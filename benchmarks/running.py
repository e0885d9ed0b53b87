"""Running: the suite's pieces one at a time, each in a child process (``run.py --child``), until
none is left; each finished piece's record is written (and committed with ``--commit``) at once,
so that a run that stops, or a fresh clone, resumes where the records stop.

A finished training whose config changed since (``stale``) is set aside, record and work dir, and
trained again; ``--rerun MODEL ...`` does the same for models whose code changed. A finished run
whose weights are gone (another machine) is trained again into the work dir when a speed or
ablation piece needs them; its record stays.
"""
import json
import os
import subprocess
import sys
import time
from typing import List, Optional

from planning import Piece, Planner, Run, format_duration
from records import REPO, commit_files, read_json, set_aside, write_json
from report_aggregate import aggregate
from report_markdown import render_markdown
from suites import get_suite

__all__ = ["make_planner", "print_plan", "run_suite", "write_report", "write_curves"]

RUN_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py")


def make_planner(args) -> Planner:
    suite = get_suite(args.suite).select(args.only)
    tag = f"{suite.name}-quick" if args.quick else suite.name
    if args.max_iter and not args.quick:
        tag += f"-it{args.max_iter}"  # another schedule: other work dir and records, nothing reused
    work = os.path.abspath(args.work_dir or os.path.join(REPO, "benchmarks", "work", tag))
    records = (os.path.join(work, "records") if args.quick else
               os.path.join(os.path.abspath(args.results_dir), "runs", tag))
    return Planner(suite, list(args.seeds or suite.seeds), records, work, quick=args.quick,
                   max_iter=args.max_iter, extra_opts=args.opts, tag=tag)


def print_plan(planner: Planner, pieces: List[Piece], full: bool) -> None:
    """The chosen rates, the pieces (``full``: each one) and the time the rest should take."""
    suite = planner.suite
    print(f"Suite {suite.name!r}{' (quick)' if planner.quick else ''}: records in "
          f"{os.path.relpath(planner.records_dir, REPO)}, work dir {planner.work}")
    for family, (rate, why) in planner.rates().items():
        print(f"  {family}: " + (f"BASE_LR {rate:g}; {why}" if rate is not None
                                 else f"BASE_LR not chosen yet: {why}"))
    timings = planner.timings()
    left, guessed = 0.0, []
    for i, p in enumerate(pieces, 1):
        est, measured = planner.estimate_s(p, timings)
        if p.status != "done":
            left += est
            if not measured:
                guessed.append(p.name)
        if full:
            print(f"  [{i}/{len(pieces)}] {p.kind} {p.name} ({p.why}): {p.status}"
                  + ("" if p.status == "done" else f", ~{format_duration(est)}"))
    kinds = {k: sum(p.kind == k and p.status != "done" for p in pieces)
             for k in ("train", "speed", "ablation")}
    print(f"Left: {kinds['train']} trainings, {kinds['speed']} speed comparisons, "
          f"{kinds['ablation']} ablations: about {left / 3600:.1f} hours on this machine, one at "
          "a time (s/iteration measured in this suite's records or benchmarks/results/*.json"
          + (f"; guessed for {len(guessed)} pieces never timed: {', '.join(guessed[:6])}"
             + (" ..." if len(guessed) > 6 else "") if guessed else "")
          + "). A member that diverges at its family's rate adds its trainings at the other "
            "rates of the grid.", flush=True)


_LOCK: List[str] = []  # ["flock", FILE] with --lock FILE


def _run_child(kind: str, spec: dict) -> None:
    cmd = _LOCK + [sys.executable, RUN_PY, "--child", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} of {spec.get('run') or spec.get('pair') or spec.get('ablation')}"
                         f" failed (exit {proc.returncode}); rerun the same command to resume")


def _train(planner: Planner, piece: Piece, command: str) -> List[str]:
    """Trains one run (or takes the result a killed parent left in its work dir); returns the
    record files written."""
    run = piece.run
    out = planner.run_dir(run)
    opts = planner.opts(run)
    result_file = os.path.join(out, "result.json")
    if not (os.path.isfile(result_file) and read_json(result_file)["opts"] == opts):
        m = planner.suite.models[run.model]
        _run_child("train", {"run": run.name, "suite": planner.suite.name, "why": piece.why,
                             "model": run.model, "seed": run.seed, "lr": run.lr,
                             "factor": run.factor, "config": m.config, "opts": opts,
                             "output_dir": out, "suite_command": command,
                             "stop": planner.curve_stop(run)})
    result = read_json(result_file)
    if piece.why.startswith("weights for"):
        old = planner.record(run)["metrics"]["AP"]
        print(f"[weights] {run.name}: trained again for its weights: box AP "
              f"{result['metrics']['AP']} (its record: {old})", flush=True)
        return []
    write_json(planner.record_path(run), result)
    return [planner.record_path(run)]


def _speed(planner: Planner, piece: Piece) -> List[str]:
    members = []
    for m, run in piece.runs.items():
        rec = planner.record(run)
        if not rec.get("diverged"):
            members.append({"model": m, "run": run.name, "config_digest": rec["config_digest"],
                            "config": rec["config"], "opts": rec["opts"],
                            "weights": planner.weights(run)})
    path = os.path.join(planner.records_dir, f"{piece.name}.json")
    _run_child("speed", {"pair": piece.pair.name, "models": members, "quick": planner.quick,
                         "result": path, "output_dir": os.path.join(planner.work, piece.name)})
    return [path]


def _ablation(planner: Planner, piece: Piece) -> List[str]:
    ab = piece.ablation
    run = piece.runs[ab.model]
    rec = planner.record(run)
    folder = os.path.join(planner.records_dir, piece.name)
    _run_child("ablation", {"ablation": ab.name, "key": ab.key, "values": list(ab.values),
                            "config": rec["config"], "opts": rec["opts"], "run": run.name,
                            "config_digest": rec["config_digest"],
                            "weights": planner.weights(run), "records_dir": folder,
                            "output_dir": os.path.join(planner.work, piece.name)})
    return [folder]


def _summary(planner: Planner, piece: Piece) -> str:
    if piece.kind != "train":
        return f"{piece.name} ({piece.why})"
    r = planner.record(piece.run)
    what = (f"diverged at iteration {r['diverged']['iteration']}" if r.get("diverged")
            else f"box AP {r['metrics']['AP']:.1f}")
    return f"{piece.name} ({piece.why}): {what}"


def run_suite(args) -> str:
    planner = make_planner(args)
    command = "python benchmarks/run.py " + " ".join(args.argv)
    _LOCK[:] = ["flock", args.lock] if args.lock else []
    pieces = planner.pieces()
    print_plan(planner, pieces, full=args.plan)
    if args.plan:
        return ""
    if args.report:
        return write_report(planner, args, written_by=command)
    if args.curves:
        return write_curves(planner, args, written_by=command)
    for model in args.rerun:
        if model not in planner.suite.models:
            raise SystemExit(f"--rerun: unknown model {model!r}")
    rerun = set(args.rerun)
    attempted = set()
    while True:
        pieces = planner.pieces()
        for p in pieces:  # a record of another config, or of code asked to be rerun: set aside
            if p.kind == "train" and p.run.model in rerun and p.status == "done":
                p.status = "stale (--rerun)"
            if p.status.startswith("stale"):
                if ("train", p.name, p.why) in attempted:
                    raise SystemExit(f"{p.name} was just trained and is {p.status}: the config it "
                                     "trained with is not the one the suite plans (a bug)")
                print(f"[{p.name}] {p.status}: its record and work dir are set aside, training "
                      "again", flush=True)
                set_aside(planner.record_path(p.run))
                if os.path.isdir(planner.run_dir(p.run)):
                    os.replace(planner.run_dir(p.run),
                               f"{planner.run_dir(p.run)}.stale-{time.time():.0f}")
        rerun = set()
        pieces = planner.pieces()
        todo = [p for p in pieces if p.status == "todo"]
        if not todo:
            break
        piece = todo[0]
        key = (piece.kind, piece.name, piece.why)
        if key in attempted:  # it ran and is still to do: running it again would loop forever
            raise SystemExit(f"{piece.kind} {piece.name} ({piece.why}) is still '{piece.status}' "
                             "after it ran; see its log above")
        attempted.add(key)
        done = sum(p.status == "done" for p in pieces)
        print(f"[{done + 1}/{len(pieces)}] {piece.kind} {piece.name} ({piece.why})", flush=True)
        written = (_train(planner, piece, command) if piece.kind == "train" else
                   _speed(planner, piece) if piece.kind == "speed" else _ablation(planner, piece))
        stale = os.path.join(planner.records_dir, "stale")
        if written and args.commit:
            commit_files(written + ([stale] if os.path.isdir(stale) else []),
                         f"benchmarks: {planner.tag} {_summary(planner, piece)}")
    waiting = [p for p in pieces if p.status != "done"]
    for p in waiting:
        print(f"  not run: {p.kind} {p.name}: {p.status}")
    # the commands of the records (a suite may run in several parts), and this one's
    return write_report(planner, args, written_by=command)


def write_report(planner: Planner, args, written_by: Optional[str] = None) -> str:
    """Write ``<results-dir>/<suite>[-<only>]-<date>.json`` and ``.md`` from the records
    committed so far (partial, and saying so, while pieces are missing), naming the commands the
    records carry and ``written_by``; the json's path."""
    report = aggregate(planner, None, args.quick, written_by)
    os.makedirs(args.results_dir, exist_ok=True)
    only = "-" + "+".join(args.only) if args.only else ""  # a part of the suite: its own name
    base = os.path.join(args.results_dir, f"{planner.tag}{only}-{report['date']}")
    write_json(base + ".json", report)
    with open(base + ".md", "w") as f:
        f.write(render_markdown(report))
    print(f"Wrote {base}.json and {base}.md")
    return base + ".json"


def write_curves(planner: Planner, args, written_by: str,
                 docs_dir: Optional[str] = None) -> str:
    """The learning curves of the records so far: a PNG per group in ``docs/`` (AP, AP75, AP90
    against iteration, the plateau marked) and ``<results-dir>/<suite>-curves.md`` with the
    tables, the plateau rule's reading and the commands; the Markdown file's path."""
    import datetime

    from curves import MIN_GAIN, curves_markdown, plot_curves
    from records import machine_description

    rows, commands, machines = [], [], set()
    docs = docs_dir or os.path.join(REPO, "docs")
    out_md = os.path.join(os.path.abspath(args.results_dir), f"{planner.tag}-curves.md")
    for c in planner.suite.curves:
        models = {}
        for m in c.models:
            pts = planner.curve(m)
            if pts:
                models[planner.suite.models[m].label] = pts
                run = planner.main_run(m, planner.seeds[0])
                rec = planner.record(Run(m, planner.seeds[0], run.lr, planner.suite.curve_factor))
                if rec["suite_command"] not in commands:
                    commands.append(rec["suite_command"])
                machines.add(f"{rec['machine']} ({rec['date']})")
        if not models:
            continue
        factor, why = planner.plateau(c)
        base = planner.curve(c.models[0])
        period = base[0]["iteration"] if base else None
        plateau_at = factor * period if factor and period else None
        png = os.path.join(docs, f"{planner.tag}-{c.name}.png")
        plot_curves(c.title, models, plateau_at, png)
        rows.append({"title": c.title, "plot": os.path.relpath(png, os.path.dirname(out_md)),
                     "plateau": (f"{factor}x ({plateau_at} iterations)" if factor
                                 else "not decided"), "why": why, "models": models})
    text = [f"# Learning curves ({planner.tag})", "",
            f"Written {datetime.date.today().isoformat()} by `{written_by}`, from the records of "
            f"`{', '.join(commands) or 'no run yet'}`; trained on {'; '.join(sorted(machines))}."
            if rows else f"No learning curve recorded yet (`{written_by}`, "
            f"{machine_description()}).", "",
            f"Each model is trained once (seed {planner.seeds[0]}) at {planner.suite.curve_factor}x "
            "the schedule, LR steps scaled, and evaluated every 1x. Plateau rule (on the "
            f"baseline, the first model of a group): the first evaluation that gains less than "
            f"{MIN_GAIN:g} box AP over its last two evaluations (`benchmarks/curves.py`). A curve "
            "stops there: the baseline once it has flattened, the other members of its group at "
            "the same iteration.", "",
            curves_markdown(rows)]
    os.makedirs(os.path.dirname(out_md), exist_ok=True)
    with open(out_md, "w") as f:
        f.write("\n".join(text))
    print(f"Wrote {out_md}" + "".join(f" and {r['plot']}" for r in rows))
    return out_md
