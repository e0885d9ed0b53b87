"""Reporting: the "Results" section (Markdown) of docs/RESULTS.md from a report of ``report_aggregate``,
with one verdict sentence per pair under the suite's noise rule, and its placement between the file's
markers."""
from typing import Optional, Tuple

from coco_ap import METRICS
from seed_noise import GAIN, LOSS, NONE, judge

__all__ = ["RESULTS_BEGIN", "RESULTS_END", "render_markdown", "replace_results_section"]


def _cell(mean, std=None, digits=1) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


# the noise rule's categories (seed_noise.judge) as the sentences say them, both sides seeded
_WORDS = {GAIN: "a real gain", LOSS: "a real loss", NONE: "within seed noise"}


def _difference(e: dict, base: dict, k: str, ref_std: Optional[float], ref_label: str,
                label: str) -> str:
    """``label`` with the difference of ``e`` to ``base`` on ``k`` and what the noise rule
    (``seed_noise.judge``) makes of it (``ref_std``: the seed std standing in when one side has
    one seed)."""
    mean, std = e["mean"][k], e["std"][k]
    b_mean, b_std = base["mean"][k], base["std"][k]
    if e.get("diverged") or base.get("diverged"):
        which = e if e.get("diverged") else base
        its = ", ".join(f"seed {sd} at iteration {d['iteration']}"
                        for sd, d in which["diverged"].items())
        text = f"{which['label']} diverged ({its})"
        return text if label == which["label"] else f"{label}: {text}"
    if mean is None or b_mean is None:
        return f"{label}: no {k}"
    d = mean - b_mean
    j = judge(d, std, b_std, ref_std)
    if j.both_seeded:
        return f"{label} {d:+.1f} {k} ({_WORDS[j.category]}, {len(e['seeds'])} seeds)"
    if j.noise is not None:
        source = ref_label if ref_std is not None else f"its {len(e['seeds'])} seeds"
        what = "within" if j.category == NONE else "beyond"
        return f"{label} {d:+.1f} {k} (one seed; {what} twice the noise {source} show)"
    return f"{label} {d:+.1f} {k} (one seed: not separable from noise)"


def _reference(models: dict, pair: dict, k: str) -> Tuple[Optional[float], str]:
    """The seed std a single-seed difference on ``k`` is judged by: the baseline's, else the
    ``noise_from`` model's (None: no seeds to tell noise by)."""
    base = models[pair["baseline"]]
    ref = models.get(pair.get("noise_from") or "")
    if base["std"][k] is None and ref is not None and ref["std"][k] is not None:
        return ref["std"][k], f"{ref['label']}'s {len(ref['seeds'])} seeds"
    return base["std"][k], f"the baseline's {len(base['seeds'])} seeds"


def _verdict(report: dict, pair: dict) -> str:
    """One sentence: does the paper's effect appear at this scale (on ``pair['metric']``)?

    A difference is called real when it exceeds twice its seed noise: sqrt(std_a^2 + std_b^2) when
    both sides have seeds; sqrt(2) times the seeded side's std (or the ``noise_from`` model's, on
    the same schedule) when one run stands against another. The pair's ``contrasts`` (a member
    against another member, e.g. decreasing against increasing thresholds) follow the same rule,
    on ``contrast_metric`` (box AP: what the papers' ablations quote)."""
    k = pair["metric"]
    models = report["models"]
    base = models[pair["baseline"]]
    ref_std, ref_label = _reference(models, pair, k)
    parts = [_difference(models[m], base, k, ref_std, ref_label, models[m]["label"])
             for m in pair["models"][1:]]
    between = []
    kc = pair.get("contrast_metric", "AP")
    for m, other in pair.get("contrasts", []):
        e, o = models[m], models[other]
        if o["std"][kc] is not None:  # the seeded side's noise, whichever side it is
            c_std, c_label = o["std"][kc], f"{o['label']}'s {len(o['seeds'])} seeds"
        elif e["std"][kc] is not None:
            c_std, c_label = None, ""  # _difference takes e's own
        else:
            c_std, c_label = _reference(models, pair, kc)
        between.append(_difference(e, o, kc, c_std, c_label, f"{e['label']} against {o['label']}"))
    head = "Quick run (a few iterations): the numbers are meaningless. " if report["quick"] else ""
    return (f"{head}Paper: {pair['claim']}. Here, against {base['label']}: " + "; ".join(parts)
            + "." + (f" Between members: {'; '.join(between)}." if between else ""))


