"""Statistics for comparing NER runs, written in NumPy with scipy's names and results.

scipy is used only for distribution functions (t, F, normal). Every test returns an object that
unpacks like scipy's: ``statistic, pvalue = ttest_rel(a, b)``; extra fields (``df``) are attributes.

Edge cases (the same answers as scipy.stats):

- n < 2 (paired / one group) or no residual degrees of freedom: statistic and p-value are nan;
- zero variance: t = ±inf and p = 0 when the means differ, nan when they are equal; Welch's df,
  0/0 then, is taken as 1 as scipy does;
- Wilcoxon with ties or zeros: no exact null distribution exists, so n ≤ 13 uses all 2^n sign
  flips (a permutation test, as scipy does) and n > 13 the normal approximation with tie correction;
- unequal group sizes: handled by every test (Student pools variances weighted by df; the two-way
  ANOVA uses Type II sums of squares, which do not depend on the order of the factors).

Which test to use for "3 seeds × 2 losses" is discussed in docs/evaluation.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import special
from scipy.stats import f as f_dist
from scipy.stats import norm
from scipy.stats import t as t_dist

ALTERNATIVES = ("two-sided", "less", "greater")


class TestResult(tuple):
    """``(statistic, pvalue)`` that also carries extra named values (``df``, ...) as attributes."""

    __test__ = False  # not a pytest test class

    def __new__(cls, statistic, pvalue, **extra):
        result = super().__new__(cls, (float(statistic), float(pvalue)))
        result.__dict__.update(extra)
        return result

    statistic = property(lambda self: self[0])
    pvalue = property(lambda self: self[1])

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.__dict__.items())
        return f"TestResult(statistic={self[0]!r}, pvalue={self[1]!r}{extra})"


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, not {alternative!r}")


def _t_pvalue(t: float, df: float, alternative: str) -> float:
    _check_alternative(alternative)
    if np.isnan(t) or np.isnan(df) or df <= 0:
        return float("nan")
    if alternative == "less":
        return float(t_dist.cdf(t, df))
    if alternative == "greater":
        return float(t_dist.sf(t, df))
    return float(min(2 * t_dist.sf(abs(t), df), 1.0))


def _ratio(num: float, den: float) -> float:
    """num/den with IEEE semantics (±inf, nan) and no warning: zero variance is an expected case."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(num) / np.float64(den))


