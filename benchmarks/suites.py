"""The benchmark suites of ``benchmarks/run.py``: which models, grouped into comparisons ("pairs"),
which eval-only ablations, and the protocol's learning-rate sweep and long-schedule check.

A model is a config of ``configs/`` plus command-line opts; it is trained once per seed and may
appear in several pairs (e.g. Faster R-CNN is the baseline of the offset-bin pair and of the sampler
pair; it is trained once). The first model of a pair is its baseline: AP differences and speed
ratios are taken against it. A pair's ``seeded`` models are repeated over every seed; the others
run with the first seed only.

Every model belongs to a family (two-stage, single-stage) and trains at its family's BASE_LR,
chosen by the LR sweep of the family's baselines (``LRSweep``, rule in ``lr_sweep.py``); the
members of a pair are of one family, so they share the rate and the schedule.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["Model", "Pair", "Ablation", "LRSweep", "Claim", "Curve", "Suite", "SUITES",
           "get_suite"]

TWO_STAGE, SINGLE_STAGE = "two_stage", "single_stage"


@dataclass(frozen=True)
class Model:
    """One trained model: ``config`` (relative to the repository) with ``opts`` merged on top.
    ``family`` decides its learning rate; ``timed_like`` names a model whose measured speed stands
    in for its own in ``--plan``'s estimate until it has been trained."""

    name: str
    config: str
    label: str  # what the tables call it
    opts: Tuple[str, ...] = ()
    family: str = TWO_STAGE
    timed_like: str = ""


@dataclass(frozen=True)
class Pair:
    """A comparison: ``models[0]`` is the baseline of the others (same rate, schedule, seed, data
    order).

    ``claim`` is the paper's effect, and ``metric`` the result key it is about (e.g. "AP" or
    "AP80"): the Results text says whether the effect appears at this scale. ``seeded`` models are
    trained with every seed of the suite. A pair whose baseline has one seed may name
    ``noise_from``, a seeded model of the same family whose seeds' std stands in for the seed
    noise of its differences. ``contrasts`` are (member, other member) differences that the claim
    is also about (decreasing against increasing thresholds, expectation against argmax), judged
    by the same noise rule on ``contrast_metric`` (box AP: what the papers' ablations quote).
    """

    name: str
    title: str
    models: Tuple[str, ...]
    claim: str
    metric: str = "AP"
    headline: bool = False
    seeded: Tuple[str, ...] = ()
    noise_from: str = ""
    contrasts: Tuple[Tuple[str, str], ...] = ()
    contrast_metric: str = "AP"
    timed: bool = True  # False: no speed comparison (a diagnosis, not a method against a baseline)

    def models_over_seeds(self) -> Tuple[str, ...]:
        """The models trained with every seed."""
        return self.seeded


@dataclass(frozen=True)
class Ablation:
    """Eval-only sweep of one config key on the trained weights of one model of the suite."""

    name: str
    title: str
    model: str
    key: str
    values: Tuple[float, ...]


@dataclass(frozen=True)
class LRSweep:
    """The protocol's first phase: each family's ``baselines`` trained at every BASE_LR of
    ``grid`` (first seed, the suite's schedule); the family's rate is chosen from them."""

    grid: Tuple[float, ...]
    baselines: Dict[str, Tuple[str, ...]]  # family -> its baselines


CLAIM_KINDS = ("beats", "close", "within")


@dataclass(frozen=True)
class Claim:
    """A paper's claim on two members of a curve group, stated at the plateau on box AP by the
    noise rule (``seed_noise.judge``): ``kind`` "beats" (``model`` a real gain over ``other``),
    "close" (no real loss: within the seed noise, or ahead) or "within" (|difference| <=
    ``margin`` AP). ``text``: the paper's words."""

    text: str
    model: str
    other: str
    kind: str
    margin: float = 0.0

    def holds(self, d: float, category: str) -> bool:
        """Whether the claim holds for a difference ``d`` (``model`` minus ``other``) that the
        noise rule calls ``category`` ("gain", "loss" or "none")."""
        return {"beats": category == "gain", "close": category != "loss",
                "within": abs(d) <= self.margin}[self.kind]


