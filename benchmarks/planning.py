"""Planning: the pieces the protocol asks of a suite (trainings, speed comparisons, eval-only
ablations), in order, with what each needs, what is done already (the committed records) and how
long the rest should take.

Order: (1) the LR sweep of each family's baselines; then, for the families whose rate is chosen,
(2) pair by pair, every member with the first seed, the pair's speed and its ablations; (3) the
seeded models with the other seeds, pair by pair, the cheapest pair first; (4) the long-schedule
check; (5) a member that diverged at its family's rate, at the other rates of the grid (its own
best one is an extra row); (6) the learning curves, group by group, each to the suite's
``curve_factor`` times the schedule; (7) once a group's baseline curve is in, at its plateau
schedule (``curves.plateau_factor``): every member of the group with the first seed, the group's
seeded models with the other seeds, and the other members with the other seeds too when their
verdict there differs from their verdict at the schedule (``Planner.plateau_seeded``; with the
baseline's other seeds then, if it is not seeded). That is decided once the first seed of the
member and of the baseline are in at the plateau; until then those seeds are planned "waiting".
"""
import os
import statistics
from dataclasses import dataclass, field
from glob import glob
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from curves import MIN_GAIN, plateau_factor, plateau_iteration
from lr_sweep import choose_rate, own_best_rate
from records import REPO, config_changes, config_dict, read_json, read_json_or_none
from seed_noise import first_std, judge, mean_std
from suites import Ablation, Curve, Pair, Suite

__all__ = ["Run", "Piece", "Stats", "Planner", "QUICK_OPTS", "schedule_opts", "format_duration"]

# --quick: a few iterations on the mini splits, so the whole pipeline runs in CI.
QUICK_OPTS = [
    "DATASETS.TRAIN", '("shapes_mini_train",)', "DATASETS.TEST", '("shapes_mini_val",)',
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "0",
]
# Estimates for a model never timed: s/iteration by family, and model building + evaluation.
_GUESS_S_PER_ITER = {"two_stage": 0.6, "single_stage": 0.23}
_GUESS_OVERHEAD_S = 120.0


@dataclass(frozen=True)
class Run:
    """One training. ``lr`` None: its family's rate is not chosen yet; ``factor``: a multiple of
    the schedule (the long-schedule check)."""

    model: str
    seed: int
    lr: Optional[float]
    factor: int = 1

    @property
    def name(self) -> str:
        lr = "?" if self.lr is None else f"{self.lr:g}"
        factor = "" if self.factor == 1 else f"-x{self.factor}"
        return f"{self.model}-lr{lr}{factor}-seed{self.seed}"


@dataclass
class Piece:
    """One child process: kind "train" (``run``), "speed" (``pair``) or "ablation"
    (``ablation``). ``why``: its phase, or, for a training that only restores weights, the piece
    that needs them. ``status``: "done", "todo", "waiting (...)" or "stale (...)"."""

    kind: str
    why: str
    run: Optional[Run] = None
    pair: Optional[Pair] = None
    ablation: Optional[Ablation] = None
    status: str = "todo"
    runs: Dict[str, Run] = field(default_factory=dict)  # speed/ablation: model -> the run timed

    @property
    def name(self) -> str:
        return (self.run.name if self.kind == "train" else
                f"speed-{self.pair.name}" if self.kind == "speed" else
                f"ablation-{self.ablation.name}")


class Stats(NamedTuple):
    """One metric of a model over its recorded seeds (``seed_noise.mean_std``); ``diverged``: a
    seed diverged; ``max_iter``: the first record's iterations."""

    mean: Optional[float]
    std: Optional[float]
    seeds: List[int]
    diverged: bool
    max_iter: Optional[int]


