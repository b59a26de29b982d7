"""The variance of a mean over a crossed seeds × documents design (jackknife pseudo-values, two-way
random effects, Satterthwaite df), and the corrected resampled t of cross-validation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import t as t_dist

from bertlab.stats.bootstrap import ConfidenceInterval
from bertlab.stats.common import TestResult, _check_alternative, _ratio, _t_pvalue



def jackknife_pseudovalues(full, leave_one_out) -> np.ndarray:
    """Per-unit pseudo-values ``D·θ − (D − 1)·θ₍₋ⱼ₎`` of a statistic (Quenouille–Tukey): ``full
    [...]`` the statistic on all D units, ``leave_one_out [..., D]`` without unit j. Their mean is
    the jackknife estimate and their variance / D the jackknife variance, so they turn a
    statistic that is not a mean (F1 from summed counts) into per-document values that are."""
    loo = np.asarray(leave_one_out, dtype=np.float64)
    D = loo.shape[-1]
    return D * np.asarray(full, dtype=np.float64)[..., None] - (D - 1) * loo


@dataclass
class CrossedVariance:
    """Mean squares of per-seed, per-document values ``y [S, D]`` (two-way layout, one value a
    cell): ``seed`` (df S − 1), ``doc`` (df D − 1) and ``resid`` (the seed × document interaction,
    df (S − 1)(D − 1)); with one seed only ``doc`` (the variance over documents) is defined."""

    seeds: int
    docs: int
    seed: float = float("nan")
    doc: float = float("nan")
    resid: float = float("nan")

    def variance_of_mean(self) -> tuple[float, float]:
        """``(V, df)``: the estimated variance of the grand mean under seeds and documents drawn
        at random, V = σ²_seed/S + σ²_doc/D + σ²_resid/(SD), from the expected mean squares
        (E[MS_seed] = σ²_resid + D·σ²_seed, E[MS_doc] = σ²_resid + S·σ²_doc), each component
        truncated at 0; df by Welch–Satterthwaite. One seed: V = MS_doc / D, df = D − 1 (the
        jackknife over documents), which covers no seed variance."""
        S, D = self.seeds, self.docs
        if S < 2:
            return (self.doc / D, float(D - 1)) if D >= 2 else (float("nan"), float("nan"))
        # S·D·V = MS_resid + max(MS_seed − MS_resid, 0) + max(MS_doc − MS_resid, 0)
        coef = {"seed": float(self.seed > self.resid), "doc": float(self.doc > self.resid)}
        coef["resid"] = 1.0 - coef["seed"] - coef["doc"]
        dfs = {"seed": S - 1, "doc": D - 1, "resid": (S - 1) * (D - 1)}
        ms = {"seed": self.seed, "doc": self.doc, "resid": self.resid}
        num = sum(coef[k] * ms[k] for k in ms)
        den = sum((coef[k] * ms[k]) ** 2 / dfs[k] for k in ms if coef[k])
        df = _ratio(num * num, den) if num > 0 else float("nan")
        return float(num / (S * D)), df


def crossed_variance(values) -> CrossedVariance:
    """The mean squares of ``values [S, D]`` (per seed, per document), as ``CrossedVariance``."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"values must be [seeds, documents], got shape {y.shape}")
    S, D = y.shape
    if D < 2:
        return CrossedVariance(S, D)
    grand, seed_means, doc_means = y.mean(), y.mean(1), y.mean(0)
    doc = S * ((doc_means - grand) ** 2).sum() / (D - 1)
    if S < 2:
        return CrossedVariance(S, D, doc=float(doc))
    seed = D * ((seed_means - grand) ** 2).sum() / (S - 1)
    resid = ((y - seed_means[:, None] - doc_means[None, :] + grand) ** 2).sum() / ((S - 1) * (D - 1))
    return CrossedVariance(S, D, float(seed), float(doc), float(resid))


def crossed_t(values, estimate: float | None = None, confidence_level: float = 0.95,
              alternative: str = "two-sided") -> TestResult:
    """t test and interval for the mean of ``values [S, D]`` when both the seeds (rows) and the
    documents (columns) are samples: the mean a study would get with other seeds *and* another
    test set. For a paired comparison ``values`` are the per-seed, per-document differences of
    two systems on shared seeds (``jackknife_pseudovalues`` of each, subtracted), for one system
    its own values.

    t = (estimate − 0) / √V with V and df from ``CrossedVariance.variance_of_mean`` (two-way
    random effects, Satterthwaite df); ``estimate`` defaults to the mean of ``values`` (pass the
    plain statistic when ``values`` are pseudo-values). Returns ``(statistic, pvalue)`` with
    ``.df``, ``.se``, ``.ci`` (a ``ConfidenceInterval``), ``.estimate`` and ``.ms`` (the
    ``CrossedVariance``). V = 0 (identical systems, constant scores) gives the point interval
    [estimate, estimate] and a nan test. Its coverage and size are checked by simulation in
    tests/test_stats_simulation.py; docs/evaluation.md gives the numbers."""
    _check_alternative(alternative)
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    y = np.asarray(values, dtype=np.float64)
    ms = crossed_variance(y)
    est = float(y.mean()) if estimate is None else float(estimate)
    V, df = ms.variance_of_mean()
    se = float(np.sqrt(V)) if V >= 0 else float("nan")
    if se == 0:
        return TestResult(np.nan, np.nan, df=df, se=0.0, ci=ConfidenceInterval(est, est), estimate=est, ms=ms)
    if not np.isfinite(se) or not np.isfinite(df):
        nan = float("nan")
        return TestResult(nan, nan, df=df, se=se, ci=ConfidenceInterval(nan, nan), estimate=est, ms=ms)
    t = est / se
    q = float(t_dist.ppf(0.5 + confidence_level / 2, df))
    return TestResult(t, _t_pvalue(t, df, alternative), df=df, se=se,
                      ci=ConfidenceInterval(est - q * se, est + q * se), estimate=est, ms=ms)


