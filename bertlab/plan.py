"""Power before compute: ``bertlab plan STUDY`` says what a study's design can detect, from a pilot.

A study's claim is a difference in its primary metric (``[report] primary``). Whether its design
(seeds, test documents, folds) can show a difference of the size it is about follows from the
variance of that difference, which a pilot measures: a study folder whose report was built
(``report.json``), by default ``runs/NAME`` or the committed ``docs/results/NAME``. From the
variance pooled over the pilot's tested comparisons of one metric:

* a **fixed split** (S seeds, D test documents), from a seeds × documents pilot: the components
  σ²_seed, σ²_doc, σ²_resid of the per-seed, per-document differences (``stats.CrossedVariance``)
  give the variance of the mean for any S and D, V = σ²_seed/S + σ²_doc/D + σ²_resid/(S·D), with
  Satterthwaite df, and the MDD ``stats.detectable_difference_se``. More seeds never take V below
  σ²_doc/D: past that only more test documents help (cross-validation).
* **K-fold cross-validation** (S seeds × K folds of n documents): the corrected resampled t,
  V = (1/(S·K) + n_test/n_train)·Var(d), df = S·K − 1 (``stats.corrected_resampled_se``), with
  Var(d) the variance of one fold's difference. From a cross-validated pilot it is measured there
  and scaled to other fold sizes as 1/n_test (test documents dominate it); from a fixed-split pilot
  it is σ²_seed + (σ²_doc + σ²_resid)/n_test, which leaves out how the fold models vary with their
  training documents, so that MDD is optimistic.

``main`` prints, for each primary metric, the MDD of the declared design (80% power, α = 0.05),
a table of MDDs over seeds × folds, and the smallest design that detects ``--target`` (default
the study's ``[report] target_difference``). docs/experiments.md, "Power before compute".
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from bertlab import stats
from bertlab.datasets.splits import DEV_FRACTION
from bertlab.errors import fail
from bertlab.report.rows import primaries

SEEDS = (1, 2, 3, 5, 10, 20)
FOLDS = (0, 3, 5, 10)  # 0: the corpus's own split


@dataclass
class Pilot:
    """The variance of one metric's differences in a pilot study, pooled over its tested comparisons."""
    metric: str
    comparisons: int
    crossed: stats.CrossedVariance | None = None  # per-seed, per-document (a fixed-split pilot)
    fold_variance: float = math.nan               # of one fold's difference (a cross-validated pilot)
    fold_docs: float = math.nan                   # the pilot's test documents per fold

    def components(self) -> tuple[float, float, float]:
        """(σ²_seed, σ²_doc, σ²_resid) of a fixed-split pilot, from the expected mean squares."""
        c = self.crossed
        return (max(c.seed - c.resid, 0.0) / c.docs, max(c.doc - c.resid, 0.0) / c.seeds, c.resid)


def read_pilot(folder: str | Path, metric: str) -> Pilot | None:
    """The pooled variance of ``metric`` in a pilot's ``report.json`` (``None`` without a tested comparison
    of it): cross-validated comparisons' per-fold variance, else the seeds × documents mean squares of the
    most common design."""
    path = Path(folder) / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the pilot's report ({e}); build it with `bertlab report {folder}`") from None
    tested = [c for c in data.get("comparisons") or [] if c.get("metric") == metric and not c.get("excluded")
              and not c.get("same_as")]
    cv = [c for c in tested if c.get("cv") and math.isfinite(c["cv"].get("variance", math.nan))]
    if cv:
        docs = [c["docs"] / c["cv"]["folds"] for c in cv]
        return Pilot(metric, len(cv), fold_variance=sum(c["cv"]["variance"] for c in cv) / len(cv),
                     fold_docs=sum(docs) / len(docs))
    crossed = [c for c in tested if c.get("ms") and c.get("seeds_crossed", 0) >= 2]
    if not crossed:
        return None
    designs: dict[tuple, list] = {}
    for c in crossed:
        designs.setdefault((c["seeds_crossed"], c["docs"]), []).append(c)
    (S, D), group = max(designs.items(), key=lambda kv: len(kv[1]))
    pooled = stats.pooled_crossed_variance(stats.CrossedVariance(S, D, **c["ms"]) for c in group)
    return Pilot(metric, len(group), crossed=pooled)


def fold_sizes(n: int, folds: int) -> tuple[float, float]:
    """(test, train) documents of a fold of ``folds``-fold cross-validation over ``n`` documents
    (``cross_validation_split``: dev is a tenth of the rest)."""
    test = n / folds
    rest = n - test
    return test, rest - max(1, round(DEV_FRACTION * rest))


def design_mdd(pilot: Pilot, seeds: int, folds: int, n_documents: int, test_documents: int,
               alpha: float = 0.05) -> float:
    """The MDD (80% power) of ``seeds`` × ``folds`` (0: the fixed split with ``test_documents``) for
    ``pilot``'s metric; nan where the pilot cannot say (a fixed split from a cross-validated pilot)."""
    if folds == 0:
        if pilot.crossed is None:
            return math.nan
        s, d, r = pilot.components()
        D = test_documents
        if seeds < 2:  # one seed's test covers the documents only, not seed variance: not this question
            return math.nan
        ms = stats.CrossedVariance(seeds, D, seed=r + D * s, doc=r + seeds * d, resid=r)
        V, df = ms.variance_of_mean()
        return stats.detectable_difference_se(math.sqrt(V), df, alpha)
    test, train = fold_sizes(n_documents, folds)
    if pilot.crossed is not None:
        s, d, r = pilot.components()
        variance = s + (d + r) / test
    else:
        variance = pilot.fold_variance * pilot.fold_docs / test
    se, df = stats.corrected_resampled_se(variance, seeds, folds, test / train)
    return stats.detectable_difference_se(se, df, alpha)