_HEAD = ("| model | AP | AP50 | AP75 | AP60 | AP70 | AP80 | AP90 | mask AP | params (M) | "
         "head params (M) | train s/iter (x base) | inference ms/img (x base) | peak RSS (MB) |")


def _row(e: dict, label: str, sp) -> str:
    cells = [_cell(e["mean"][k], e["std"][k]) for k in METRICS]
    head_p = "-" if e["params_head"] is None else f"{e['params_head'] / 1e6:.2f}"
    label += "".join(f" (seed {sd} diverged at iteration {d['iteration']})"
                     for sd, d in e.get("diverged", {}).items())
    speed = (f"{sp['train_s_per_iter']:.3f} (x{sp['train_ratio']:.2f}) | "
             f"{sp['infer_ms_per_image']:.1f} (x{sp['infer_ratio']:.2f})" if sp else "- | -")
    return (f"| {label} | " + " | ".join(cells) + f" | {e['params_total'] / 1e6:.2f} | "
            f"{head_p} | {speed} | {e['peak_rss_mb']:.0f} |")


def _sweep_lines(report: dict) -> list:
    sweep = report["lr_sweep"]
    grid = [f"{lr:g}" for lr in sweep["grid"]]
    lines = ["### Learning-rate sweep", "",
             f"Box AP of each family's baselines at each BASE_LR (batch "
             f"{report['schedule']['ims_per_batch']}, seed {sweep['seed']}); the family's rate "
             "is the one with the highest mean, of those at which no baseline diverged with "
             "any seed (benchmarks/README.md).", "",
             "| family | baseline | " + " | ".join(f"BASE_LR {g}" for g in grid) + " |",
             "|" + "---|" * (2 + len(grid))]
    for family, f in sweep["families"].items():
        for m, row in f["rows"].items():
            cells = [(("diverged" if c["AP"] is None else f"{c['AP']:.1f}")
                      + "".join(f" (seed {sd} diverged)" for sd in c.get("diverged_later", [])))
                     if c["done"] else "-" for c in (row[g] for g in grid)]
            lines.append(f"| {family.replace('_', '-')} | {f['labels'][m]} | "
                         + " | ".join(cells) + " |")
    lines.append("")
    for family, f in sweep["families"].items():
        rate = "not chosen yet" if f["rate"] is None else f"BASE_LR {f['rate']:g}"
        lines.append(f"- {family.replace('_', '-')}: {rate}; {f['why']}.")
    return lines + [""]


def _long_lines(report: dict) -> list:
    long = report["long_schedule"]
    if not long["rows"]:
        return []
    lines = [f"### Schedule check: {long['factor']}x the iterations, seed 1", "",
             "| model | iterations | AP | mask AP | AP at the suite's schedule, same seed |",
             "|---|---|---|---|---|"]
    parts = []
    for r in long["rows"]:
        e = report["models"][r["model"]]
        short = (e["runs"].get(str(report["seeds"][0])) or {}).get("metrics") or {}
        if r["diverged"]:
            lines.append(f"| {r['label']} | {r['max_iter']} | diverged at iteration "
                         f"{r['diverged']['iteration']} | - | {_cell(short.get('AP'))} |")
            continue
        lines.append(f"| {r['label']} | {r['max_iter']} | {_cell(r['long']['AP'])} | "
                     f"{_cell(r['long'].get('mask_AP'))} | {_cell(short.get('AP'))} |")
        if short.get("AP") is not None:
            d, std = r["long"]["AP"] - short["AP"], e["std"]["AP"]
            noise = ("one seed: noise unknown" if std is None else
                     f"{'within' if judge(d, None, None, std).category == NONE else 'beyond'} "
                     "twice the seed noise")
            parts.append(f"{r['label']} {d:+.1f} AP ({noise})")
    if len(long["rows"]) == 2 and not any(r["diverged"] for r in long["rows"]):
        a, b = long["rows"]
        ea, eb = report["models"][a["model"]], report["models"][b["model"]]
        short_order = (ea["runs"][str(report["seeds"][0])]["metrics"]["AP"]
                       < eb["runs"][str(report["seeds"][0])]["metrics"]["AP"])
        same = short_order == (a["long"]["AP"] < b["long"]["AP"])
        parts.append(f"the order of the two {'holds' if same else 'changes'}")
    lines += ["", f"From the suite's schedule to {long['factor']}x: " + "; ".join(parts) + ".", ""]
    return lines