@dataclass(frozen=True)
class Curve:
    """A learning curve: ``models`` (``models[0]`` the baseline) trained once, first seed, at the
    suite's ``curve_factor`` times the schedule (the LR steps scaled), evaluated every
    ``curve_eval_period`` iterations on the test set. The baseline's curve decides the plateau
    schedule (``curves.plateau_factor``); every member is trained there with the first seed,
    ``seeded`` models with every seed, and the others with every seed too when their verdict
    there differs from the one at the schedule (``planning.Planner.plateau_seeded``).
    ``claims``: the paper's claims stated on the plateau's numbers."""

    name: str
    title: str
    models: Tuple[str, ...]
    seeded: Tuple[str, ...] = ()
    claims: Tuple[Claim, ...] = ()


@dataclass(frozen=True)
class Suite:
    """``max_iter``: every model's schedule (None: the configs' own); ``seeds``: the default
    ``--seeds``; ``long_schedule``: models trained once more, first seed, at ``long_factor`` times
    the schedule (the convergence check); ``note``: what a reader of the Results must know."""

    name: str
    models: Dict[str, Model]
    pairs: Tuple[Pair, ...]
    ablations: Tuple[Ablation, ...] = field(default_factory=tuple)
    max_iter: Optional[int] = None
    seeds: Tuple[int, ...] = (1,)
    note: str = ""  # printed under the Results section's header bullets
    lr_sweep: Optional[LRSweep] = None
    long_schedule: Tuple[str, ...] = ()
    long_factor: int = 3
    curves: Tuple[Curve, ...] = ()
    curve_factor: int = 6
    curve_eval_period: int = 1500
    # the pairs ``select`` left out: a curve member's verdict is read on its pair whatever the
    # selection (``member_pair``)
    verdict_pairs: Tuple[Pair, ...] = ()

    def member_pair(self, curve: Curve, model: str) -> Optional[Pair]:
        """The pair a curve member's verdict is read on (its ``metric``, ``noise_from``): the
        first of the suite's pairs whose baseline is the group's and which holds ``model``; None
        when there is none (then: box AP, the baseline's noise)."""
        return next((p for p in self.pairs + self.verdict_pairs
                     if p.models[0] == curve.models[0] and model in p.models[1:]), None)

    def check(self) -> None:
        """Every model a pair, an ablation, the sweep or the long schedule names exists; names
        are unique; the members of a pair are of one family; a pair's seeded models are its own;
        a ``noise_from`` model is seeded and of the pair's family."""
        names = [p.name for p in self.pairs] + [a.name for a in self.ablations]
        if len(set(names)) != len(names):
            raise ValueError(f"suite {self.name!r}: duplicate pair/ablation names {names}")
        seeded = {m for q in self.pairs for m in q.models_over_seeds()}
        for p in self.pairs:
            if len(p.models) < 2:
                raise ValueError(f"pair {p.name!r} needs a baseline and at least one model")
            for m in p.models:
                if m not in self.models:
                    raise ValueError(f"pair {p.name!r} names unknown model {m!r}")
            families = {m: self.models[m].family for m in p.models}
            if len(set(families.values())) != 1:
                raise ValueError(f"pair {p.name!r}: its members must be of one family (one "
                                 f"learning rate), got {families}")
            stray = (set(p.seeded) | {m for c in p.contrasts for m in c}) - set(p.models)
            if stray:
                raise ValueError(f"pair {p.name!r}: seeded or contrasted models {sorted(stray)} "
                                 "are not members")
            if p.noise_from:
                if p.noise_from not in seeded:
                    raise ValueError(f"pair {p.name!r}: noise_from {p.noise_from!r} is not a "
                                     "seeded model")
                if self.models[p.noise_from].family != self.models[p.models[0]].family:
                    raise ValueError(f"pair {p.name!r}: noise_from {p.noise_from!r} is of "
                                     "another family")
        for a in self.ablations:
            if a.model not in self.models:
                raise ValueError(f"ablation {a.name!r} names unknown model {a.model!r}")
        named = list(self.long_schedule)
        for c in self.curves:
            named += list(c.models)
            stray = (set(c.seeded) | {m for x in c.claims for m in (x.model, x.other)}) - set(
                c.models)
            if stray:
                raise ValueError(f"curve {c.name!r}: seeded or claimed models {sorted(stray)} "
                                 "are not members")
            wrong = [x.kind for x in c.claims if x.kind not in CLAIM_KINDS]
            if wrong:
                raise ValueError(f"curve {c.name!r}: claim kinds {wrong} not in {CLAIM_KINDS}")
            if len({self.models[m].family for m in c.models if m in self.models}) > 1:
                raise ValueError(f"curve {c.name!r}: its members must be of one family")
        if len({c.name for c in self.curves} | set(names)) != len(self.curves) + len(names):
            raise ValueError(f"suite {self.name!r}: a curve's name is taken")
        if self.lr_sweep:
            named += [m for ms in self.lr_sweep.baselines.values() for m in ms]
            for fam, ms in self.lr_sweep.baselines.items():
                wrong = [m for m in ms if m in self.models and self.models[m].family != fam]
                if wrong:
                    raise ValueError(f"LR sweep: baselines {wrong} are not of family {fam!r}")
        unknown = [m for m in named if m not in self.models]
        if unknown:
            raise ValueError(f"suite {self.name!r}: LR sweep / long schedule / curves name "
                             f"unknown models {unknown}")

    def select(self, only: Sequence[str]) -> "Suite":
        """The sub-suite of the pairs and ablations named in ``only`` (all if empty); the names
        "lr_sweep" and "long_schedule" select those phases. The LR sweep of the families of the
        selected models is always part of it (their rate comes from it). "curves" selects every
        learning curve, a curve's name that one."""
        if not only:
            return self
        phases = {"lr_sweep", "long_schedule", "curves"}
        known = ({p.name for p in self.pairs} | {a.name for a in self.ablations}
                 | {c.name for c in self.curves} | phases)
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ValueError(f"--only: unknown name(s) {unknown}; known: {sorted(known)}")
        pairs = tuple(p for p in self.pairs if p.name in only)
        ablations = tuple(a for a in self.ablations if a.name in only)
        long_schedule = self.long_schedule if "long_schedule" in only else ()
        curves = tuple(c for c in self.curves if "curves" in only or c.name in only)
        used = ({m for p in pairs for m in p.models} | {a.model for a in ablations}
                | set(long_schedule) | {m for c in curves for m in c.models})
        sweep = self.lr_sweep
        if sweep is not None:
            families = ({self.models[m].family for m in used} if "lr_sweep" not in only
                        else set(sweep.baselines))
            sweep = LRSweep(sweep.grid, {f: ms for f, ms in sweep.baselines.items()
                                         if f in families})
            used |= {m for ms in sweep.baselines.values() for m in ms}
        return Suite(self.name, {k: v for k, v in self.models.items() if k in used}, pairs,
                     ablations, self.max_iter, self.seeds, self.note, sweep, long_schedule,
                     self.long_factor, curves, self.curve_factor, self.curve_eval_period,
                     verdict_pairs=self.pairs + self.verdict_pairs)


