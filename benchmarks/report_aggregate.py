"""Reporting: the suite's report (``benchmarks/results/<suite>-<date>.json``) from the committed
records: the LR sweep and the chosen rates, every model over its seeds (mean ± std), the extra
rows of diverged members at their own rate, the pairs with their speed, the long-schedule check
and the ablations. Models or pairs not trained yet are left out (a partial report says so)."""
import datetime
import os
import statistics
from typing import Dict, List, Optional

from coco_ap import METRICS
from planning import Planner, Run
from records import machine_description, read_json_or_none

__all__ = ["aggregate"]

# Fields of a record kept in the report (the merged config stays in the record).
_RUN_FIELDS = ("run", "model", "seed", "lr", "factor", "command", "suite_command", "date",
               "finished", "machine", "git_commit",
               "max_iter", "ims_per_batch", "base_lr", "train_dataset", "test_dataset",
               "diverged", "metrics", "params_total", "params_head", "head_module",
               "train_s_per_iter_median", "train_and_eval_wall_s", "peak_rss_mb", "data_digest",
               "config_digest", "resumed_from_iter")


def _mean_std(values: List[Optional[float]]):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _entry(label: str, config: str, records: List[dict]) -> dict:
    """One table row: the runs of a model (one per seed), mean and std of each metric."""
    runs = {str(r["seed"]): {k: r.get(k) for k in _RUN_FIELDS} for r in records}
    entry = {"label": label, "config": config, "runs": runs, "seeds": [r["seed"] for r in records],
             "lr": records[0]["lr"], "mean": {}, "std": {}}
    for k in METRICS:
        entry["mean"][k], entry["std"][k] = _mean_std([r["metrics"].get(k) for r in records])
    for k in ("params_total", "params_head", "head_module", "max_iter", "ims_per_batch"):
        entry[k] = records[0][k]
    entry["peak_rss_mb"] = max(r["peak_rss_mb"] for r in records)
    entry["diverged"] = {str(r["seed"]): r["diverged"] for r in records if r.get("diverged")}
    return entry


