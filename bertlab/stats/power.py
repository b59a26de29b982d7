"""Planning: how many seeds a difference needs, and the smallest difference a design detects."""
from __future__ import annotations

import numpy as np
from scipy.stats import t as t_dist



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