def _models(*models: Model) -> Dict[str, Model]:
    return {m.name: m for m in models}


_EMBEDDED_MODELS = _models(
    # Mask R-CNN family (R^3-CNN, Table 1).
    Model("mask_rcnn", "configs/baselines/mask_rcnn_smallR_FPN_shapes.yaml", "Mask R-CNN"),
    Model("cascade_mask_rcnn", "configs/baselines/cascade_mask_rcnn_smallR_FPN_shapes.yaml",
          "Cascade Mask R-CNN"),
    Model("r3cnn_naive", "configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml",
          "R^3-CNN naive, increasing"),
    Model("r3cnn_naive_dec", "configs/r3cnn/r3cnn_naive_dec_smallR_FPN_shapes.yaml",
          "R^3-CNN naive, decreasing"),
    Model("r3cnn_L", "configs/r3cnn/r3cnn_L_smallR_FPN_shapes.yaml", "R^3-CNN-L"),
    # Single-stage detectors (IoU-aware, Tables 3-4).
    Model("retinanet", "configs/baselines/retinanet_smallR_FPN_shapes.yaml", "RetinaNet",
          family=SINGLE_STAGE),
    Model("iou_aware_retinanet", "configs/iou_aware/iou_aware_retinanet_smallR_FPN_shapes.yaml",
          "IoU-aware RetinaNet, alpha 0.5", family=SINGLE_STAGE),
    # The product p * IoU ranks detections exactly as alpha 0.5 (p^0.5 IoU^0.5 = sqrt(p IoU), a
    # monotone map) and trains the same weights (alpha only enters inference): its AP can differ
    # from alpha 0.5's only through the score threshold before NMS.
    Model("iou_aware_retinanet_product",
          "configs/iou_aware/iou_aware_retinanet_product_smallR_FPN_shapes.yaml",
          "IoU-aware RetinaNet, product", family=SINGLE_STAGE),
    Model("fcos", "configs/iou_aware/fcos_smallR_FPN_shapes.yaml", "FCOS", family=SINGLE_STAGE),
    Model("iou_aware_fcos", "configs/iou_aware/iou_aware_fcos_smallR_FPN_shapes.yaml",
          "IoU-aware FCOS", family=SINGLE_STAGE),
    # Why RetinaNet lags FCOS here (8.0 against 17.4 box AP at 1500 iterations): each candidate
    # cause changed alone, on the RetinaNet baseline. The anchors are measured without training
    # (benchmarks/retinanet_anchors.py: 98.7% of shapes_train's boxes have an anchor at IoU 0.5);
    # the classification prior (0.01) and the focal loss's normaliser (an EMA of the positive
    # count, Detectron2's dense_detector) are FCOS's too. The head's normalisation differs (FCOS
    # here: GN; Detectron2's RetinaNet: none): RetinaNetHead's "BN" (a BatchNorm per FPN level)
    # tests it with Detectron2's own head ("GN" fails in v0.6's RetinaNetHead, which probes its
    # norm with one channel). Every MMDetection RetinaNet clips the gradient norm at 35.
    Model("retinanet_bn_head", "configs/baselines/retinanet_smallR_FPN_shapes.yaml",
          "RetinaNet, BatchNorm per level in the head", opts=("MODEL.RETINANET.NORM", "BN"),
          family=SINGLE_STAGE, timed_like="retinanet"),
    # The IoU-aware pair again on the baseline with the cause removed (pair retinanet_causes:
    # a normalised head), both members alike.
    Model("iou_aware_retinanet_bn_head",
          "configs/iou_aware/iou_aware_retinanet_smallR_FPN_shapes.yaml",
          "IoU-aware RetinaNet, alpha 0.5, BatchNorm per level in the head",
          opts=("MODEL.RETINANET.NORM", "BN"), family=SINGLE_STAGE,
          timed_like="iou_aware_retinanet"),
    Model("retinanet_clip35", "configs/baselines/retinanet_smallR_FPN_shapes.yaml",
          "RetinaNet, gradient norm clipped at 35",
          opts=("SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
                "full_model", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "35.0"),
          family=SINGLE_STAGE, timed_like="retinanet"),
    # Offset bins (Tables 1, 4-5).
    Model("faster_rcnn", "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml",
          "Faster R-CNN (random 1:3 sampling)"),
    Model("offset_bin_K2", "configs/offset_bin/offset_bin_faster_rcnn_smallR_FPN_shapes.yaml",
          "Offset-Bin Faster R-CNN, K=2"),
    Model("offset_bin_K1",
          "configs/offset_bin/offset_bin_K1_faster_rcnn_smallR_FPN_shapes.yaml",
          "Offset-Bin Faster R-CNN, K=1"),
    Model("offset_bin_K2_argmax",
          "configs/offset_bin/offset_bin_argmax_faster_rcnn_smallR_FPN_shapes.yaml",
          "Offset-Bin Faster R-CNN, K=2, expectation off"),
    Model("cascade_rcnn_2stage", "configs/offset_bin/cascade_rcnn_2stage_smallR_FPN_shapes.yaml",
          "Cascade R-CNN (2 stages)"),
    Model("offset_bin_cascade", "configs/offset_bin/offset_bin_cascade_rcnn_smallR_FPN_shapes.yaml",
          "Offset-Bin Cascade R-CNN (2 stages)"),
    # Samplers, through the sampler registry. Its "random" sampler is not trained again: it draws
    # the same RoIs as Detectron2's (tests/test_samplers_random.py), so Faster R-CNN is its run.
    Model("sampler_ohem", "configs/samplers/faster_rcnn_ohem_smallR_FPN_shapes.yaml",
          "Faster R-CNN, OHEM"),
    Model("sampler_iou_balanced",
          "configs/samplers/faster_rcnn_iou_balanced_smallR_FPN_shapes.yaml",
          "Faster R-CNN, IoU-balanced"),
    Model("sampler_pisa", "configs/samplers/faster_rcnn_pisa_smallR_FPN_shapes.yaml",
          "Faster R-CNN, PISA"),
    # The combination: R^3-CNN's loops with the offset-bin predictor (config only).
    Model("r3cnn_offset_bin", "configs/r3cnn/r3cnn_offset_bin_smallR_FPN_shapes.yaml",
          "R^3-CNN + offset bins"),
    # ... with the sampler that scored highest at seed 1 under the first protocol (600
    # iterations; the issue: "with the best sampler, if one helps"). Under the current one PISA
    # is ahead, but its ISR-P and CARL are in its own predictor, which the offset-bin predictor
    # replaces (the config says more). Both combinations clip the gradient norm (their config).
    Model("r3cnn_offset_bin_iou_balanced",
          "configs/r3cnn/r3cnn_offset_bin_iou_balanced_smallR_FPN_shapes.yaml",
          "R^3-CNN + offset bins + IoU-balanced"),
    # Real data: nuclei of stardist's fluorescence image (d2infra/data/nuclei.py), 256 px tiles
    # as the shapes images, so their speed is estimated from the shapes models' until measured.
    Model("nuclei_mask_rcnn", "configs/nuclei/mask_rcnn_smallR_FPN_nuclei.yaml",
          "Mask R-CNN (nuclei)", timed_like="mask_rcnn"),
    Model("nuclei_cascade_mask_rcnn", "configs/nuclei/cascade_mask_rcnn_smallR_FPN_nuclei.yaml",
          "Cascade Mask R-CNN (nuclei)", timed_like="cascade_mask_rcnn"),
    Model("nuclei_r3cnn", "configs/nuclei/r3cnn_naive_smallR_FPN_nuclei.yaml",
          "R^3-CNN naive, increasing (nuclei)", timed_like="r3cnn_naive"),
)