def _plateau_row(member: dict) -> str:
    e = member["entry"]
    if e is None:
        return f"| {member['label']} | not trained yet |" + " - |" * (len(METRICS) + 2)
    label = member["label"] + "".join(f" (seed {sd} diverged at iteration {d['iteration']})"
                                      for sd, d in e.get("diverged", {}).items())
    verdicts = ("baseline | baseline" if member["baseline"] else
                f"{member['short'] or '-'} | {member['plateau'] or '-'}"
                + (" (differs)" if member["differs"] else ""))
    return (f"| {label} | {', '.join(map(str, e['seeds']))} | "
            + " | ".join(_cell(e["mean"][k], e["std"][k]) for k in METRICS) + f" | {verdicts} |")


def _plateau_sentence(group: dict) -> str:
    """Each member against the baseline at the plateau, on its pair's metric, by the noise rule
    (``_difference``: its std standing in for a single-seed side is named)."""
    by = {m["model"]: m for m in group["members"]}
    base = by[group["baseline"]]
    parts = [_difference(m["entry"], base["entry"], m["metric"], m["ref_std"], m["ref_source"],
                         m["label"])
             for m in group["members"] if not m["baseline"] and m["entry"] and base["entry"]
             and m["metric"]]
    return (f"Here, against {base['label']}: " + "; ".join(parts) + ".") if parts else ""


def _claim_line(claim: dict, group: dict) -> str:
    by = {m["model"]: m for m in group["members"]}
    e, o = by[claim["model"]], by[claim["other"]]
    if claim["d"] is None:
        return f"- Paper: {claim['text']}. At the plateau: not trained yet (or diverged)."
    text = _difference(e["entry"], o["entry"], "AP", claim["ref_std"], claim["ref_source"],
                       f"{e['label']} against {o['label']}")
    if claim["kind"] == "within":
        text += (f"; |d| {abs(claim['d']):.1f} {'<=' if claim['holds'] else '>'} "
                 f"{claim['margin']:g}")
    return (f"- Paper: {claim['text']}. At the plateau: {text}: "
            f"{'holds' if claim['holds'] else 'does not hold'}.")


def _plateau_lines(report: dict) -> list:
    """The primary results: each curve group at its plateau schedule, its verdicts, the seeds
    still to train and the paper's claims."""
    lines = ["### At the plateau (primary)", "",
             "Each learning-curve group at its plateau schedule (the baseline's curve, "
             "`benchmarks/curves.py`): every member with the first seed; the seeded models, and a "
             "member whose verdict there differs from its verdict at the schedule (with the "
             "baseline), with every seed (mean ± std). Verdicts on the metric of the member's "
             "pair, by the Results' noise rule; a single-seed side is held against the std named "
             "(a baseline's seeds at the schedule stand in for the noise at the plateau).", ""]
    iters = " or ".join(map(str, report["schedule"]["max_iter"]))
    for g in report["plateau"]:
        base = next(m for m in g["members"] if m["baseline"])["entry"]
        where = (f", {base['max_iter']} iterations, BASE_LR {base['lr']:g}" if base else "")
        lines += [f"#### {g['title']}: {g['factor']}x the schedule{where}", "",
                  f"Plateau: {g['why']}.", "",
                  "| model | seeds | AP | AP50 | AP75 | AP60 | AP70 | AP80 | AP90 | mask AP | "
                  f"verdict at {iters} iterations | verdict at the plateau |", "|" + "---|" * 12]
        lines += [_plateau_row(m) for m in g["members"]] + [""]
        sentence = _plateau_sentence(g)
        lines += [sentence, ""] if sentence else []
        todo = [f"{m['label']} seed{'s' if len(m['seeds_missing']) > 1 else ''} "
                f"{', '.join(map(str, m['seeds_missing']))}"
                for m in g["members"] if m["seeds_missing"]]
        waiting = [m["label"] for m in g["members"] if m["undecided"]]
        if todo or waiting:
            lines += ["Still to train: " + ("; ".join(todo) or "none decided yet")
                      + (f"; more seeds of {', '.join(waiting)} if a verdict at the plateau "
                         "differs from the schedule's" if waiting else "") + ".", ""]
        if g["claims"]:
            lines += ["The paper's claims, on these numbers (box AP):", ""]
            lines += [_claim_line(x, g) for x in g["claims"]] + [""]
    return lines


def _dates(report: dict) -> str:
    """The days the shown records were made (a suite may run in several parts, on several
    days), and the report's own day when it differs."""
    days = report.get("dates") or []
    if not days:
        return report["date"]
    text = " to ".join(days)
    return text if days[-1] == report["date"] else f"{text} (report written {report['date']})"


