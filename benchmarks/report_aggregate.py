"""Reporting: the suite's report (``benchmarks/results/<suite>-<date>.json``) from the committed
records: the LR sweep and the chosen rates, every model over its seeds (mean ± std), the extra
rows of diverged members at their own rate, the pairs with their speed, the long-schedule check,
the ablations, and each learning-curve group at its plateau schedule (its members' verdicts there
and at the schedule, the paper's claims stated on them). Models or pairs not trained yet are left
out (a partial report says so)."""
import datetime
import os
from typing import Dict, List, Optional, Tuple

from coco_ap import METRICS
from planning import Planner, Run
from records import machine_description, read_json_or_none
from seed_noise import first_std, judge, mean_std
from suites import Claim, Curve

__all__ = ["aggregate"]

# Fields of a record kept in the report (the merged config stays in the record).
_RUN_FIELDS = ("run", "model", "seed", "lr", "factor", "command", "suite_command", "date",
               "finished", "machine", "git_commit",
               "max_iter", "ims_per_batch", "base_lr", "train_dataset", "test_dataset",
               "diverged", "metrics", "params_total", "params_head", "head_module",
               "train_s_per_iter_median", "train_and_eval_wall_s", "peak_rss_mb", "data_digest",
               "config_digest", "resumed_from_iter")


def _entry(label: str, config: str, records: List[dict]) -> dict:
    """One table row: the runs of a model (one per seed), mean and std of each metric."""
    runs = {str(r["seed"]): {k: r.get(k) for k in _RUN_FIELDS} for r in records}
    entry = {"label": label, "config": config, "runs": runs, "seeds": [r["seed"] for r in records],
             "lr": records[0]["lr"], "mean": {}, "std": {}}
    for k in METRICS:
        entry["mean"][k], entry["std"][k] = mean_std([r["metrics"].get(k) for r in records])
    for k in ("params_total", "params_head", "head_module", "max_iter", "ims_per_batch"):
        entry[k] = records[0][k]
    entry["peak_rss_mb"] = max(r["peak_rss_mb"] for r in records)
    entry["diverged"] = {str(r["seed"]): r["diverged"] for r in records if r.get("diverged")}
    return entry


def _plateau_member(planner: Planner, c: Curve, m: str, factor: int, more: set,
                    undecided: set, rates) -> Tuple[dict, List[dict]]:
    """A curve member at the plateau: its entry over the seeds recorded there (None: none yet),
    its verdicts at the schedule and there (``Planner.member_verdict``), the seeds planned
    there and not recorded yet; and the records shown."""
    seeds = planner.seeds
    lr = planner.main_run(m, seeds[0], rates).lr
    recs = [r for r in (planner.record(Run(m, s, lr, factor)) for s in seeds) if r]
    label = planner.suite.models[m].label
    v = (planner.member_verdict(c, m, factor, rates=rates) if m != c.models[0] else None) or {}
    planned = seeds if m in more else seeds[:1]
    return {"model": m, "label": label, "baseline": m == c.models[0],
            "entry": _entry(label, planner.suite.models[m].config, recs) if recs else None,
            "pair": v.get("pair"), "metric": v.get("metric"), "short": v.get("short"),
            "plateau": v.get("plateau"), "ref_std": v.get("ref_std"),
            "ref_source": v.get("ref_source"),
            "differs": bool(v.get("short") and v.get("plateau")
                            and v["short"] != v["plateau"]),
            "seeds_missing": [s for s in planned if s not in {r["seed"] for r in recs}],
            "undecided": m in undecided}, recs


def _claim(planner: Planner, c: Curve, x: Claim, factor: int, rates) -> dict:
    """A paper's claim on the plateau's box AP: the difference, the noise rule's category
    (a single-seed side judged by the other side's seeds, else its own, else
    ``Planner.plateau_noise``) and whether the claim holds (``Claim.holds``); d None while a
    side is missing or diverged."""
    lr = planner.main_run(c.models[0], planner.seeds[0], rates).lr
    a, b = (planner.stats(m, planner.seeds, lr, factor) for m in (x.model, x.other))
    out = {"text": x.text, "kind": x.kind, "model": x.model, "other": x.other,
           "margin": x.margin, "metric": "AP", "d": None, "category": None, "holds": None,
           "ref_std": None, "ref_source": ""}
    if not a or not b or a.diverged or b.diverged or a.mean is None or b.mean is None:
        return out
    ref_std, source = first_std(
        (b.std, f"{planner.suite.models[x.other].label}'s {len(b.seeds)} seeds"),
        (a.std, f"its {len(a.seeds)} seeds"),
        *planner.plateau_noise(c, "AP", factor, rates=rates, model=x.model))
    d = a.mean - b.mean
    category = judge(d, a.std, b.std, ref_std).category
    return {**out, "d": d, "category": category, "holds": x.holds(d, category),
            "ref_std": ref_std, "ref_source": source}


def _plateau(planner: Planner, rates) -> Tuple[List[dict], List[dict]]:
    """The curve groups whose plateau is known, each at its plateau schedule; the records
    shown."""
    groups, shown = [], []
    for c in planner.suite.curves:
        factor, why = planner.plateau(c)
        if factor is None:
            continue
        more, undecided = planner.plateau_seeded(c, factor, rates)
        members = []
        for m in c.models:
            member, recs = _plateau_member(planner, c, m, factor, {x for x, _ in more},
                                           {x for x, _ in undecided}, rates)
            members.append(member)
            shown += recs
        groups.append({"name": c.name, "title": c.title, "baseline": c.models[0],
                       "factor": factor, "why": why, "members": members,
                       "claims": [_claim(planner, c, x, factor, rates) for x in c.claims]})
    return groups, shown


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
    plateau, plateau_records = _plateau(planner, rates)
    shown += plateau_records
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
        "ablations": ablations, "plateau": plateau,
    }