_EMBEDDED_PAIRS = (
    Pair("mask_rcnn_vs_r3cnn", "Mask R-CNN, Cascade Mask R-CNN and R^3-CNN",
         ("mask_rcnn", "cascade_mask_rcnn", "r3cnn_naive", "r3cnn_naive_dec", "r3cnn_L"),
         "R^3-CNN (increasing) beats Mask R-CNN (+2.7 box AP) and comes close to the 3-stage "
         "cascade (HTC, -0.8; Cascade Mask R-CNN stands in for it here) with the parameters of "
         "Mask R-CNN; decreasing thresholds lose a negligible 0.5 AP to increasing (R^3-CNN "
         "Table 1, rows 1 and 3-5)",
         # Decreasing thresholds are seeded too: at seed 1 they beat increasing by 7.9 AP, far
         # from the paper's -0.5, and a claim against a paper needs the seeds' noise.
         metric="AP", headline=True,
         seeded=("mask_rcnn", "cascade_mask_rcnn", "r3cnn_naive", "r3cnn_naive_dec"),
         contrasts=(("r3cnn_naive", "cascade_mask_rcnn"), ("r3cnn_naive_dec", "r3cnn_naive"))),
    Pair("retinanet_vs_iou_aware", "RetinaNet and IoU-aware RetinaNet",
         ("retinanet", "iou_aware_retinanet", "iou_aware_retinanet_product"),
         "the IoU branch raises AP by 1.2 and AP80 by 2.1 (alpha 0.5; AP50 -0.4), almost all of "
         "it from the confidence p^a IoU^(1-a): ranking by p alone (alpha 1) keeps +0.2 AP and "
         "+0.3 AP80 of it; p * IoU is 0.1 AP behind (IoU-aware Tables 3-4, COCO val)",
         metric="AP80", headline=True, seeded=("retinanet", "iou_aware_retinanet"),
         contrasts=(("iou_aware_retinanet_product", "iou_aware_retinanet"),)),
    Pair("retinanet_causes", "RetinaNet: candidate causes of its lag behind FCOS",
         ("retinanet", "retinanet_bn_head", "retinanet_clip35"),
         "(a diagnosis, no paper) RetinaNet learns like FCOS once the cause is removed; a "
         "change that helps is then made to both members of the IoU-aware pair alike",
         metric="AP", timed=False),
    Pair("retinanet_vs_iou_aware_bn_head",
         "RetinaNet and IoU-aware RetinaNet, both with BatchNorm per level in the head",
         ("retinanet_bn_head", "iou_aware_retinanet_bn_head"),
         "the IoU branch raises AP by 1.2 and AP80 by 2.1 (alpha 0.5; IoU-aware Table 4, COCO "
         "val), here on a RetinaNet whose head is normalised as FCOS's (pair retinanet_causes)",
         metric="AP80", seeded=("retinanet_bn_head", "iou_aware_retinanet_bn_head"),
         timed=False),
    Pair("fcos_vs_iou_aware", "FCOS and IoU-aware FCOS", ("fcos", "iou_aware_fcos"),
         "(the authors' code; no table in the paper) ranking by p^0.3 IoU^0.7 in place of "
         "FCOS's p * centerness raises AP", metric="AP",
         noise_from="retinanet"),
    Pair("faster_vs_offset_bin", "Faster R-CNN and Offset-Bin Faster R-CNN",
         ("faster_rcnn", "offset_bin_K2", "offset_bin_K1", "offset_bin_K2_argmax"),
         "bin classification with expectation and hierarchical focusing raises AP by 4.0 and "
         "AP80 by 8.3 (AP50 -1.3); with the other part on, expectation (against argmax) and the "
         "second focusing stage (K=2 against K=1) each add 1.5 AP (Offset-Bin Table 1, VOC07)",
         metric="AP80", headline=True,
         seeded=("faster_rcnn", "offset_bin_K1", "offset_bin_K2"),
         # hierarchical focusing (K=2 against K=1) and expectation (against argmax decoding)
         contrasts=(("offset_bin_K2", "offset_bin_K1"),
                    ("offset_bin_K2", "offset_bin_K2_argmax"))),
    Pair("cascade_vs_offset_bin", "Cascade R-CNN and Offset-Bin Cascade R-CNN",
         ("cascade_rcnn_2stage", "offset_bin_cascade"),
         "offset bins raise the AP of a 2-stage Cascade R-CNN by 0.9, AP90 by 4.1 (Offset-Bin "
         "Table 4, VOC07, ResNet-50-FPN)",
         metric="AP", noise_from="faster_rcnn"),
    Pair("samplers", "Faster R-CNN with each RoI sampler",
         ("faster_rcnn", "sampler_ohem", "sampler_iou_balanced", "sampler_pisa"),
         "OHEM, IoU-balanced sampling and PISA raise AP over random 1:3 sampling (Detectron2's; "
         "the registry's random sampler draws the same RoIs)", metric="AP", headline=True,
         seeded=("faster_rcnn", "sampler_iou_balanced", "sampler_pisa")),
    Pair("r3cnn_offset_bin", "R^3-CNN with the offset-bin predictor",
         ("r3cnn_naive", "offset_bin_K1", "r3cnn_offset_bin", "r3cnn_offset_bin_iou_balanced"),
         "(no paper) the two refinements add up: R^3-CNN + offset bins beats both alone",
         metric="AP", contrasts=(("r3cnn_offset_bin", "offset_bin_K1"),
                                 ("r3cnn_offset_bin_iou_balanced", "r3cnn_offset_bin"))),
    Pair("nuclei", "Mask R-CNN, Cascade Mask R-CNN and R^3-CNN on real nuclei (nuclei_train, "
         "evaluated on nuclei_val)",
         ("nuclei_mask_rcnn", "nuclei_cascade_mask_rcnn", "nuclei_r3cnn"),
         "R^3-CNN beats Mask R-CNN and matches Cascade Mask R-CNN (R^3-CNN Table 1), on real "
         "microscopy data", metric="AP", headline=True,
         seeded=("nuclei_mask_rcnn", "nuclei_cascade_mask_rcnn", "nuclei_r3cnn"),
         contrasts=(("nuclei_r3cnn", "nuclei_cascade_mask_rcnn"),)),
)