def render_markdown(report: dict) -> str:
    """The "Results" section of docs/RESULTS.md: command, machine, date, the curve groups at
    their plateau (primary, when the report has any), the LR sweep, one table and sentence per
    pair (extra rows for diverged members at their own rate; the short-budget comparison when
    there are plateau results), the schedule check, the ablations."""
    s = report["schedule"]
    data = "; ".join(f"trained on {', '.join(d['train'])}, evaluated on {', '.join(d['test'])}"
                     for d in s["datasets"])
    rates = "; ".join(f"{f.replace('_', '-')} "
                      + ("not chosen yet" if r["rate"] is None else f"{r['rate']:g}")
                      for f, r in report["rates"].items())
    lines = [
        "## Results", "",
        "- Command: " + (", then ".join(f"`{c}`" for c in report.get("commands",
                                                                      [report["command"]]))
                         or "none yet (no record)") + (
            f" (the records); this text: `{report['written_by']}`"
            if report.get("written_by") else ""),
        f"- Machine: {'; '.join(report.get('machines') or [report['machine']])}",
        f"- Date: {_dates(report)}",
        f"- Schedule: {' or '.join(map(str, s['max_iter']))} iterations at batch "
        f"{s['ims_per_batch']} ({data}); seeds {report['seeds']} (the pairs' seeded models over "
        "all seeds, mean ± std; the others on the first seed).",
        f"- BASE_LR by family, from the sweep below: {rates}.",
        f"- Speed: {report['speed']}.",
        f"- Memory: {report['memory']}.", "",
    ]
    if not report.get("complete", True):
        lines += [f"Partial report: {len(report['missing'])} pieces of the suite are missing "
                  "(listed in the report's json, `missing`).", ""]
    if report.get("note"):
        lines += [report["note"], ""]
    plateau = bool(report.get("plateau"))
    lines += _plateau_lines(report) if plateau else []
    lines += _sweep_lines(report)
    if plateau:
        lines += [f"### Short-budget comparison: {' or '.join(map(str, s['max_iter']))} "
                  "iterations", "",
                  "The configs' schedule, short of convergence (the learning curves above): "
                  "the comparison at a short budget.", ""]
    for pair in report["pairs"]:
        lines += [f"### {pair['title']}{' (headline)' if pair['headline'] else ''}, "
                  f"{pair['max_iter']} iterations, BASE_LR {pair['lr']:g}", "", _HEAD,
                  "|" + "---|" * 14]
        for m in pair["models"]:
            lines.append(_row(report["models"][m], report["models"][m]["label"],
                              pair["speed"].get(m)))
        for m in pair.get("extras", []):
            x = report["extras"][m]
            lines.append(_row(x, f"(extra) {x['label']} at BASE_LR {x['lr']:g}, its own best "
                                 "rate of the grid", None))
        lines += ["", _verdict(report, pair)
                  + ("" if pair["same_data_order"] else
                     " (Warning: the members of this pair were not fed identical batches.)"), ""]
    lines += _long_lines(report)
    for ab in report["ablations"]:
        lines += [f"### {ab['title']}", "",
                  f"Eval-only, weights of {report['models'][ab['model']]['label']} (first seed), "
                  f"`{ab['key']}` varied.", "",
                  f"| {ab['key']} | AP | AP50 | AP75 | AP60 | AP70 | AP80 | AP90 | mask AP |",
                  "|" + "---|" * 9]
        for r in ab["rows"]:
            lines.append(f"| {r['value']} | " + " | ".join(_cell(r.get(k)) for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


RESULTS_BEGIN = "<!-- benchmarks/run.py results: begin -->"
RESULTS_END = "<!-- benchmarks/run.py results: end -->"


def replace_results_section(path: str, text: str) -> None:
    """Put ``text`` between the ``RESULTS_BEGIN`` and ``RESULTS_END`` lines of the Markdown file
    ``path`` (e.g. docs/RESULTS.md), replacing what was there; the rest of the file is kept."""
    with open(path) as f:
        lines = f.read().split("\n")
    try:
        begin, end = lines.index(RESULTS_BEGIN), lines.index(RESULTS_END)
    except ValueError:
        raise SystemExit(f"{path}: needs the lines {RESULTS_BEGIN!r} and {RESULTS_END!r} "
                         "around its Results section") from None
    if end < begin:
        raise SystemExit(f"{path}: {RESULTS_END!r} comes before {RESULTS_BEGIN!r}")
    lines[begin + 1:end] = text.rstrip("\n").split("\n")
    with open(path, "w") as f:
        f.write("\n".join(lines))


