"""Significance tests with scipy's names and results: paired and independent t tests, one- and
two-way ANOVA, the Wilcoxon signed-rank test, paired permutation tests, Bonferroni and Holm, and
effect sizes."""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import f as f_dist
from scipy.stats import norm

from bertlab.stats.common import TestResult, _as_1d, _check_alternative, _ratio, _t_pvalue


# ---- t tests and ANOVA ----------------------------------------------------------------------------

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


# ---- Wilcoxon signed-rank ---------------------------------------------------------------------------


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
    # only units and columns where the systems differ move anything, so the product is taken over
    # those alone; for counts (integer sums below 2^24) in float32, exact, so the null is the same to
    # the bit as a float64 brute force's; other data in float64
    rows, cols = np.flatnonzero((delta != 0).any(1)), np.flatnonzero((delta != 0).any(0))
    part = delta[np.ix_(rows, cols)]
    if np.all(part == np.round(part)) and np.all(np.abs(part).sum(0) < 2 ** 24):
        part = part.astype(np.float32)
    null = np.empty(len(swaps))
    for start in range(0, len(swaps), batch):
        flags = swaps[start:start + batch, rows]
        moved = np.zeros((len(flags), delta.shape[1]))
        moved[:, cols] = flags.astype(part.dtype) @ part
        moved = moved.reshape(-1, *rest)
        null[start:start + batch] = np.asarray(statistic(total_a + moved, total_b - moved)).reshape(-1)
    return TestResult(observed, _null_pvalue(observed, null, alternative, exact))


# ---- multiple comparisons ---------------------------------------------------------------------------


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


# ---- effect sizes -----------------------------------------------------------------------------------


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