_EMBEDDED_ABLATIONS = (
    Ablation("r3cnn_loops", "R^3-CNN evaluation loops (R^3-CNN Table 2)", "r3cnn_naive",
             "MODEL.R3CNN.NUM_LOOPS_TEST", (1, 2, 3, 4, 5)),
    # Where decreasing thresholds gain over increasing (seed 1: +7.9 AP, against Table 1): in the
    # first loop, on the RPN's proposals, or in the loops that follow.
    Ablation("r3cnn_loops_dec", "R^3-CNN evaluation loops, decreasing thresholds",
             "r3cnn_naive_dec", "MODEL.R3CNN.NUM_LOOPS_TEST", (1, 2, 3)),
    Ablation("iou_aware_alpha",
             "IoU-aware RetinaNet confidence exponent alpha (IoU-aware Table 3; -1: p * IoU)",
             "iou_aware_retinanet", "MODEL.IOU_AWARE.ALPHA",
             (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -1.0)),
    # IoU-aware FCOS is within the seed noise of FCOS (one seed, noise from RetinaNet's 3 seeds:
    # +0.3 AP at BASE_LR 0.01, -1.2 at the abandoned 0.02): the same weights ranked by p alone
    # (alpha 1) or with more of the IoU tell the training's share from the confidence's.
    Ablation("iou_aware_fcos_alpha", "IoU-aware FCOS confidence exponent alpha (the authors' 0.3)",
             "iou_aware_fcos", "MODEL.IOU_AWARE.ALPHA", (1.0, 0.7, 0.5, 0.3, 0.0)),
)