def schedule_opts(max_iter: int, base_iter: int = 1500, base_steps=(1100, 1350),
                  warmup: Optional[int] = None) -> List[str]:
    """The configs' schedule (``base_iter``, LR steps ``base_steps``) scaled to ``max_iter``."""
    steps = tuple(round(max_iter * s / base_iter) for s in base_steps)
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(min(100, max_iter // 10) if warmup is None else warmup)]


def _category(a: Optional[Stats], b: Optional[Stats], ref_std: Optional[float]) -> Optional[str]:
    """``seed_noise.judge``'s category of ``a`` against ``b``; None: a side diverged or lacks the
    metric."""
    if a is None or b is None or a.diverged or b.diverged or a.mean is None or b.mean is None:
        return None
    return judge(a.mean - b.mean, a.std, b.std, ref_std).category


def format_duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Planner:
    """The suite's pieces given the records in ``records_dir`` and the weights in ``work``."""

    def __init__(self, suite: Suite, seeds: List[int], records_dir: str, work: str,
                 quick: bool = False, max_iter: Optional[int] = None, extra_opts=(),
                 tag: str = ""):
        if suite.lr_sweep is None:
            raise ValueError(f"suite {suite.name!r} has no LR sweep: the protocol needs one")
        self.suite, self.seeds, self.records_dir, self.work = suite, list(seeds), records_dir, work
        self.quick, self.max_iter, self.extra_opts = quick, max_iter, list(extra_opts)
        self.tag = tag or suite.name  # names the records' folder and the report
        self._configs: Dict[str, dict] = {}

    # -- runs, their opts and records ------------------------------------------------------------
    def record_path(self, run: Run) -> str:
        return os.path.join(self.records_dir, f"{run.name}.json")

    def record(self, run: Run) -> Optional[dict]:
        return read_json_or_none(self.record_path(run))

    def run_dir(self, run: Run) -> str:
        return os.path.join(self.work, run.name)

    def weights(self, run: Run) -> str:
        return os.path.join(self.run_dir(run), "model_final.pth")

    def opts(self, run: Run) -> List[str]:
        """The opts that define a run (what its record stores): the model's, the schedule, the
        rate, ``--opts`` and the seed."""
        m = self.suite.models[run.model]
        opts = list(m.opts)
        if self.quick:
            opts += QUICK_OPTS
        elif self.max_iter or self.suite.max_iter:
            opts += schedule_opts((self.max_iter or self.suite.max_iter) * run.factor)
        elif run.factor != 1:
            from train_net import build_cfg

            cfg = build_cfg(os.path.join(REPO, m.config), list(m.opts))
            opts += schedule_opts(cfg.SOLVER.MAX_ITER * run.factor, cfg.SOLVER.MAX_ITER,
                                  tuple(cfg.SOLVER.STEPS), warmup=cfg.SOLVER.WARMUP_ITERS)
        if self.suite.curves and run.factor == self.suite.curve_factor:
            # a learning curve's schedule: evaluated every 1x of the schedule
            period = 1 if self.quick else (self.max_iter or self.suite.max_iter
                                           or self.suite.curve_eval_period)
            opts += ["TEST.EVAL_PERIOD", str(period)]
        opts += ["SOLVER.BASE_LR", f"{run.lr:g}"] + self.extra_opts
        return opts + ["SEED", str(run.seed)]

    def config_now(self, run: Run) -> dict:
        """The merged config the suite would train ``run`` with now."""
        if run.name not in self._configs:
            from train_net import build_cfg

            cfg = build_cfg(os.path.join(REPO, self.suite.models[run.model].config),
                            self.opts(run))
            self._configs[run.name] = config_dict(cfg)
        return self._configs[run.name]

    def changes(self, run: Run, record: dict) -> List[str]:
        """How the config ``record`` was trained with differs from what the suite trains now."""
        return config_changes(record["merged_config"], self.config_now(run))

    def box_ap(self, run: Run) -> Tuple[bool, Optional[float]]:
        """(finished, box AP or None if it diverged) of a run, from its record."""
        r = self.record(run)
        if r is None:
            return False, None
        return True, (None if r.get("diverged") else r["metrics"]["AP"])

    # -- the protocol ----------------------------------------------------------------------------
    def diverged_later(self, model: str, lr: float) -> List[int]:
        """The seeds after the first at which ``model`` diverged at ``lr``."""
        return [s for s in self.seeds[1:] if self.box_ap(Run(model, s, lr)) == (True, None)]

    def sweep_results(self, models) -> Dict[Tuple[str, float], Optional[float]]:
        """(model, rate) -> first-seed box AP; None when the model diverged there at any seed: a
        rate that trains one seed and not another is no rate to compare methods at."""
        out = {}
        for m in models:
            for lr in self.suite.lr_sweep.grid:
                done, ap = self.box_ap(Run(m, self.seeds[0], lr))
                if done:
                    out[(m, lr)] = None if self.diverged_later(m, lr) else ap
        return out

    def family_rate(self, family: str) -> Tuple[Optional[float], str]:
        sweep = self.suite.lr_sweep
        baselines = sweep.baselines[family]
        lr, why = choose_rate(sweep.grid, baselines, self.sweep_results(baselines))
        later = [f"{m} at {r:g} with seed {', '.join(map(str, seeds))}" for m in baselines
                 for r in sweep.grid for seeds in [self.diverged_later(m, r)] if seeds]
        if later:
            why += ("; a rate is out when a baseline diverges there with any seed: "
                    + "; ".join(later))
        return lr, why

    def rates(self) -> Dict[str, Tuple[Optional[float], str]]:
        return {f: self.family_rate(f) for f in self.suite.lr_sweep.baselines}

    def main_run(self, model: str, seed: int, rates=None) -> Run:
        rates = rates or self.rates()
        return Run(model, seed, rates[self.suite.models[model].family][0])

    def diverged_members(self, rates) -> List[str]:
        """Models whose first-seed run at their family's rate diverged."""
        out = []
        for m in self.suite.models:
            run = self.main_run(m, self.seeds[0], rates)
            if run.lr is not None:
                r = self.record(run)
                if r is not None and r.get("diverged"):
                    out.append(m)
        return out

    def own_rate(self, model: str) -> Tuple[Optional[float], str]:
        return own_best_rate(self.suite.lr_sweep.grid, model, self.sweep_results([model]))

    def pieces(self) -> List[Piece]:
        """Every piece of the suite in order, each with its status."""
        suite, seeds, sweep = self.suite, self.seeds, self.suite.lr_sweep
        rates = self.rates()
        pieces: List[Piece] = []
        seen = set()

        def train(run: Run, why: str) -> None:
            if (run.lr is None and run.seed == seeds[0] and run.factor == 1
                    and run.model in sweep.baselines[suite.models[run.model].family]):
                return  # one of the sweep's runs, once the rate is chosen
            if run.name not in seen:
                seen.add(run.name)
                pieces.append(Piece("train", why, run=run))

        # (1) the sweep: single-stage first (cheap), each family's rates in grid order
        for family in sorted(sweep.baselines, key=lambda f: f != "single_stage"):
            for lr in sweep.grid:
                for m in sweep.baselines[family]:
                    train(Run(m, seeds[0], lr), f"LR sweep ({family})")
        # (2) pair by pair, first seed, speed, ablations
        for p in suite.pairs:
            for m in p.models:
                train(self.main_run(m, seeds[0], rates), f"pair {p.name}")
            if p.timed:
                pieces.append(Piece("speed", f"pair {p.name}", pair=p,
                                    runs={m: self.main_run(m, seeds[0], rates)
                                          for m in p.models}))
            for a in suite.ablations:
                if a.model in p.models and not any(x.ablation is a for x in pieces):
                    pieces.append(Piece("ablation", f"pair {p.name}", ablation=a,
                                        runs={a.model: self.main_run(a.model, seeds[0], rates)}))
        for a in suite.ablations:  # on a model of no selected pair
            if not any(x.ablation is a for x in pieces):
                train(self.main_run(a.model, seeds[0], rates), f"ablation {a.name}")
                pieces.append(Piece("ablation", f"ablation {a.name}", ablation=a,
                                    runs={a.model: self.main_run(a.model, seeds[0], rates)}))
        # (3) the other seeds, pair by pair, so that a run that stops has finished whole verdicts
        # (mean ± std of every seeded member) rather than one more seed of every pair; the
        # cheapest pair first (its seeded models' estimated time per seed). The estimate uses the
        # first seed's records only, so the order stays put as the other seeds' records come in.
        timings = self.timings(first_seed_only=True)

        def per_seed_s(p: Pair) -> float:
            return sum(self.estimate_s(Piece("train", "", run=self.main_run(m, seeds[0], rates)),
                                       timings)[0] for m in p.models_over_seeds())

        for p in sorted((p for p in suite.pairs if p.models_over_seeds()), key=per_seed_s):
            for seed in seeds[1:]:
                for m in p.models_over_seeds():
                    train(self.main_run(m, seed, rates), f"seed {seed} of pair {p.name}")
        # (4) the long-schedule check
        for m in suite.long_schedule:
            run = self.main_run(m, seeds[0], rates)
            train(Run(m, seeds[0], run.lr, suite.long_factor), f"{suite.long_factor}x schedule")
        # (5) diverged members at the other rates of the grid
        for m in self.diverged_members(rates):
            for lr in sweep.grid:
                train(Run(m, seeds[0], lr), "own rate (diverged at its family's)")
        # (6) the learning curves; (7) each group at its baseline's plateau (plateau_seeded)
        for c in suite.curves:
            for m in c.models:
                run = self.main_run(m, seeds[0], rates)
                train(Run(m, seeds[0], run.lr, suite.curve_factor), f"learning curve {c.name}")
        waiting: Dict[str, str] = {}  # run name -> its status while its seeds are undecided
        for c in suite.curves:
            factor = self.plateau(c)[0]
            if factor is None:
                continue
            why = f"at the plateau ({factor}x) of {c.name}"
            for m in c.models:
                train(Run(m, seeds[0], self.main_run(m, seeds[0], rates).lr, factor),
                      f"seed {seeds[0]} {why}")
            more, undecided = self.plateau_seeded(c, factor, rates)
            for seed in seeds[1:]:
                for m, because in more + undecided:
                    run = Run(m, seed, self.main_run(m, seed, rates).lr, factor)
                    train(run, f"seed {seed} {why}" + (f": {because}" if because else ""))
                    if (m, because) in undecided:
                        waiting[run.name] = (
                            f"waiting (seed {seeds[0]} of it and of {c.models[0]} at the plateau "
                            "decide: more seeds only if a verdict there differs from the "
                            "schedule's)")
        for piece in pieces:
            piece.status = self._status(piece)
            if piece.status == "todo" and piece.kind == "train" and piece.name in waiting:
                piece.status = waiting[piece.name]
        return self._with_weight_trainings(pieces)

    def curve(self, model: str) -> Optional[List[dict]]:
        """The learning-curve points of ``model`` (first seed), None until its curve run is in."""
        run = self.main_run(model, self.seeds[0])
        if run.lr is None:
            return None
        r = self.record(Run(model, self.seeds[0], run.lr, self.suite.curve_factor))
        return None if r is None or r.get("diverged") else r.get("curve")

    def plateau(self, curve) -> Tuple[Optional[int], str]:
        """(the plateau schedule as a multiple of the schedule, why) of a curve group, from its
        baseline's curve; (None, why) while that curve is not in."""
        points = self.curve(curve.models[0])
        if not points:
            return None, f"waiting for {curve.models[0]}'s learning curve"
        period = points[0]["iteration"]  # the first evaluation is at 1x the schedule
        return plateau_factor(points, period, self.suite.curve_factor)

    # -- the verdicts at the plateau ----------------------------------------------------------
    def stats(self, model: str, seeds: Sequence[int], lr: Optional[float], factor: int = 1,
              metric: str = "AP") -> Optional[Stats]:
        """``metric`` of ``model`` at ``lr`` and ``factor`` times the schedule over the seeds of
        ``seeds`` recorded; None until the first of them is."""
        if lr is None or self.record(Run(model, seeds[0], lr, factor)) is None:
            return None
        recs = [r for r in (self.record(Run(model, s, lr, factor)) for s in seeds) if r]
        mean, std = mean_std([r["metrics"].get(metric) for r in recs if not r.get("diverged")])
        return Stats(mean, std, [r["seed"] for r in recs], any(r.get("diverged") for r in recs),
                     recs[0].get("max_iter"))

    def member_verdict(self, curve: Curve, model: str, factor: int,
                       seeds: Optional[Sequence[int]] = None, rates=None) -> Optional[dict]:
        """A curve member against the group's baseline, on the metric of its pair
        (``Suite.member_pair``; box AP without one), by the noise rule (``seed_noise.judge``):
        {"pair", "metric", "short", "plateau", "d", "ref_std", "ref_source"}: the category
        ("gain", "loss", "none"; None: a side diverged or lacks the metric) at the schedule
        (every seed recorded) and at the plateau ``factor`` (the ``seeds`` recorded there, all
        by default), the plateau's difference and the std standing in for a side with one seed.
        None until the first seed of the member and of the baseline are recorded at both.

        At the schedule the noise is the Results' (the baseline's seed std stands in for a
        single-seed side, else the pair's ``noise_from`` model's). At the plateau a side with one
        seed is judged by the first std known of: the baseline's seeds there, the member's
        there, the baseline's at the schedule, the ``noise_from`` model's at the schedule (the
        last two stand in for the noise at the plateau, not measured for single-seed models)."""
        rates = rates or self.rates()
        base, pair = curve.models[0], self.suite.member_pair(curve, model)
        k, lr = (pair.metric if pair else "AP"), self.main_run(base, self.seeds[0], rates).lr
        short = [self.stats(m, self.seeds, lr, 1, k) for m in (model, base)]
        at = [self.stats(m, seeds or self.seeds, lr, factor, k) for m in (model, base)]
        if None in short + at:
            return None
        short_ref = first_std((short[1].std, ""), *self._noise_from(pair, k, lr))[0]
        plateau_ref = first_std((at[0].std, f"its {len(at[0].seeds)} seeds"),
                                *self.plateau_noise(curve, k, factor, seeds, rates, model))
        d = None if at[0].mean is None or at[1].mean is None else at[0].mean - at[1].mean
        return {"pair": pair.name if pair else None, "metric": k,
                "short": _category(short[0], short[1], short_ref),
                "plateau": _category(at[0], at[1], plateau_ref[0]),
                "d": d, "ref_std": plateau_ref[0], "ref_source": plateau_ref[1]}

    def plateau_noise(self, curve: Curve, metric: str, factor: int,
                      seeds: Optional[Sequence[int]] = None, rates=None,
                      model: Optional[str] = None) -> List[Tuple[Optional[float], str]]:
        """(std, where it comes from) for a single-seed side at the plateau on ``metric``, in
        order (``seed_noise.first_std`` takes the first known): the group baseline's seeds at
        the plateau, its seeds at the schedule, the ``noise_from`` model's at the schedule (of
        the pair of ``model``, ``Suite.member_pair``); the last two stand in for the noise at the
        plateau."""
        rates = rates or self.rates()
        base = curve.models[0]
        lr = self.main_run(base, self.seeds[0], rates).lr
        at = self.stats(base, seeds or self.seeds, lr, factor, metric)
        short = self.stats(base, self.seeds, lr, 1, metric)
        iters = f"at {short.max_iter if short else '?'} iterations (a stand-in)"
        pair = self.suite.member_pair(curve, model) if model else None
        return [(at and at.std, f"the baseline's {len(at.seeds) if at else 0} seeds"),
                (short and short.std, f"the baseline's {len(short.seeds) if short else 0} seeds "
                                      f"{iters}")] + [
            (std, f"{src} {iters}") for std, src in self._noise_from(pair, metric, lr)]

    def _noise_from(self, pair: Optional[Pair], metric: str,
                    lr: Optional[float]) -> List[Tuple[Optional[float], str]]:
        """[(the std of ``pair``'s ``noise_from`` model at the schedule, "<its label>'s n
        seeds")], or [] without one."""
        if pair is None or not pair.noise_from:
            return []
        st = self.stats(pair.noise_from, self.seeds, lr, 1, metric)
        return [(st and st.std, f"{self._label(pair.noise_from)}'s {len(st.seeds) if st else 0} "
                                "seeds")]

    def _label(self, model: str) -> str:
        m = self.suite.models.get(model)  # a noise_from model may be out of a selection
        return m.label if m else model

    def plateau_seeded(self, curve: Curve, factor: int,
                       rates=None) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
        """The members of ``curve`` trained with every seed at its plateau ``factor``, each with
        why ("" for the group's seeded models), and those still undecided: a member that is not
        seeded gets every seed when its verdict at the plateau (first seed, against the
        baseline's: ``member_verdict``) differs from its verdict at the schedule, and the
        baseline then too; undecided while that first seed of it or of the baseline is missing.
        A side that diverged has no verdict: no more seeds for it."""
        base, seeded = curve.models[0], list(curve.seeded)
        flips, undecided = [], []
        for m in curve.models[1:]:
            if m in seeded:
                continue
            v = self.member_verdict(curve, m, factor, self.seeds[:1], rates)
            if v is None:
                undecided.append((m, "if its verdict there differs"))
            elif v["short"] and v["plateau"] and v["short"] != v["plateau"]:
                flips.append((m, f"its verdict there differs ({v['short']} at the schedule, "
                                 f"{v['plateau']} there)"))
        more = [(m, "") for m in seeded]
        if base not in seeded and flips:
            more.insert(0, (base, "a member's verdict there differs"))
        elif base not in seeded and undecided:
            undecided.insert(0, (base, "if a member's verdict there differs"))
        return more + flips, undecided

    def curve_stop(self, run: Run) -> Optional[dict]:
        """The stopping rule of a learning-curve run (``curves.stop_reason``; the first seed at
        ``curve_factor``): a group's baseline stops once its curve has flattened; the other
        members stop at the iteration where their baseline's did, once it has (until then, and
        for any other run: None, the whole schedule)."""
        if (not self.suite.curves or run.factor != self.suite.curve_factor
                or run.seed != self.seeds[0]):
            return None
        groups = [c for c in self.suite.curves if run.model in c.models]
        if any(c.models[0] == run.model for c in groups):
            return {"rule": "plateau", "min_gain": MIN_GAIN}
        for c in groups:
            it, flat = plateau_iteration(self.curve(c.models[0]) or [])
            if flat:
                return {"at": it}
        return None

    # -- status ----------------------------------------------------------------------------------
    def _status(self, piece: Piece) -> str:
        if piece.kind == "train":
            if piece.run.lr is None:
                return "waiting (its family's rate: after the LR sweep)"
            r = self.record(piece.run)
            if r is None:
                return "todo"
            changed = self.changes(piece.run, r)
            return f"stale ({'; '.join(changed)})" if changed else "done"
        runs = {m: r for m, r in piece.runs.items()}
        if any(r.lr is None for r in runs.values()):
            return "waiting (the LR sweep)"
        records = {m: self.record(r) for m, r in runs.items()}
        if any(rec is None for rec in records.values()):
            return "waiting (its trainings)"
        trained = {m: rec for m, rec in records.items() if not rec.get("diverged")}
        if piece.kind == "speed":
            if len(trained) < 2 or piece.pair.models[0] not in trained:
                return "done"  # nothing to compare: a diverged baseline or all members diverged
            have = read_json_or_none(os.path.join(self.records_dir, f"{piece.name}.json"))
            want = {m: {"run": rec["run"], "config_digest": rec["config_digest"]}
                    for m, rec in trained.items()}
            return "done" if have is not None and have.get("runs") == want else "todo"
        if not trained:
            return "done"  # the model diverged: no weights to evaluate
        rec = trained[piece.ablation.model]
        folder = os.path.join(self.records_dir, piece.name)
        rows = [read_json_or_none(os.path.join(folder, f"{v}.json")) for v in piece.ablation.values]
        ok = all(r is not None and r.get("run") == rec["run"]
                 and r.get("config_digest") == rec["config_digest"] for r in rows)
        return "done" if ok else "todo"

    def _with_weight_trainings(self, pieces: List[Piece]) -> List[Piece]:
        """A speed or ablation piece to do needs the trained weights of its runs, which stay on
        the machine that trained them: a finished run whose weights are gone is trained again
        (same config, into the work dir; its record stays) just before the piece."""
        out: List[Piece] = []
        queued = set()
        for piece in pieces:
            if piece.kind != "train" and piece.status == "todo":
                for m, run in piece.runs.items():
                    rec = self.record(run)
                    if (not rec.get("diverged") and not os.path.isfile(self.weights(run))
                            and run.name not in queued):
                        queued.add(run.name)
                        out.append(Piece("train", f"weights for {piece.name}", run=run,
                                         status="todo"))
            out.append(piece)
        return out

    # -- time ------------------------------------------------------------------------------------
    def timings(self, first_seed_only: bool = False) -> Dict[str, Tuple[float, float]]:
        """model -> (median s/iteration, median seconds of a run besides its iterations), from
        this suite's records (``first_seed_only``: the first seed's), else from the reports in
        benchmarks/results/*.json."""
        per_model: Dict[str, List[Tuple[float, float]]] = {}

        def add(model, r):
            s, wall, iters = (r.get("train_s_per_iter_median"), r.get("train_and_eval_wall_s"),
                              r.get("max_iter"))
            if first_seed_only and r.get("seed") != self.seeds[0]:
                return
            if s and wall and iters and not r.get("diverged") and not r.get("resumed_from_iter"):
                per_model.setdefault(model, []).append((s, max(wall - s * iters, 0.0)))

        for path in sorted(glob(os.path.join(self.records_dir, "*.json"))):
            r = read_json(path)
            if "run" in r and "model" in r:
                add(r["model"], r)
        recorded = set(per_model)
        for path in sorted(glob(os.path.join(REPO, "benchmarks", "results", "*.json"))):
            for model, entry in read_json(path).get("models", {}).items():
                if model not in recorded:
                    for r in entry.get("runs", {}).values():
                        add(model, r)
        return {m: (statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals))
                for m, vals in per_model.items()}

    def estimate_s(self, piece: Piece, timings) -> Tuple[float, bool]:
        """(seconds, measured?) of one piece; speed ~1 min per member, an ablation value ~40 s."""
        if piece.kind == "speed":
            return 60.0 * len(piece.pair.models), True
        if piece.kind == "ablation":
            return 40.0 * len(piece.ablation.values), True
        m = self.suite.models[piece.run.model]
        t = timings.get(m.name) or timings.get(m.timed_like)
        iters = (3 if self.quick else (self.max_iter or self.suite.max_iter or 1500)
                 * piece.run.factor)
        # a learning curve evaluates once per 1x of its schedule: that many times the overhead;
        # a member of a group whose baseline has flattened stops where the baseline did
        evals = piece.run.factor if self.suite.curves and piece.run.factor == \
            self.suite.curve_factor else 1
        stop_at = (self.curve_stop(piece.run) or {}).get("at")
        if stop_at and not self.quick:
            evals = max(1, round(evals * stop_at / iters))
            iters = stop_at
        if t is None:
            return iters * _GUESS_S_PER_ITER[m.family] + evals * _GUESS_OVERHEAD_S, False
        return iters * t[0] + evals * t[1], True