def plan(study, pilot_dir: Path, target: float | None, alpha: float = 0.05) -> list[str]:
    """The lines ``bertlab plan`` prints for a loaded study (``bertlab.study.spec.load_study``)."""
    from bertlab.config import DataConfig
    from bertlab.datasets.prepare import load_splits
    data = {k: v for k, v in study.base.get("data", {}).items() if k not in ("folds", "fold", "fold_seed")}
    splits = load_splits(DataConfig(**data))
    n = sum(len(c.documents) for c in (splits.train, splits.dev, splits.test) if c is not None)
    if data.get("max_documents"):  # cross-validation caps the pooled corpus
        n = min(n, int(data["max_documents"]))
    D = len(splits.test.documents) if splits.test is not None else 0
    S = len(study.axes.get("train.seed", [study.base.get("train", {}).get("seed", 0)]))
    K = study.folds
    metrics = primaries(study.report) or list(study.report.get("metrics", ["f1_micro", "f1_macro"]))
    design = (f"{S} seed(s) x {K} folds over {n} documents" if K else
              f"{S} seed(s) on the corpus's test split of {D} documents")
    lines = [f"study {study.name} (scale {study.scale}): {design}; pilot {pilot_dir}"]
    for metric in metrics:
        pilot = read_pilot(pilot_dir, metric)
        if pilot is None:
            lines += ["", f"{metric}: the pilot has no tested comparison of it; nothing to plan from"]
            continue
        kind = "cross-validated" if pilot.crossed is None else "seeds x documents"
        mdd = design_mdd(pilot, S, K, n, D, alpha)
        lines += ["", f"{metric}{' (primary)' if study.report.get('primary') else ''}: variance pooled "
                      f"over {pilot.comparisons} {kind} comparison(s) of the pilot",
                  f"  MDD of this design (80% power, alpha {alpha:g}): {mdd:.4f}"
                  + (f"  -- above the target {target:g}: this design cannot detect it" if target and mdd > target
                     else f"  (target {target:g}: detectable)" if target else "")]
        header = "  seeds " + "".join(f"{'split' if k == 0 else f'{k} folds':>10}" for k in FOLDS)
        lines += ["  MDD by design (split: the corpus's own test split, from 2 seeds; k folds: cross-validation):",
                  header]
        best = None
        for s in SEEDS:
            cells = []
            for k in FOLDS:
                value = design_mdd(pilot, s, k, n, D, alpha)
                mark = "*" if target and value <= target else " "
                cells.append(f"{'–':>9} " if math.isnan(value) else f"{value:9.4f}{mark}")
                if target and value <= target and (best is None or s * max(k, 1) < best[0] * max(best[1], 1)):
                    best = (s, k)
            lines.append(f"  {s:>5} " + "".join(cells))
        if target:
            lines.append(f"  * detects {target:g}; " + (
                f"the cheapest: {best[0]} seed(s) x {best[1]} folds" if best and best[1] else
                f"the cheapest: {best[0]} seed(s) on the split" if best else
                f"no design in the table does: more documents, or a larger target"))
        if pilot.crossed is not None:
            lines.append("  (cross-validation from a fixed-split pilot leaves out how fold models vary with their "
                         "training documents: those MDDs are optimistic)")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``bertlab plan STUDY [--pilot DIR] [--target 0.02] [--scale SCALE]``."""
    from bertlab.report.cli import committed_results
    from bertlab.study.spec import load_study
    ap = argparse.ArgumentParser(prog="bertlab plan", description=(
        "What a study's design can detect before it runs: the smallest difference (80% power) in each "
        "primary metric, and the seeds x folds a target difference needs, from a pilot's variance "
        "(docs/experiments.md, \"Power before compute\")."))
    ap.add_argument("study", help="a study name (experiments/NAME.toml) or a .toml file")
    ap.add_argument("--pilot", metavar="DIR", help="a study folder with report.json to take the variance from "
                                                   "(default: runs/NAME, else docs/results/NAME)")
    ap.add_argument("--target", type=float, help="the difference to detect (default [report] target_difference)")
    ap.add_argument("--scale", default="default", help="the study's scale (default: default)")
    ap.add_argument("--experiments", default="experiments", metavar="DIR", help="where the study files are")
    ap.add_argument("--alpha", type=float, help="the test's level (default [report] alpha, else 0.05)")
    args = ap.parse_args(argv)
    try:
        if args.target is not None and not 0 < args.target < 1:
            raise ValueError(f"--target {args.target}: expected a difference between 0 and 1 (e.g. 0.02)")
        study = load_study(args.study, args.scale, experiments_dir=args.experiments)
        pilot = Path(args.pilot) if args.pilot else None
        if pilot is None:
            for candidate in (Path("runs") / study.name, committed_results(study.name)):
                if candidate and (Path(candidate) / "report.json").exists():
                    pilot = Path(candidate)
                    break
        if pilot is None:
            raise ValueError(f"no pilot for {study.name}: no runs/{study.name}/report.json or committed "
                             f"docs/results/{study.name}; pass --pilot DIR (a study folder with a report, "
                             f"e.g. a smaller run of this study or docs/results/btl_focal)")
        target = args.target if args.target is not None else study.report.get("target_difference")
        alpha = args.alpha if args.alpha is not None else float(study.report.get("alpha", 0.05))
        print("\n".join(plan(study, pilot, target, alpha)))
    except Exception as e:
        return fail("plan", e, also=(ValueError,))
    return 0