# Learning curves to the plateau: each group trained once (seed 1) at 6x the schedule (9000
# iterations, LR steps at 6600 and 8100), evaluated every 1500 iterations. The baseline's curve
# gives the plateau schedule (curves.py: the first evaluation that gains less than 1.0 box AP over
# its last two evaluations); every member is then trained there with seed 1, the seeded models
# with seeds 1-3, and the others with seeds 1-3 too when their verdict there differs from the one
# at 1500 iterations (planning.Planner.plateau_seeded).
# A curve stops there: the baseline once it has flattened, the other members at the same
# iteration (curves.stop_reason).
# The headline group first: its plateau decides the seeded trainings.
_EMBEDDED_CURVES = (
    # R^3-CNN Table 1's three claims, stated on the plateau's numbers
    Curve("curve_mask_rcnn_vs_r3cnn", "Mask R-CNN, Cascade Mask R-CNN and R^3-CNN",
          ("mask_rcnn", "r3cnn_naive", "cascade_mask_rcnn", "r3cnn_naive_dec"),
          seeded=("mask_rcnn", "cascade_mask_rcnn", "r3cnn_naive"),
          claims=(Claim("R^3-CNN (increasing) beats Mask R-CNN (+2.7 box AP)", "r3cnn_naive",
                        "mask_rcnn", "beats"),
                  Claim("R^3-CNN (increasing) comes close to the 3-stage cascade (HTC, -0.8; "
                        "Cascade Mask R-CNN stands in for it here)", "r3cnn_naive",
                        "cascade_mask_rcnn", "close"),
                  Claim("decreasing thresholds are within 0.5 AP of increasing (-0.5)",
                        "r3cnn_naive_dec", "r3cnn_naive", "within", margin=0.5))),
    Curve("curve_faster_vs_offset_bin", "Faster R-CNN, Offset-Bin K=1 and K=2, and PISA",
          ("faster_rcnn", "offset_bin_K1", "offset_bin_K2", "sampler_pisa")),
    Curve("curve_nuclei", "Mask R-CNN, Cascade Mask R-CNN and R^3-CNN on nuclei",
          ("nuclei_mask_rcnn", "nuclei_cascade_mask_rcnn", "nuclei_r3cnn")),
    # On the baseline with the cause of its lag removed (pair retinanet_causes: a head normalised
    # per level, as FCOS's), both members alike.
    Curve("curve_retinanet_vs_iou_aware", "RetinaNet and IoU-aware RetinaNet, BatchNorm per "
          "level in the head", ("retinanet_bn_head", "iou_aware_retinanet_bn_head")),
)