def aggregate(planner: Planner, command: Optional[str], quick: bool,
              written_by: Optional[str] = None) -> dict:
    """The report of the records committed so far. ``command``: the suite's command that made
    them; None takes those the records carry (``suite_command``, in the order they were first
    used), as for a report written apart from the run (``written_by``, ``run.py --report``)."""
    suite, seeds, sweep = planner.suite, planner.seeds, planner.suite.lr_sweep
    rates = planner.rates()
    models: Dict[str, dict] = {}
    for name, m in suite.models.items():
        if rates[m.family][0] is None:
            continue
        records = [r for r in (planner.record(planner.main_run(name, s, rates)) for s in seeds)
                   if r is not None]
        if records:
            models[name] = _entry(m.label, m.config, records)
    extras = {}
    for name in planner.diverged_members(rates):
        lr, why = planner.own_rate(name)
        r = planner.record(Run(name, seeds[0], lr)) if lr is not None else None
        if r is not None:
            extras[name] = {**_entry(suite.models[name].label, suite.models[name].config, [r]),
                            "why": why}
    lr_sweep = {"grid": list(sweep.grid), "seed": seeds[0], "families": {}}
    # every record the report shows: its machines and dates (a suite may run in several parts,
    # on several machines)
    shown = [r for e in (*models.values(), *extras.values()) for r in e["runs"].values()]
    shown += [r for r in (planner.record(Run(m, seeds[0], lr)) for ms in sweep.baselines.values()
                          for m in ms for lr in sweep.grid) if r is not None]
    for family, baselines in sweep.baselines.items():
        rows = {m: {f"{lr:g}": planner.box_ap(Run(m, seeds[0], lr)) for lr in sweep.grid}
                for m in baselines}
        lr_sweep["families"][family] = {
            "rate": rates[family][0], "why": rates[family][1],
            "rows": {m: {lr: {"done": d, "AP": ap,
                              "diverged_later": planner.diverged_later(m, float(lr))}
                         for lr, (d, ap) in row.items()}
                     for m, row in rows.items()},
            "labels": {m: suite.models[m].label for m in baselines}}
    pairs = []
    for p in suite.pairs:
        if not all(m in models for m in p.models):
            continue
        speed = read_json_or_none(os.path.join(planner.records_dir, f"speed-{p.name}.json"))
        shown += [speed] if speed else []
        # A diverged run stopped early and saw only the first batches: its digest is not compared.
        firsts = {m: models[m]["runs"].get(str(seeds[0])) or {} for m in p.models}
        digests = {m: r.get("data_digest") for m, r in firsts.items() if not r.get("diverged")}
        known = {d for d in digests.values() if d}
        pairs.append({"name": p.name, "title": p.title, "baseline": p.models[0],
                      "models": list(p.models), "claim": p.claim, "metric": p.metric,
                      "headline": p.headline, "noise_from": p.noise_from,
                      "contrasts": [list(c) for c in p.contrasts],
                      "contrast_metric": p.contrast_metric,
                      "max_iter": models[p.models[0]]["max_iter"],
                      "lr": models[p.models[0]]["lr"],
                      "extras": [m for m in p.models if m in extras],
                      "speed": speed["models"] if speed else {},
                      "same_data_order": (len(known) == 1
                                          and len(known) == len(set(digests.values())))})
    long_rows = []
    for m in suite.long_schedule:
        main = planner.main_run(m, seeds[0], rates)
        r = planner.record(Run(m, seeds[0], main.lr, suite.long_factor)) if main.lr else None
        if r is not None and m in models:
            shown.append(r)
            long_rows.append({"model": m, "label": suite.models[m].label, "max_iter": r["max_iter"],
                              "long": r["metrics"], "diverged": r.get("diverged"),
                              "command": r["command"]})
    ablations = []
    for ab in suite.ablations:
        folder = os.path.join(planner.records_dir, f"ablation-{ab.name}")
        rows = [read_json_or_none(os.path.join(folder, f"{v}.json")) for v in ab.values]
        if all(rows):
            shown += rows
            ablations.append({"name": ab.name, "title": ab.title, "model": ab.model, "key": ab.key,
                              "rows": rows})
    first = next(iter(models.values()), None)
    run0 = (next(iter(first["runs"].values())) if first else  # else a run of the sweep
            planner.record(Run(next(iter(sweep.baselines.values()))[0], seeds[0], sweep.grid[0]))
            or {})
    datasets = sorted({(tuple(r["train_dataset"]), tuple(r["test_dataset"]))
                       for e in models.values() for r in e["runs"].values()})
    planned = [x for x in planner.pieces() if x.status != "done"]
    dates = sorted({r["date"] for r in shown if r.get("date")})
    if command is None:
        made = sorted((r.get("finished") or r.get("date") or "", r["suite_command"])
                      for r in shown if r.get("suite_command"))
        commands = list(dict.fromkeys(c for _, c in made))
    else:
        commands = [command]
    return {
        "suite": suite.name, "quick": quick, "command": commands[-1] if commands else None,
        "commands": commands,
        "written_by": written_by,
        "machine": machine_description(), "date": datetime.date.today().isoformat(),
        "machines": sorted({r["machine"] for r in shown if r.get("machine")}),
        "dates": dates[:1] + dates[1:][-1:],  # first and last day of the records shown
        "note": suite.note, "seeds": seeds,
        "complete": not planned,
        "missing": [f"{x.kind} {x.name} ({x.why}): {x.status}" for x in planned],
        "rates": {f: {"rate": r, "why": why} for f, (r, why) in rates.items()},
        "schedule": {"max_iter": sorted({e["max_iter"] for e in models.values()}),
                     "ims_per_batch": run0.get("ims_per_batch"),
                     "datasets": [{"train": list(a), "test": list(b)} for a, b in datasets]},
        "memory": "peak RSS of the training+evaluation process (resource.getrusage RUSAGE_SELF "
                  "ru_maxrss), data-loader workers excluded; max over seeds",
        "speed": "ratios to the pair's baseline, timed in one process on the trained weights "
                 "(DATALOADER.NUM_WORKERS 0 for training steps, inference batch 1)",
        "lr_sweep": lr_sweep, "models": models, "extras": extras, "pairs": pairs,
        "long_schedule": {"factor": suite.long_factor, "rows": long_rows},
        "ablations": ablations,
    }