def pooled_crossed_variance(parts: Sequence[CrossedVariance]) -> CrossedVariance:
    """One ``CrossedVariance`` from several comparisons of the same design (as many seeds and
    documents each), each mean square averaged with its degrees of freedom as weights: the
    study's typical noise, steadier than any one comparison's estimate from 3 seeds. For the
    detectable difference (``detectable_difference_se``) and for planning."""
    parts = list(parts)
    if not parts or len({(p.seeds, p.docs) for p in parts}) != 1:
        raise ValueError("pooling needs at least one part, all of one design (seeds × documents)")
    S, D = parts[0].seeds, parts[0].docs

    def pool(name, df):
        values = [getattr(p, name) for p in parts if np.isfinite(getattr(p, name))]
        return float(np.mean(values)) if values and df > 0 else float("nan")  # equal df: a plain mean

    return CrossedVariance(S, D, pool("seed", S - 1), pool("doc", D - 1), pool("resid", (S - 1) * (D - 1)))


def corrected_resampled_t(differences, test_train_ratio: float, estimate: float | None = None,
                          confidence_level: float = 0.95, alternative: str = "two-sided") -> TestResult:
    """The corrected repeated k-fold cross-validation t test (Nadeau & Bengio 2003, "Inference for
    the generalization error"; in its repeated form, Bouckaert & Frank 2004): ``differences`` are
    the J = S·K per-(repetition, fold) differences of two systems (any shape, flattened), each
    repetition a k-fold cross-validation with its own partition, and ``test_train_ratio`` is
    n_test / n_train of one fold (the mean over folds when they differ).

        t = d̄ / √((1/J + n_test/n_train) · s²),   df = J − 1,

    s² the sample variance (ddof=1) of the differences. The term n_test/n_train accounts for the
    correlation between folds whose training sets overlap, which the plain t (1/J alone) ignores
    and so rejects far too often. ``estimate`` replaces d̄ as the centre of the interval and the
    numerator (the report passes the difference of scores pooled over folds). With
    ``test_train_ratio = 0`` it is ``ttest_1samp``. Returns ``(statistic, pvalue)`` with ``.df``,
    ``.se``, ``.ci``, ``.estimate`` and ``.variance`` (s²). A zero variance gives the point interval
    and a nan test; fewer than 2 differences, nan everything. Its coverage and size under real
    cross-validation are checked by simulation in tests/test_stats_simulation.py."""
    _check_alternative(alternative)
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    if not test_train_ratio >= 0:
        raise ValueError(f"test_train_ratio must be >= 0 (n_test / n_train), got {test_train_ratio}")
    d = np.asarray(differences, dtype=np.float64).ravel()
    J = len(d)
    nan = float("nan")
    est = (float(d.mean()) if J else nan) if estimate is None else float(estimate)
    if J < 2:
        return TestResult(nan, nan, df=nan, se=nan, ci=ConfidenceInterval(nan, nan), estimate=est, variance=nan)
    s2 = float(d.var(ddof=1))
    se = float(np.sqrt((1.0 / J + test_train_ratio) * s2))
    df = float(J - 1)
    if se == 0:
        return TestResult(nan, nan, df=df, se=0.0, ci=ConfidenceInterval(est, est), estimate=est, variance=s2)
    t = est / se
    q = float(t_dist.ppf(0.5 + confidence_level / 2, df))
    return TestResult(t, _t_pvalue(t, df, alternative), df=df, se=se,
                      ci=ConfidenceInterval(est - q * se, est + q * se), estimate=est, variance=s2)


def corrected_resampled_se(variance: float, repetitions: int, folds: int, test_train_ratio: float) -> tuple[float, float]:
    """``(se, df)`` of ``corrected_resampled_t`` for a design of ``repetitions`` × ``folds`` with
    per-fold differences of variance ``variance`` (e.g. pooled over a study's comparisons): for
    ``detectable_difference_se`` and for planning."""
    J = repetitions * folds
    if J < 2 or not np.isfinite(variance) or variance < 0:
        return float("nan"), float("nan")
    return float(np.sqrt((1.0 / J + test_train_ratio) * variance)), float(J - 1)
