"""bertlab.stats against scipy.stats and statsmodels on random samples of many sizes."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests

from bertlab import stats
from bertlab.metrics import micro_f1

TOL = dict(rtol=1e-9, atol=1e-12)


def close(ours, ref):
    """Equal within 1e-9 (relative), nan matching nan and inf matching inf."""
    ours, ref = float(ours), float(ref)
    if np.isnan(ref) or np.isinf(ref):
        return np.isnan(ours) if np.isnan(ref) else ours == ref
    return np.isclose(ours, ref, **TOL)


def assert_result(ours, ref):
    assert close(ours.statistic, ref.statistic), (ours, ref)
    assert close(ours.pvalue, ref.pvalue), (ours, ref)
    statistic, pvalue = ours  # unpacks like scipy's result
    assert (statistic, pvalue) == (ours.statistic, ours.pvalue) or np.isnan(statistic) or np.isnan(pvalue)


def scipy_quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def samples(rng, n):
    """A mix of continuous, rounded (ties) and constant samples."""
    kind = rng.integers(4)
    x = rng.normal(loc=rng.normal(), scale=rng.uniform(0.1, 3), size=n)
    if kind == 1:
        x = np.round(x, 1)
    elif kind == 2:
        x = np.full(n, 0.5)
    return x


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_ttests_equal_scipy(alternative):
    rng = np.random.default_rng(0)
    for n in list(range(1, 12)) + [20, 50, 200]:
        for _ in range(6):
            a, b = samples(rng, n), samples(rng, n)
            ours = stats.ttest_rel(a, b, alternative=alternative)
            ref = scipy_quiet(sps.ttest_rel, a, b, alternative=alternative)
            assert_result(ours, ref)
            assert ours.df == ref.df
            m = int(rng.integers(1, 15))
            c = samples(rng, m)
            for equal_var in (True, False):
                ours = stats.ttest_ind(a, c, equal_var=equal_var, alternative=alternative)
                ref = scipy_quiet(sps.ttest_ind, a, c, equal_var=equal_var, alternative=alternative)
                assert_result(ours, ref)
                assert close(ours.df, ref.df)


def test_ttest_edge_cases():
    assert np.isnan(stats.ttest_rel([1.0], [0.0]).pvalue)             # n < 2
    assert stats.ttest_rel([1, 2, 3], [0, 1, 2]) == (np.inf, 0.0)      # zero variance, means differ
    assert np.isnan(stats.ttest_rel([1, 2, 3], [1, 2, 3]).statistic)   # zero variance, equal means


def test_f_oneway_equals_scipy_with_unequal_sizes():
    rng = np.random.default_rng(1)
    for _ in range(200):
        groups = [samples(rng, int(rng.integers(1, 12))) for _ in range(int(rng.integers(2, 6)))]
        assert_result(stats.f_oneway(*groups), scipy_quiet(sps.f_oneway, *groups))


def statsmodels_table(y, a, b):
    frame = pd.DataFrame({"y": y, "a": a, "b": b})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return anova_lm(ols("y ~ C(a) * C(b)", data=frame).fit(), typ=2)


def test_anova_two_way_equals_statsmodels_type2():
    rng = np.random.default_rng(2)
    for case in range(40):
        la, lb = int(rng.integers(2, 4)), int(rng.integers(2, 4))
        balanced = case % 2 == 0
        reps = np.full(la * lb, int(rng.integers(2, 5))) if balanced else rng.integers(2, 6, size=la * lb)
        cells = np.repeat(np.arange(la * lb), reps)
        a = np.array(["adam", "sgd", "lamb"])[cells // lb]
        b = (cells % lb) * 10 + 7  # numeric labels work too
        y = rng.normal(size=len(cells)) + 0.5 * (cells // lb) + 0.3 * (cells % lb) * (cells // lb)
        ours = stats.anova_two_way(y, a, b)
        ref = statsmodels_table(y, a, b)
        for row, ref_row in zip(["A", "B", "A:B", "Residual"], ["C(a)", "C(b)", "C(a):C(b)", "Residual"]):
            assert close(ours[row]["SS"], ref.loc[ref_row, "sum_sq"]), (row, case)
            assert ours[row]["df"] == ref.loc[ref_row, "df"]
            if row != "Residual":
                assert close(ours[row]["F"], ref.loc[ref_row, "F"])
                assert close(ours[row]["p"], ref.loc[ref_row, "PR(>F)"])
        if balanced:  # balanced: the table is the textbook one, and the SS add up to the total
            total = ((y - y.mean()) ** 2).sum()
            assert np.isclose(sum(r["SS"] for r in ours.values()), total, **TOL)
    assert "Residual" in str(ours)


def test_anova_two_way_textbook_example():
    # 2 x 2, two replicates per cell; cell means 2, 4, 6, 12, grand mean 6
    y = [1, 3, 3, 5, 5, 7, 11, 13]
    a = ["a1"] * 4 + ["a2"] * 4
    b = ["b1", "b1", "b2", "b2"] * 2
    t = stats.anova_two_way(y, a, b)
    # SS_A = 4·((3−6)² + (9−6)²) = 72; SS_B = 4·((4−6)² + (8−6)²) = 32;
    # SS_AB = 2·Σ(cell − row − col + grand)² = 2·4·1² = 8; residual = 8 cells·1² = 8 on 4 df
    assert [t[r]["SS"] for r in ("A", "B", "A:B", "Residual")] == pytest.approx([72, 32, 8, 8], abs=1e-9)
    assert t["A"]["F"] == pytest.approx(36.0) and t["Residual"]["df"] == 4


def check_wilcoxon(rng, sizes, repeats, alternative):
    for n in sizes:
        for case in range(repeats):
            x, y = rng.normal(0.3, 1, size=n), rng.normal(0, 1, size=n)
            if case % 2:  # ties and zero differences
                x, y = np.round(x), np.round(y)
            zero_method = ("wilcox", "pratt", "zsplit")[case % 3]
            method, correction = (("auto", False), ("asymptotic", False), ("asymptotic", True))[(case + n) % 3]
            ours = stats.wilcoxon(x, y, zero_method=zero_method, correction=correction,
                                  alternative=alternative, method=method)
            try:
                ref = scipy_quiet(sps.wilcoxon, x, y, zero_method=zero_method, correction=correction,
                                  alternative=alternative, method=method)
            except ValueError as e:
                # scipy's permutation path refuses a single observation (n = 1, a zero difference
                # under "zsplit"); one zero difference is no evidence either way: p = 1
                assert n == 1 and "two or more observations" in str(e) and x[0] == y[0], (n, str(e))
                assert ours.pvalue == 1.0
                continue
            assert_result(ours, ref)
            if hasattr(ref, "zstatistic"):
                assert close(ours.zstatistic, ref.zstatistic)


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_wilcoxon_equals_scipy(alternative):
    # covers exact (n <= 50, no ties), all sign flips (n <= 13 with ties), normal approximation
    check_wilcoxon(np.random.default_rng(3), [1, 2, 3, 5, 8, 12, 13, 14, 20, 30, 49, 51, 80], 6, alternative)


@pytest.mark.slow
@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_wilcoxon_equals_scipy_many_sizes(alternative):
    check_wilcoxon(np.random.default_rng(30), list(range(1, 60)), 12, alternative)


def test_wilcoxon_exact_small_sample_known_value():
    # d = 1..6 with one negative: W− = 3, P(W+ ≥ 18) = 5/64 for n = 6, two-sided 10/64
    result = stats.wilcoxon([1, 2, -3, 4, 5, 6])
    assert result == (3.0, pytest.approx(10 / 64))


def test_holm_and_bonferroni_equal_statsmodels():
    rng = np.random.default_rng(4)
    for m in (1, 2, 3, 5, 8, 13, 21):
        p = rng.uniform(0, 0.2, size=m) ** 2
        if m > 3:
            p[1] = p[0]  # ties
        for ours_fn, name in ((stats.holm, "holm"), (stats.bonferroni, "bonferroni")):
            reject, adjusted = ours_fn(p, alpha=0.05)
            ref_reject, ref_adjusted = multipletests(p, alpha=0.05, method=name)[:2]
            np.testing.assert_array_equal(reject, ref_reject)
            np.testing.assert_allclose(adjusted, ref_adjusted, **TOL)


def test_effect_sizes():
    rng = np.random.default_rng(5)
    for n in range(2, 30):
        a, b = rng.normal(size=n), rng.normal(size=n + 3)
        # the pooled-sd d and the Student t are tied by t = d / sqrt(1/n1 + 1/n2)
        t = sps.ttest_ind(a, b).statistic
        assert np.isclose(stats.cohens_d(a, b), t * np.sqrt(1 / n + 1 / (n + 3)), **TOL)
        c = rng.normal(size=n)
        assert np.isclose(stats.paired_d(a, c), sps.ttest_rel(a, c).statistic / np.sqrt(n), **TOL)
    assert stats.cohens_d([1, 2, 3], [2, 3, 4]) == -1.0  # means differ by 1, pooled sd 1
    assert np.isnan(stats.paired_d([1.0], [2.0]))


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_bootstrap_equals_scipy_with_the_same_resamples(method):
    rng = np.random.default_rng(6)
    for n in (5, 17, 60):
        x = rng.exponential(size=n)
        ours = stats.bootstrap_ci(x, np.mean, n_resamples=2000, method=method, seed=123)
        ref = sps.bootstrap((x,), np.mean, n_resamples=2000, method=method, rng=np.random.default_rng(123))
        np.testing.assert_allclose(ours.bootstrap_distribution, ref.bootstrap_distribution, **TOL)
        assert close(ours.confidence_interval.low, ref.confidence_interval.low)
        assert close(ours.confidence_interval.high, ref.confidence_interval.high)
        assert close(ours.standard_error, ref.standard_error)


def test_bootstrap_of_document_f1_is_seeded_and_matches_scipy_paired():
    rng = np.random.default_rng(7)
    docs = np.column_stack([rng.integers(0, 20, 40), rng.integers(0, 6, 40), rng.integers(0, 6, 40)])
    first = stats.bootstrap_ci(docs, micro_f1, n_resamples=999, seed=11)
    again = stats.bootstrap_ci(docs, micro_f1, n_resamples=999, seed=11)
    other = stats.bootstrap_ci(docs, micro_f1, n_resamples=999, seed=12)
    assert tuple(first.confidence_interval) == tuple(again.confidence_interval)
    assert tuple(first.confidence_interval) != tuple(other.confidence_interval)
    low, high = first.confidence_interval
    assert low < micro_f1(docs) < high

    # scipy resamples the document indices the same way when paired=True
    def f1_of_docs(*columns, axis=-1):
        tp, fp, fn = (c.sum(axis=axis) for c in columns)
        return 2 * tp / (2 * tp + fp + fn)

    ref = sps.bootstrap(tuple(docs.T), f1_of_docs, paired=True, n_resamples=999, method="BCa",
                        rng=np.random.default_rng(11))
    assert close(low, ref.confidence_interval.low) and close(high, ref.confidence_interval.high)


def test_bca_levels_degenerate_distributions_stay_finite():
    """Every resample equal to the estimate (F1 = 0 throughout, a collapsed model): the interval is
    that value, not NaN; a one-sided distribution clips the bias correction instead of diverging."""
    lo, hi = stats.bca_levels(np.zeros(500), 0.0, np.zeros(20))
    assert 0 < lo < hi < 1
    assert tuple(np.quantile(np.zeros(500), [lo, hi])) == (0.0, 0.0)
    lo, hi = stats.bca_levels(np.linspace(1, 2, 500), 0.5, np.linspace(0.4, 0.6, 20))  # all above
    assert np.isfinite([lo, hi]).all() and lo < hi


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_permutation_test_paired_exact_equals_scipy(alternative):
    rng = np.random.default_rng(8)
    for n in range(2, 11):  # scipy needs two observations
        a, b = rng.normal(0.2, 1, n), rng.normal(0, 1, n)
        if n > 3:
            b[0] = a[0]  # a zero difference
        ours = stats.permutation_test_paired(a, b, alternative=alternative)
        ref = sps.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), vectorized=True,
                                   permutation_type="samples", alternative=alternative, n_resamples=9999)
        assert_result(ours, ref)


def test_permutation_test_paired_random_converges_to_exact():
    rng = np.random.default_rng(9)
    a, b = rng.normal(0.4, 1, 16), rng.normal(0, 1, 16)  # 2^16 = 65536 patterns
    exact = stats.permutation_test_paired(a, b, n_resamples=2**16).pvalue
    approx = stats.permutation_test_paired(a, b, n_resamples=20000, seed=1)
    # binomial standard error of a Monte Carlo p-value: 4 of them is a safe margin
    assert abs(approx.pvalue - exact) < 4 * np.sqrt(exact * (1 - exact) / 20000) + 1e-4
    assert approx == stats.permutation_test_paired(a, b, n_resamples=20000, seed=1)  # seeded


def test_seeds_needed_agrees_with_statsmodels_power():
    from statsmodels.stats.power import TTestIndPower

    for diff, sd in ((1.0, 0.5), (1.0, 0.8), (1.0, 1.0)):
        n = stats.seeds_needed(diff, sd)
        ref = TTestIndPower().solve_power(effect_size=diff / sd, alpha=0.05, power=0.8)
        assert n == int(np.ceil(ref))