def _as_1d(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    return x


# ---------------------------------------------------------------------------------------------
# t tests and ANOVA


def ttest_rel(a, b, alternative: str = "two-sided") -> TestResult:
    """Paired t test of the mean difference ``a − b`` (e.g. two systems on the same seeds).

    t = mean(d) / (sd(d) / √n), sd with n − 1 denominator, df = n − 1. Returns ``(statistic,
    pvalue)`` with ``.df``; as ``scipy.stats.ttest_rel``."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    d = a - b
    n = len(d)
    df = n - 1
    if n < 2:
        return TestResult(np.nan, np.nan, df=df)
    t = _ratio(d.mean(), np.sqrt(d.var(ddof=1) / n))
    return TestResult(t, _t_pvalue(t, df, alternative), df=df)


def ttest_ind(a, b, equal_var: bool = True, alternative: str = "two-sided") -> TestResult:
    """Two-sample t test of mean(a) − mean(b): Student's (pooled variance, ``equal_var=True``) or
    Welch's (separate variances, Welch–Satterthwaite df). Groups may differ in size. Returns
    ``(statistic, pvalue)`` with ``.df``; as ``scipy.stats.ttest_ind``."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    n1, n2 = len(a), len(b)
    v1 = a.var(ddof=1) if n1 > 1 else np.nan
    v2 = b.var(ddof=1) if n2 > 1 else np.nan
    if equal_var:
        df = float(n1 + n2 - 2)
        if df <= 0:
            return TestResult(np.nan, np.nan, df=df)
        pooled = ((n1 - 1) * (v1 if n1 > 1 else 0.0) + (n2 - 1) * (v2 if n2 > 1 else 0.0)) / df
        se = np.sqrt(pooled * (1.0 / n1 + 1.0 / n2))
    else:
        if n1 < 2 or n2 < 2:  # no variance estimate; df nan becomes 1, scipy's convention
            return TestResult(np.nan, np.nan, df=1.0)
        s1, s2 = v1 / n1, v2 / n2
        df = _ratio((s1 + s2) ** 2, s1**2 / (n1 - 1) + s2**2 / (n2 - 1))
        df = 1.0 if np.isnan(df) else df  # both variances zero: scipy's convention
        se = np.sqrt(s1 + s2)
    t = _ratio(a.mean() - b.mean(), se)
    return TestResult(t, _t_pvalue(t, df, alternative), df=df)


def f_oneway(*groups) -> TestResult:
    """One-way ANOVA F test that all group means are equal (groups may differ in size).

    F = (SS_between / (k − 1)) / (SS_within / (N − k)). As ``scipy.stats.f_oneway``."""
    groups = [_as_1d(g, f"group {i}") for i, g in enumerate(groups)]
    k, n = len(groups), sum(len(g) for g in groups)
    if k < 2 or any(len(g) == 0 for g in groups) or n <= k:
        return TestResult(np.nan, np.nan)
    grand = np.concatenate(groups).mean()
    ss_between = sum(len(g) * (g.mean() - grand) ** 2 for g in groups)
    ss_within = sum(((g - g.mean()) ** 2).sum() for g in groups)
    F = _ratio(ss_between / (k - 1), ss_within / (n - k))
    p = float("nan") if np.isnan(F) else float(f_dist.sf(F, k - 1, n - k))
    return TestResult(F, p)


class AnovaTable(dict):
    """An ANOVA table: ``{row: {"SS", "df", "MS", "F", "p"}}`` for rows ``A``, ``B``, ``A:B``,
    (``Block``,) ``Residual``; prints as a table."""

    def __str__(self) -> str:
        lines = [f"{'':>10s} {'SS':>12s} {'df':>6s} {'MS':>12s} {'F':>10s} {'p':>10s}"]
        for name, r in self.items():
            lines.append(f"{name:>10s} {r['SS']:>12.6g} {r['df']:>6g} {r['MS']:>12.6g} "
                         f"{r['F']:>10.4g} {r['p']:>10.4g}")
        return "\n".join(lines)


def _dummies(codes: np.ndarray, n_levels: int) -> np.ndarray:
    """Treatment coding: one column per level except the first."""
    return (codes[:, None] == np.arange(1, n_levels)[None, :]).astype(np.float64)


def _rss_rank(design: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    coef, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return float(resid @ resid), int(rank)


def anova_two_way(y, factor_a, factor_b, block=None) -> AnovaTable:
    """Two-way ANOVA with interaction, Type II sums of squares; optionally with a block factor.

    ``y [n]`` the scores, ``factor_a [n]`` and ``factor_b [n]`` the level of each factor (any
    labels). SS(A) = RSS(B) − RSS(A + B), SS(B) = RSS(A) − RSS(A + B), SS(A:B) = RSS(A + B) −
    RSS(A * B), Residual = RSS(A * B); each F is tested against the residual mean square. For a
    balanced design this is the textbook (and Type I/III) table; for unbalanced designs it equals
    statsmodels' ``anova_lm(ols("y ~ C(a) * C(b)", data).fit(), typ=2)``. Empty cells reduce the
    interaction df (the rank of the design decides every df).

    ``block [n]`` (e.g. the seed, shared by every cell: a randomised complete block design) adds an
    additive block term: every model above gains ``+ C(block)``, the table gains a ``Block`` row,
    SS(Block) = RSS(A * B) − RSS(A * B + Block), and the residual loses the block's df. This is
    statsmodels' ``anova_lm(ols("y ~ C(a) * C(b) + C(block)", data).fit(), typ=2)``. Use it when
    a seed fixes what all cells share (initialisation, data order): the seed-to-seed variation
    then leaves the residual instead of inflating it."""
    y = _as_1d(y, "y")
    a_levels, a = np.unique(np.asarray(factor_a), return_inverse=True)
    b_levels, b = np.unique(np.asarray(factor_b), return_inverse=True)
    if not len(y) == len(a) == len(b):
        raise ValueError(f"y, factor_a, factor_b need equal lengths, got {len(y)}, {len(a)}, {len(b)}")
    ones = np.ones((len(y), 1))
    da, db = _dummies(a, len(a_levels)), _dummies(b, len(b_levels))
    dab = (da[:, :, None] * db[:, None, :]).reshape(len(y), -1)
    if block is None:
        dk = np.zeros((len(y), 0))
    else:
        k_levels, k = np.unique(np.asarray(block), return_inverse=True)
        if len(k) != len(y):
            raise ValueError(f"block needs the length of y ({len(y)}), got {len(k)}")
        dk = _dummies(k, len(k_levels))
    rss_a, rank_a = _rss_rank(np.hstack([ones, da, dk]), y)
    rss_b, rank_b = _rss_rank(np.hstack([ones, db, dk]), y)
    rss_add, rank_add = _rss_rank(np.hstack([ones, da, db, dk]), y)
    rss_full, rank_full = _rss_rank(np.hstack([ones, da, db, dab, dk]), y)
    terms = [("A", rss_b - rss_add, rank_add - rank_b), ("B", rss_a - rss_add, rank_add - rank_a),
             ("A:B", rss_add - rss_full, rank_full - rank_add)]
    if block is not None:
        rss_cells, rank_cells = _rss_rank(np.hstack([ones, da, db, dab]), y)
        terms.append(("Block", rss_cells - rss_full, rank_full - rank_cells))
    df_res = len(y) - rank_full
    ms_res = rss_full / df_res if df_res > 0 else np.nan
    table = AnovaTable()
    for name, ss, df in terms:
        ms = ss / df if df > 0 else np.nan
        F = _ratio(ms, ms_res)
        p = float("nan") if np.isnan(F) else float(f_dist.sf(F, df, df_res))
        table[name] = {"SS": float(ss), "df": float(df), "MS": float(ms), "F": F, "p": p}
    table["Residual"] = {"SS": rss_full, "df": float(df_res), "MS": float(ms_res), "F": np.nan, "p": np.nan}
    return table


# ---------------------------------------------------------------------------------------------
# Wilcoxon signed-rank


def _rank_average(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) of ``x`` and the size of each group of tied values."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    sizes = np.diff(np.r_[starts, len(x)])
    average = starts + (sizes + 1) / 2.0  # mean of ranks starts+1 .. starts+sizes
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(average, sizes)
    return ranks, sizes


def _signed_rank_pmf(n: int) -> np.ndarray:
    """Null distribution of W+ for n untied non-zero differences: P(W+ = s), s = 0 .. n(n+1)/2."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):  # each rank k is in W+ or not: convolve with (1 + x^k)
        counts[k:] = counts[k:] + counts[:-k].copy()
    return counts / 2.0**n


def _wilcoxon_parts(d: np.ndarray, zero_method: str):
    """(W+, W−, mean, se, tied) of the signed-rank statistic, as scipy computes them."""
    zeros = d == 0
    kept = d[~zeros] if zero_method == "wilcox" else d
    ranks, sizes = _rank_average(np.abs(kept))
    r_plus = float(ranks[kept > 0].sum())
    r_minus = float(ranks[kept < 0].sum())
    if zero_method == "zsplit":
        half = float(ranks[kept == 0].sum()) / 2
        r_plus, r_minus = r_plus + half, r_minus + half
    count = float(len(kept))
    mean = count * (count + 1.0) * 0.25
    var = count * (count + 1.0) * (2.0 * count + 1.0)
    if zero_method == "pratt":
        n_zero = float(zeros.sum())
        mean -= n_zero * (n_zero + 1.0) * 0.25
        var -= n_zero * (n_zero + 1.0) * (2.0 * n_zero + 1.0)
        if n_zero:  # zeros are not a tie in the correction (they sort first)
            sizes = sizes[1:]
    se = np.sqrt((var - float((sizes**3 - sizes).sum()) / 2) / 24)
    return r_plus, r_minus, mean, se, bool((sizes > 1).any())


def wilcoxon(x, y=None, zero_method: str = "wilcox", correction: bool = False,
             alternative: str = "two-sided", method: str = "auto") -> TestResult:
    """Wilcoxon signed-rank test that the differences ``x − y`` (or ``x``) are symmetric about 0.

    ``method="auto"`` (scipy's default): exact null distribution when n ≤ 50 and there are no ties
    and no zeros; with ties or zeros, all 2^n sign flips when n ≤ 13 (a permutation test); the
    normal approximation with tie correction otherwise. ``"exact"`` and ``"asymptotic"`` force a
    method; ``correction`` applies a continuity correction to the approximation. ``zero_method``:
    ``"wilcox"`` drops zero differences, ``"pratt"`` ranks them then drops them, ``"zsplit"``
    splits their ranks between the signs. The statistic is min(W+, W−) for two-sided tests and W+
    otherwise; the approximation also sets ``.zstatistic``. As ``scipy.stats.wilcoxon``."""
    _check_alternative(alternative)
    if zero_method not in ("wilcox", "pratt", "zsplit"):
        raise ValueError(f"zero_method must be 'wilcox', 'pratt' or 'zsplit', not {zero_method!r}")
    if method not in ("auto", "exact", "asymptotic"):
        raise ValueError(f"method must be 'auto', 'exact' or 'asymptotic', not {method!r}")
    d = _as_1d(x, "x") if y is None else _as_1d(x, "x") - _as_1d(y, "y")
    if len(d) == 0:
        return TestResult(np.nan, np.nan)
    r_plus, r_minus, mean, se, tied = _wilcoxon_parts(d, zero_method)
    n_zero = int((d == 0).sum())
    chosen = method
    if method == "auto":
        if len(d) > 50:
            chosen = "asymptotic"
        elif not (tied or n_zero):
            chosen = "exact"
        elif len(d) <= 13:
            chosen = "permutation"
        else:
            chosen = "asymptotic"
    statistic = min(r_plus, r_minus) if alternative == "two-sided" else r_plus
    extra = {}
    if chosen == "asymptotic":
        z = _ratio(r_plus - mean, se)
        if correction:
            sign = {"greater": 1.0, "less": -1.0}.get(alternative, float(np.sign(z)))
            z -= sign * 0.5 / se
        p = {"less": norm.cdf(z), "greater": norm.sf(z)}.get(alternative, 2 * norm.sf(abs(z)))
        if method == "asymptotic":
            extra["zstatistic"] = -abs(z) if alternative == "two-sided" else z
    elif chosen == "exact":
        # with ties or zeros W+ may be fractional and the null is not exact; like scipy, round
        # conservatively (up for the lower tail, down for the upper)
        pmf = _signed_rank_pmf(int((d != 0).sum()) if zero_method == "wilcox" else len(d))
        lower = pmf[: int(np.ceil(r_plus)) + 1].sum()
        upper = pmf[int(np.floor(r_plus)):].sum()
        p = {"less": lower, "greater": upper}.get(alternative, min(1.0, 2 * min(lower, upper)))
    else:
        p = _sign_flip_pvalue(d, lambda flipped: _wilcoxon_parts(flipped, zero_method)[0], alternative)
    return TestResult(statistic, float(p), **extra)


def _all_sign_flips(n: int) -> np.ndarray:
    """Every ±1 pattern of length n, ``[2^n, n]``."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
    return 1.0 - 2.0 * bits


def _sign_flip_pvalue(d: np.ndarray, statistic: Callable, alternative: str,
                      signs: np.ndarray | None = None) -> float:
    """p-value of ``statistic(d)`` against its values under sign flips of ``d`` (all 2^n if
    ``signs`` is None, else the given random ones, with the +1 correction for random draws).
    Comparisons allow scipy's relative tolerance of 100 machine epsilons."""
    exact = signs is None
    signs = _all_sign_flips(len(d)) if exact else signs
    observed = statistic(d)
    null = np.array([statistic(d * s) for s in signs])
    return _null_pvalue(observed, null, alternative, exact)


def _null_pvalue(observed: float, null: np.ndarray, alternative: str, exact: bool) -> float:
    """p-value of ``observed`` against a permutation null distribution, as scipy's
    ``permutation_test``: ``exact`` when ``null`` enumerates every pattern (p = count / N), else
    random patterns with the +1 correction (p = (count + 1) / (N + 1), never 0). Comparisons allow
    scipy's relative tolerance of 100 machine epsilons; two-sided p = 2 · min(less, greater) ≤ 1.

    An exact ``null`` holds the identity arrangement in row 0 (``_all_sign_flips`` starts with
    all +1, i.e. nothing swapped). The observed value is compared as that row: the two are the
    same number computed in another floating-point order (batched against alone), and a
    difference beyond the tolerance would leave the identity out of its own count, so that an
    exact test printed p = 0. The identity always counts: p ≥ 1/N."""
    if exact:
        observed = null[0]
    gamma = abs(np.finfo(np.float64).eps * 100 * observed)
    adjust = 0 if exact else 1
    less = ((null <= observed + gamma).sum() + adjust) / (len(null) + adjust)
    greater = ((null >= observed - gamma).sum() + adjust) / (len(null) + adjust)
    p = {"less": less, "greater": greater}.get(alternative, 2 * min(less, greater))
    return float(min(p, 1.0))


def permutation_test_paired(a, b, n_resamples: int = 9999, seed: int | None = 0,
                            alternative: str = "two-sided", statistic: Callable | None = None) -> TestResult:
    """Paired permutation (sign-flip) test: under H0 each pair's difference ``a − b`` is as likely
    to have either sign. ``statistic`` maps differences ``[n]`` to a number (default: the mean).

    When 2^n ≤ ``n_resamples`` all sign patterns are enumerated and the p-value is exact (equal to
    ``scipy.stats.permutation_test(..., permutation_type="samples")``); otherwise ``n_resamples``
    random patterns from ``np.random.default_rng(seed)`` are drawn and p = (count + 1) /
    (n_resamples + 1), never 0. Returns ``(statistic, pvalue)``."""
    _check_alternative(alternative)
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    d = a - b
    statistic = statistic or (lambda x: float(np.mean(x)))
    if len(d) == 0:
        return TestResult(np.nan, np.nan)
    signs = None
    if 2 ** min(len(d), 62) > n_resamples:
        rng = np.random.default_rng(seed)
        signs = np.where(rng.random((n_resamples, len(d))) < 0.5, -1.0, 1.0)
    return TestResult(statistic(d), _sign_flip_pvalue(d, statistic, alternative, signs))


def permutation_test_paired_sums(a, b, statistic: Callable, n_resamples: int = 9999, seed: int | None = 0,
                                 alternative: str = "two-sided", batch: int = 2048) -> TestResult:
    """Paired permutation test of two systems scored on the same units, for statistics of
    *summed* unit data — approximate randomisation (Noreen 1989) over documents.

    ``a [n, ...]`` and ``b [n, ...]``: additive data of each unit (e.g. per-document entity counts,
    with any trailing shape such as ``[seeds, types, 3]``). Under H0 the two systems' outputs on a
    unit are exchangeable, so a permutation swaps ``a_i`` and ``b_i`` for the flagged units.
    ``statistic(sum_a, sum_b)`` maps the two systems' sums over units, ``[R, ...]`` each, to ``[R]``
    values (e.g. F1(a) − F1(b)); it is evaluated on batches of ``batch`` patterns.

    When 2^n ≤ ``n_resamples`` every swap pattern is enumerated and the p-value is exact (equal to
    ``scipy.stats.permutation_test(..., permutation_type="samples")``); otherwise ``n_resamples``
    random patterns, ``np.random.default_rng(seed).random((n_resamples, n)) < 0.5``, give
    p = (count + 1) / (n_resamples + 1). Returns ``(statistic, pvalue)``."""
    _check_alternative(alternative)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired data need equal shapes, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return TestResult(np.nan, np.nan)
    rest = a.shape[1:]
    total_a, total_b = a.sum(0), b.sum(0)
    delta = (b - a).reshape(n, -1)  # what swapping unit i moves from a's sum to b's (and back)
    observed = float(np.asarray(statistic(total_a[None], total_b[None])).reshape(-1)[0])
    exact = 2 ** min(n, 62) <= n_resamples
    if exact:
        swaps = _all_sign_flips(n) < 0
    else:
        swaps = np.random.default_rng(seed).random((n_resamples, n)) < 0.5
    null = np.empty(len(swaps))
    for start in range(0, len(swaps), batch):
        moved = (swaps[start:start + batch].astype(np.float64) @ delta).reshape(-1, *rest)
        null[start:start + batch] = np.asarray(statistic(total_a + moved, total_b - moved)).reshape(-1)
    return TestResult(observed, _null_pvalue(observed, null, alternative, exact))


# ---------------------------------------------------------------------------------------------
# multiple comparisons


def bonferroni(pvalues, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Bonferroni correction: adjusted p = min(1, m·p). Returns ``(reject, pvalues_adjusted)`` as
    statsmodels' ``multipletests(pvalues, alpha, method="bonferroni")[:2]``."""
    p = _as_1d(pvalues, "pvalues")
    adjusted = np.minimum(1.0, p * len(p))
    return adjusted <= alpha, adjusted


def holm(pvalues, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm–Bonferroni step-down correction (controls the family-wise error rate, uniformly more
    powerful than Bonferroni): the i-th smallest p (i from 0) is multiplied by m − i, then made
    non-decreasing. Returns ``(reject, pvalues_adjusted)`` in the input order, as statsmodels'
    ``multipletests(pvalues, alpha, method="holm")[:2]``."""
    p = _as_1d(pvalues, "pvalues")
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    adjusted = np.empty_like(p)
    adjusted[order] = stepped
    return adjusted <= alpha, adjusted


# ---------------------------------------------------------------------------------------------
# effect sizes


def cohens_d(a, b) -> float:
    """Cohen's d for two independent groups: (mean(a) − mean(b)) / pooled sd, the pooled variance
    weighting each group's (n − 1)-denominator variance by its df. nan if n_a + n_b < 3."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    df = len(a) + len(b) - 2
    if df < 1 or len(a) == 0 or len(b) == 0:
        return float("nan")
    pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / df
    return _ratio(a.mean() - b.mean(), np.sqrt(pooled))


def paired_d(a, b) -> float:
    """Paired effect size d_z = mean(a − b) / sd(a − b) (sd with n − 1); equals the paired t
    statistic divided by √n. nan if n < 2."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    d = a - b
    if len(d) < 2:
        return float("nan")
    return _ratio(d.mean(), d.std(ddof=1))


# ---------------------------------------------------------------------------------------------
# bootstrap


@dataclass
class ConfidenceInterval:
    low: float
    high: float

    def __iter__(self):
        return iter((self.low, self.high))


@dataclass
class BootstrapResult:
    """As ``scipy.stats.bootstrap``'s result: the interval, every resampled statistic, and their
    standard deviation (n − 1); ``estimate`` is the statistic of the full sample."""

    confidence_interval: ConfidenceInterval
    bootstrap_distribution: np.ndarray
    standard_error: float
    estimate: float = float("nan")


def bootstrap_ci(data, statistic: Callable, n_resamples: int = 9999, confidence_level: float = 0.95,
                 method: str = "BCa", seed: int | None = 0) -> BootstrapResult:
    """Bootstrap confidence interval of ``statistic(data)`` resampling the rows of ``data``.

    ``data [n_units, ...]``: one row per resampling unit — for entity F1 the units are documents,
    ``data`` their ``(tp, fp, fn)`` counts (``bertlab.metrics.entity_counts`` grouped with
    ``group_by_document``) and ``statistic`` is ``bertlab.metrics.micro_f1``, because entities of
    one document are not independent. ``statistic`` maps an array like ``data`` to a number.
    ``method``: ``"percentile"`` or ``"BCa"`` (bias-corrected and accelerated, Efron & Tibshirani
    14.3, the acceleration from the jackknife). Resamples are
    ``np.random.default_rng(seed).integers(0, n, (n_resamples, n))``, the draw scipy makes, so a
    seed reproduces the interval — and reproduces ``scipy.stats.bootstrap(..., rng=seed)``."""
    method_key = method.lower()
    if method_key not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'BCa', not {method!r}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    data = np.asarray(data)
    n = len(data)
    if n < 2:
        raise ValueError(f"the bootstrap needs at least 2 resampling units, got {n}")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, (n_resamples, n))
    theta_b = np.array([statistic(data[i]) for i in index], dtype=np.float64)
    alpha = (1 - confidence_level) / 2
    if method_key == "percentile":
        levels = [alpha, 1 - alpha]
    else:
        keep = np.ones(n, dtype=bool)
        jack = np.empty(n)
        for i in range(n):  # leave-one-unit-out estimates
            keep[i] = False
            jack[i] = statistic(data[keep])
            keep[i] = True
        levels = bca_levels(theta_b, float(statistic(data)), jack, confidence_level)
    low, high = np.quantile(theta_b, levels)
    return BootstrapResult(ConfidenceInterval(float(low), float(high)), theta_b, float(theta_b.std(ddof=1)),
                           float(statistic(data)))


def bca_levels(theta_b, theta_hat: float, jackknife, confidence_level: float = 0.95) -> list[float]:
    """The two quantile levels of a BCa interval (Efron & Tibshirani 14.3): ``theta_b`` the
    bootstrap statistics, ``theta_hat`` the full-sample statistic, ``jackknife`` the
    leave-one-unit-out statistics. ``np.quantile(theta_b, levels)`` is then the interval.

    The bias correction ``z0`` counts ties half (as scipy does) and is clipped to the share
    ``1/(2B)`` when every resample falls on one side, so a degenerate distribution (e.g. F1 = 0
    in every resample) gives its own end points instead of NaN. A constant jackknife has no
    skew to correct: its acceleration is 0."""
    theta_b = np.asarray(theta_b, dtype=np.float64)
    jack = np.asarray(jackknife, dtype=np.float64)
    B, n = len(theta_b), len(jack)
    share = ((theta_b < theta_hat).sum() + (theta_b <= theta_hat).sum()) / (2 * B)
    share = min(max(share, 1 / (2 * B)), 1 - 1 / (2 * B))
    z0 = special.ndtri(share)
    u = (n - 1) * (jack.mean() - jack)
    den = ((u**2).sum() / n**2) ** 1.5
    accel = 1 / 6 * ((u**3).sum() / n**3) / den if den > 0 else 0.0
    z = special.ndtri((1 - confidence_level) / 2)
    return [float(special.ndtr(z0 + (z0 + zz) / (1 - accel * (z0 + zz)))) for zz in (z, -z)]


def hierarchical_bootstrap_diff(a, b, statistic: Callable, n_resamples: int = 1000,
                                confidence_level: float = 0.95, seed: int | None = 0,
                                min_runs: int = 3, paired_runs: bool = False) -> BootstrapResult:
    """Paired hierarchical bootstrap of a difference of seed means: system ``a`` minus system
    ``b``, both trained several times (runs, e.g. seeds) and scored on the same test units
    (documents).

    ``a [S_a, D, ...]`` and ``b [S_b, D, ...]``: data per run and per unit (per-document counts).
    ``statistic(x, w)`` scores every run of one system on resampled units: ``x [S, D, ...]`` that
    system's data, ``w [B, D]`` how often each unit is drawn (all ones: the full test set); it
    returns ``[B, S]``. The estimate is ``mean_s statistic(a, 1) − mean_s statistic(b, 1)``.

    Each resample draws D units with replacement — the *same* units for ``a`` and ``b`` (paired:
    both systems are scored on one resampled test set) — and, for systems with at least
    ``min_runs`` runs, draws runs with replacement. ``paired_runs=True`` (run i of ``a`` and run i
    of ``b`` share a seed, ``S_a == S_b``) draws the same run indices for both, so the pairs are
    kept and two identical systems give exactly [0, 0]; otherwise each system's runs are drawn
    independently. With fewer runs the runs are all kept (two runs are no sample of a seed
    distribution), so the interval covers the test set only. Draws: ``rng =
    np.random.default_rng(seed)``; units ``rng.integers(0, D, (B, D))`` (the draw of
    ``bootstrap_ci`` and scipy); then ``rng.integers(0, S_a, (B, S_a))`` for ``a`` and, unless the
    runs are paired, the same for ``b``, each only if resampled. The interval is the percentile
    interval; ``estimate`` is the full-sample difference.

    With 3 seeds a bootstrap over seeds has 10 distinct draws and shrinks the seed variance by
    (n − 1)/n, so this interval is too narrow there; the report uses ``crossed_t`` instead
    (docs/evaluation.md, "Which test answers which question")."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim < 2 or b.ndim < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b need shapes [runs, units, ...] over the same units, got {a.shape} and {b.shape}")
    if paired_runs and len(a) != len(b):
        raise ValueError(f"paired runs need as many runs in a as in b, got {len(a)} and {len(b)}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    D = a.shape[1]
    if D < 2:
        raise ValueError(f"the bootstrap needs at least 2 resampling units, got {D}")
    rng = np.random.default_rng(seed)
    units = rng.integers(0, D, (n_resamples, D))
    weights = np.zeros((n_resamples, D))
    np.add.at(weights, (np.arange(n_resamples)[:, None], units), 1.0)
    scores_a = np.asarray(statistic(a, weights), dtype=np.float64)  # [B, S_a]
    scores_b = np.asarray(statistic(b, weights), dtype=np.float64)  # [B, S_b]

    def draw(S):
        return rng.integers(0, S, (n_resamples, S)) if S >= min_runs else None

    runs_a = draw(len(a))
    runs_b = runs_a if paired_runs else draw(len(b))

    def drawn_mean(scores, runs):
        return scores.mean(1) if runs is None else np.take_along_axis(scores, runs, axis=1).mean(1)

    ones = np.ones((1, D))
    estimate = float(np.mean(statistic(a, ones)) - np.mean(statistic(b, ones)))
    theta_b = drawn_mean(scores_a, runs_a) - drawn_mean(scores_b, runs_b)
    alpha = (1 - confidence_level) / 2
    low, high = np.quantile(theta_b, [alpha, 1 - alpha])
    return BootstrapResult(ConfidenceInterval(float(low), float(high)), theta_b, float(theta_b.std(ddof=1)),
                           estimate)


# ---------------------------------------------------------------------------------------------
# seeds × documents: the variance of a mean over a crossed design


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


# ---------------------------------------------------------------------------------------------
# planning


def seeds_needed(difference: float, seed_sd: float, alpha: float = 0.05, power: float = 0.8,
                 paired: bool = False, max_n: int = 1000) -> int:
    """Smallest number of seeds per system for a two-sided t test at level ``alpha`` to detect a
    true mean ``difference`` with probability ``power``, when scores vary across seeds with
    standard deviation ``seed_sd`` (for ``paired=True``: the sd of the per-seed differences).
    Uses the noncentral t distribution (exact power, not the normal approximation)."""
    from scipy.stats import nct

    for n in range(2, max_n + 1):
        if paired:
            df, ncp = n - 1, difference / seed_sd * np.sqrt(n)
        else:
            df, ncp = 2 * n - 2, difference / seed_sd * np.sqrt(n / 2)
        crit = t_dist.ppf(1 - alpha / 2, df)
        # the lower tail is negligible, and scipy's nct.cdf returns NaN for some df = 1 cases
        if nct.sf(crit, df, ncp) + np.nan_to_num(nct.cdf(-crit, df, ncp)) >= power:
            return n
    raise ValueError(f"more than {max_n} seeds needed for difference {difference} with sd {seed_sd}")


def detectable_difference(paired_sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t test (``ttest_rel``) on ``n`` pairs
    detects with probability ``power`` at level ``alpha``, when the per-pair differences have
    standard deviation ``paired_sd``: δ = λ · sd / √n with λ the noncentrality at which the
    noncentral t power reaches ``power`` (df = n − 1). The inverse of ``seeds_needed(paired=True)``;
    equals statsmodels' ``TTestPower().solve_power(nobs=n, ...) · sd``. nan for n < 2 or sd nan;
    0 for sd = 0."""
    if n < 2 or not np.isfinite(paired_sd):
        return float("nan")
    return detectable_difference_se(paired_sd / np.sqrt(n), n - 1, alpha, power)


def detectable_difference_se(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided t test with standard error ``se`` and ``df``
    degrees of freedom detects with probability ``power`` at level ``alpha``: δ = λ · se, λ the
    noncentrality at which the noncentral t (df) reaches ``power``. For ``crossed_t`` pass its
    ``se`` and ``df`` (from a pooled ``CrossedVariance``). nan for se or df not finite or df ≤ 0;
    0 for se = 0."""
    from scipy.optimize import brentq
    from scipy.stats import nct

    if not np.isfinite(se) or not np.isfinite(df) or df <= 0:
        return float("nan")
    if se == 0:
        return 0.0
    crit = t_dist.ppf(1 - alpha / 2, df)

    def shortfall(ncp):
        # the lower tail is negligible here, and scipy's nct.cdf returns NaN for some df = 1 cases
        return nct.sf(crit, df, ncp) + np.nan_to_num(nct.cdf(-crit, df, ncp)) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    ncp = brentq(shortfall, 0.0, high, xtol=1e-12, rtol=1e-12)
    return float(ncp * se)


__all__ = ["ttest_rel", "ttest_ind", "f_oneway", "anova_two_way", "AnovaTable", "wilcoxon", "holm",
           "bonferroni", "bootstrap_ci", "BootstrapResult", "ConfidenceInterval", "cohens_d", "paired_d",
           "permutation_test_paired", "permutation_test_paired_sums", "hierarchical_bootstrap_diff",
           "seeds_needed", "detectable_difference", "detectable_difference_se", "TestResult",
           "jackknife_pseudovalues", "CrossedVariance", "crossed_variance", "crossed_t", "pooled_crossed_variance",
           "corrected_resampled_t", "corrected_resampled_se"]