# The protocol (benchmarks/README.md): every model on its config's 1500 iterations at batch 4, at
# its family's BASE_LR from the sweep; seeds 1-3 for the pairs' seeded models; Mask R-CNN and
# R^3-CNN once more at 3x the schedule. `python benchmarks/run.py --plan` prints the time it
# needs on this machine, from the seconds per iteration measured so far.
SUITES: Dict[str, Suite] = {
    "embedded": Suite(
        "embedded", _EMBEDDED_MODELS, _EMBEDDED_PAIRS, _EMBEDDED_ABLATIONS, max_iter=None,
        seeds=(1, 2, 3),
        lr_sweep=LRSweep(grid=(0.005, 0.01, 0.02),
                         baselines={SINGLE_STAGE: ("retinanet",),
                                    TWO_STAGE: ("faster_rcnn", "mask_rcnn")}),
        long_schedule=("mask_rcnn", "r3cnn_naive"), long_factor=3,
        curves=_EMBEDDED_CURVES, curve_factor=6, curve_eval_period=1500,
        note="Protocol (benchmarks/README.md): every model trains the configs' 1500 iterations "
             "at batch 4, at its family's BASE_LR, the rate of the grid {0.005, 0.01, 0.02} at "
             "which the family's baselines reached the highest mean box AP (seed 1), of the rates "
             "at which no baseline diverged with any seed; a member that diverges at it also has an extra, marked row at its own best rate of the "
             "grid. Seeded models: mean ± std over seeds 1-3; the others seed 1, with the seed "
             "noise of a seeded model of the pair or of its family (noise_from)."),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {sorted(SUITES)}")
    suite = SUITES[name]
    suite.check()
    return suite
