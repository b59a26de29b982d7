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


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_wilcoxon_forced_exact_on_tied_data_equals_scipy(alternative):
    """method="exact" forced on data with ties and zeros: W+ can be a half-integer, and the exact
    null's tails must then be cut conservatively (lower tail up to ceil(W+), upper tail from
    floor(W+)), as scipy.stats.wilcoxon(method="exact") does."""
    rng = np.random.default_rng(11)
    half_integers = 0
    for n in range(4, 17):
        for _ in range(2):
            d = rng.integers(-3, 6, size=n).astype(float)  # small integers: ties, some zeros
            for zero_method in ("wilcox", "pratt", "zsplit"):
                ours = stats.wilcoxon(d, zero_method=zero_method, alternative=alternative, method="exact")
                ref = scipy_quiet(sps.wilcoxon, d, zero_method=zero_method, alternative=alternative, method="exact")
                assert_result(ours, ref)
                half_integers += ours.statistic % 1 == 0.5
    assert half_integers >= 10  # the case the rounding is for did occur


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


def test_anova_two_way_with_seed_blocks_equals_statsmodels():
    """Randomised complete block: the seed is shared by every cell; statsmodels fits
    y ~ C(a) * C(b) + C(block) and its Type II table has one row more."""
    rng = np.random.default_rng(12)
    for case in range(30):
        la, lb, seeds = int(rng.integers(2, 4)), int(rng.integers(2, 4)), int(rng.integers(2, 5))
        a = np.repeat(np.arange(la), lb * seeds)
        b = np.tile(np.repeat(np.arange(lb), seeds), la)
        k = np.tile(np.arange(seeds), la * lb)
        seed_effect = rng.normal(0, 1, seeds)
        y = 0.3 * a + 0.2 * b * a + seed_effect[k] + rng.normal(0, 0.5, len(a))
        keep = np.ones(len(y), bool)
        if case % 3 == 2:  # an unbalanced design: drop a few runs
            keep[rng.choice(len(y), size=2, replace=False)] = False
        y, a, b, k = y[keep], a[keep], b[keep], k[keep]
        labels = np.array(["2e-5", "5e-5", "1e-4"])[a]
        ours = stats.anova_two_way(y, labels, b, block=k)
        frame = pd.DataFrame({"y": y, "a": labels, "b": b, "k": k})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = anova_lm(ols("y ~ C(a) * C(b) + C(k)", data=frame).fit(), typ=2)
        for row, ref_row in (("A", "C(a)"), ("B", "C(b)"), ("A:B", "C(a):C(b)"), ("Block", "C(k)"),
                             ("Residual", "Residual")):
            assert close(ours[row]["SS"], ref.loc[ref_row, "sum_sq"]), (row, case)
            assert ours[row]["df"] == ref.loc[ref_row, "df"], (row, case)
            if row != "Residual":
                assert close(ours[row]["F"], ref.loc[ref_row, "F"]), (row, case)
                assert close(ours[row]["p"], ref.loc[ref_row, "PR(>F)"]), (row, case)
    # without a block the table is the plain two-way one (no Block row)
    assert "Block" not in stats.anova_two_way(y, labels, b)


def test_anova_blocks_take_seed_variation_out_of_the_residual():
    # 2 x 2 cells x 3 seeds; the seeds shift every cell alike: blocking removes exactly that
    y = np.array([1.0, 2.0, 3.0] * 2 + [2.0, 3.0, 4.0] * 2)  # a adds 1, seed adds 0/1/2
    a = ["x"] * 6 + ["y"] * 6
    b = (["p"] * 3 + ["q"] * 3) * 2
    seed = [0, 1, 2] * 4
    plain, blocked = stats.anova_two_way(y, a, b), stats.anova_two_way(y, a, b, block=seed)
    assert plain["Residual"]["SS"] == pytest.approx(8.0) and plain["Residual"]["df"] == 8
    assert blocked["Block"]["SS"] == pytest.approx(8.0) and blocked["Block"]["df"] == 2
    assert blocked["Residual"]["SS"] == pytest.approx(0.0, abs=1e-12) and blocked["Residual"]["df"] == 6
    assert blocked["A"]["SS"] == pytest.approx(plain["A"]["SS"]) == pytest.approx(3.0)


def sums_f1(tp, fp, fn):
    return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_permutation_test_paired_sums_exact_equals_scipy(alternative):
    """Swapping whole documents between two systems: scipy's paired ("samples") permutation test
    with a statistic that sums the swapped documents' (tp, fp, fn) and compares micro F1."""
    rng = np.random.default_rng(13)
    for n in range(2, 10):
        a = rng.integers(0, 8, (n, 3)).astype(float)
        b = rng.integers(0, 8, (n, 3)).astype(float)
        if n > 4:
            b[0] = a[0]  # a document both systems get the same counts on

        def stat(sa, sb):
            return sums_f1(*np.moveaxis(sa, -1, 0)) - sums_f1(*np.moveaxis(sb, -1, 0))

        ours = stats.permutation_test_paired_sums(a, b, stat, alternative=alternative)
        both = np.concatenate([a, b])
        ref = sps.permutation_test((np.arange(n), np.arange(n) + n),
                                   lambda i, j: stat(both[i.astype(int)].sum(0)[None], both[j.astype(int)].sum(0)[None])[0],
                                   permutation_type="samples", alternative=alternative, n_resamples=9999,
                                   vectorized=False)
        assert_result(ours, ref)


def test_permutation_test_paired_sums_of_a_mean_is_the_sign_flip_test():
    # with one value per unit and the mean difference as statistic, swapping a unit flips the
    # sign of its difference: the same test as permutation_test_paired, exact and random
    rng = np.random.default_rng(14)
    for n, resamples in ((8, 9999), (16, 3000)):
        a, b = rng.normal(0.3, 1, n), rng.normal(0, 1, n)
        ours = stats.permutation_test_paired_sums(a, b, lambda sa, sb: (sa - sb) / n, n_resamples=resamples)
        ref = stats.permutation_test_paired(a, b, n_resamples=resamples)
        assert close(ours.statistic, ref.statistic)
        if 2 ** n <= resamples:
            assert close(ours.pvalue, ref.pvalue)
        else:  # different random patterns: equal within Monte Carlo error
            assert abs(ours.pvalue - ref.pvalue) < 4 * np.sqrt(ref.pvalue * (1 - ref.pvalue) / resamples) + 1e-3
            assert ours == stats.permutation_test_paired_sums(a, b, lambda sa, sb: (sa - sb) / n,
                                                               n_resamples=resamples)  # seeded


def _paired_sums_null_by_brute_force(a, b, statistic, n_resamples, seed):
    """Every permutation's statistic the plain way: each swap pattern's sums built unit by unit."""
    n = len(a)
    swaps = (np.random.default_rng(seed).random((n_resamples, n)) < 0.5)
    return np.array([np.asarray(statistic(np.where(s[:, None], b.reshape(n, -1), a.reshape(n, -1)).sum(0)
                                                    .reshape(1, *a.shape[1:]),
                                           np.where(s[:, None], a.reshape(n, -1), b.reshape(n, -1)).sum(0)
                                                    .reshape(1, *a.shape[1:]))).reshape(-1)[0] for s in swaps])


@pytest.mark.parametrize("case", ["counts", "large counts", "fractions"])
def test_permutation_test_paired_sums_null_is_the_brute_force_null_to_the_bit(case):
    """The null distribution is the product of the swap patterns with only the units and columns
    where the systems differ, in float32 when that is exact (integer sums below 2^24): the null and
    so the p-value must equal, to the bit, the statistic of every pattern's sums built unit by unit
    in float64. Generated cases with units and columns on which both systems agree, counts too large
    for float32 (~2^23 a unit), and non-integer data (float64 throughout, equal to rounding)."""
    rng = np.random.default_rng(21)
    for trial in range(6):
        n, k = int(rng.integers(3, 40)), int(rng.integers(1, 6))
        a = rng.integers(0, 9, (n, 2, k, 3)).astype(float)
        b = a.copy()
        differ = rng.random(n) < 0.5
        b[differ] = rng.integers(0, 9, (int(differ.sum()), 2, k, 3))
        if case == "large counts":  # differences of ~2^23 with the low bit set: float32 cannot sum them
            a, b = a * 2 ** 23, b * 2 ** 23 + differ[:, None, None, None]
        elif case == "fractions":
            a, b = a / 7, b / 3
        b[:, :, 0] = a[:, :, 0]  # a type both systems count the same on every unit

        def stat(sa, sb):
            return (sums_f1(*np.moveaxis(sa, -1, 0)) - sums_f1(*np.moveaxis(sb, -1, 0))).mean((-1, -2))

        captured = {}

        def recording(sa, sb):
            value = stat(sa, sb)
            if len(sa) > 1:
                captured.setdefault("null", []).append(value)
            return value

        got = stats.permutation_test_paired_sums(a, b, recording, n_resamples=999, seed=trial, batch=300)
        ref = _paired_sums_null_by_brute_force(a, b, stat, 999, trial)
        null = np.concatenate(captured["null"])
        if case == "fractions":  # float sums in another order: equal to rounding
            np.testing.assert_allclose(null, ref, rtol=1e-12, atol=1e-15)
        else:
            np.testing.assert_array_equal(null, ref)
        observed = float(stat(a.sum(0)[None], b.sum(0)[None])[0])
        tol = 100 * np.finfo(float).eps * abs(observed)
        less, greater = ((ref <= observed + tol).sum() + 1) / 1000, ((ref >= observed - tol).sum() + 1) / 1000
        assert got.pvalue == pytest.approx(min(1.0, 2 * min(less, greater)), abs=1e-12)


def doc_f1(x, w):
    """statistic(x [S, D, 3], w [B, D]) -> [B, S]: micro F1 of every run on each resample."""
    tp, fp, fn = np.moveaxis(np.einsum("bd,sdk->bsk", w, x), -1, 0)
    return sums_f1(tp, fp, fn)


def brute_force_hierarchical(a, b, n_resamples, seed, min_runs=3, paired_runs=False):
    """The documented draws, one resample at a time, in float64 loops."""
    rng = np.random.default_rng(seed)
    D = a.shape[1]
    units = rng.integers(0, D, (n_resamples, D))
    runs_a = rng.integers(0, len(a), (n_resamples, len(a))) if len(a) >= min_runs else None
    if paired_runs:
        runs_b = runs_a
    else:
        runs_b = rng.integers(0, len(b), (n_resamples, len(b))) if len(b) >= min_runs else None
    out = []
    for i in range(n_resamples):
        means = []
        for x, runs in ((a, runs_a), (b, runs_b)):
            chosen = range(len(x)) if runs is None else runs[i]
            f1s = []
            for s in chosen:
                tp, fp, fn = (float(sum(x[s, d, k] for d in units[i])) for k in range(3))
                f1s.append(2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0)
            means.append(sum(f1s) / len(f1s))
        out.append(means[0] - means[1])
    return np.array(out)


def test_hierarchical_bootstrap_equals_brute_force():
    rng = np.random.default_rng(15)
    for S_a, S_b, D in ((3, 3, 6), (4, 1, 5), (1, 3, 7), (2, 2, 5), (5, 3, 4)):
        a = rng.integers(0, 9, (S_a, D, 3)).astype(float)
        b = rng.integers(0, 9, (S_b, D, 3)).astype(float)
        ours = stats.hierarchical_bootstrap_diff(a, b, doc_f1, n_resamples=200, seed=3)
        ref = brute_force_hierarchical(a, b, 200, 3)
        np.testing.assert_allclose(ours.bootstrap_distribution, ref, **TOL)
        full = lambda x: np.mean([sums_f1(*x[s].sum(0)) for s in range(len(x))])
        assert close(ours.estimate, full(a) - full(b))
        assert close(ours.confidence_interval.low, np.quantile(ref, 0.025))
        assert close(ours.confidence_interval.high, np.quantile(ref, 0.975))


def test_hierarchical_bootstrap_without_run_resampling_is_scipys_paired_bootstrap():
    """With fewer than 3 runs per system only documents are resampled: scipy.stats.bootstrap
    (percentile) over document indices with the same seed draws the same resamples."""
    rng = np.random.default_rng(16)
    a = rng.integers(0, 9, (2, 12, 3)).astype(float)
    b = rng.integers(0, 9, (2, 12, 3)).astype(float)
    ours = stats.hierarchical_bootstrap_diff(a, b, doc_f1, n_resamples=500, seed=7)

    def diff(i):
        w = np.bincount(i.astype(int), minlength=12)[None].astype(float)
        return doc_f1(a, w).mean() - doc_f1(b, w).mean()

    ref = sps.bootstrap((np.arange(12),), diff, vectorized=False, n_resamples=500, method="percentile",
                        rng=np.random.default_rng(7))
    np.testing.assert_allclose(ours.bootstrap_distribution, ref.bootstrap_distribution, **TOL)
    assert close(ours.confidence_interval.low, ref.confidence_interval.low)
    assert close(ours.confidence_interval.high, ref.confidence_interval.high)


def test_hierarchical_bootstrap_adds_seed_variance():
    """A linear statistic (mean of per-document scores) with a run effect: resampling runs adds
    the between-run variance of the mean, (S − 1)/S · var_runs / S per system, to the document
    variance the plain paired bootstrap sees."""
    rng = np.random.default_rng(17)
    S, D = 5, 30
    base = rng.normal(0, 1, D)
    a = (base[None] + rng.normal(0, 2.0, (S, 1)))[..., None]  # run effects of sd 2: large
    b = (base[None] + 0.1 * rng.normal(0, 1, (S, D)))[..., None]
    mean_stat = lambda x, w: np.einsum("bd,sdk->bsk", w, x)[..., 0] / D
    runs = stats.hierarchical_bootstrap_diff(a, b, mean_stat, n_resamples=4000, seed=1)
    docs = stats.hierarchical_bootstrap_diff(a, b, mean_stat, n_resamples=4000, seed=1, min_runs=S + 1)
    run_means = a[:, :, 0].mean(1)
    expected = docs.standard_error**2 + run_means.var(ddof=0) / S + b[:, :, 0].mean(1).var(ddof=0) / S
    assert runs.standard_error**2 == pytest.approx(expected, rel=0.15)
    assert runs.standard_error > 3 * docs.standard_error


def test_detectable_difference_agrees_with_statsmodels_power():
    from statsmodels.stats.power import TTestPower

    for n in (2, 3, 4, 5, 10, 20):  # n = 2: scipy's nct.cdf has NaNs at df = 1
        for sd in (0.004, 0.01, 0.5):
            ours = stats.detectable_difference(sd, n)
            ref = TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8) * sd
            assert np.isclose(ours, ref, rtol=1e-6), (n, sd)
            # and it inverts seeds_needed: n pairs are enough for that difference
            assert stats.seeds_needed(ours * 1.0001, sd, paired=True) <= n
    assert np.isnan(stats.detectable_difference(0.01, 1)) and stats.detectable_difference(0.0, 3) == 0.0


def test_paired_hierarchical_bootstrap_keeps_the_seed_pairs():
    """Run i of a and run i of b share a seed: the paired draw takes the same runs for both, so
    two identical systems give exactly [0, 0] (the independent draw gave a wide interval around 0),
    and the draws equal the brute force with one run index per pair."""
    rng = np.random.default_rng(18)
    a = rng.integers(0, 9, (3, 12, 3)).astype(float)
    same = stats.hierarchical_bootstrap_diff(a, a.copy(), doc_f1, n_resamples=300, seed=2, paired_runs=True)
    assert tuple(same.confidence_interval) == (0.0, 0.0) and not same.bootstrap_distribution.any()
    unpaired = stats.hierarchical_bootstrap_diff(a, a.copy(), doc_f1, n_resamples=300, seed=2)
    assert unpaired.confidence_interval.high > 0  # what the report printed before: pairs lost
    b = rng.integers(0, 9, (3, 12, 3)).astype(float)
    ours = stats.hierarchical_bootstrap_diff(a, b, doc_f1, n_resamples=200, seed=4, paired_runs=True)
    np.testing.assert_allclose(ours.bootstrap_distribution,
                               brute_force_hierarchical(a, b, 200, 4, paired_runs=True), **TOL)
    with pytest.raises(ValueError, match="as many runs"):
        stats.hierarchical_bootstrap_diff(a, b[:2], doc_f1, paired_runs=True)


def test_exact_permutation_p_counts_the_identity_even_when_recomputed_differently():
    """The observed statistic is computed alone, the null in batches: another floating-point order.
    A difference of a few ulps beyond the tolerance must not drop the identity arrangement from its
    own count, so an exact p is never below 1/2^n (it was printed as 0 on a smoke study)."""
    rng = np.random.default_rng(19)
    a, b = rng.integers(5, 9, (5, 4)).astype(float), rng.integers(0, 3, (5, 4)).astype(float)

    def drifting(sa, sb):  # the batch of one (the observed value) rounds differently
        value = sa.sum(-1) / (sa.sum(-1) + sb.sum(-1))
        return value * (1 + 1e-9) if len(sa) == 1 else value

    for alternative, smallest in (("two-sided", 2 / 32), ("greater", 1 / 32)):
        p = stats.permutation_test_paired_sums(a, b, drifting, alternative=alternative).pvalue
        assert p == smallest  # a is above b on every unit: only the identity is as extreme


def test_random_permutation_p_is_count_plus_one_over_resamples_plus_one():
    """Random swaps: p = (count + 1)/(N + 1), never 0. 20 clearly separated pairs and 999 random
    patterns: no pattern but the identity reaches the observed mean, so two-sided p = 2/1000."""
    a, b = np.arange(20) + 100.0, np.arange(20) + 0.0
    assert stats.permutation_test_paired(a, b, n_resamples=999, seed=0).pvalue == pytest.approx(2 / 1000)
    x, y = a[:, None], b[:, None]
    sums = stats.permutation_test_paired_sums(x, y, lambda sa, sb: (sa - sb)[..., 0], n_resamples=999)
    assert sums.pvalue == pytest.approx(2 / 1000)


def test_bca_counts_ties_with_the_estimate_half_as_scipy():
    """Resampled F1 is discrete, so resamples tie with the estimate; z0 counts them half. A
    statistic with few distinct values (a share of 0/1 outcomes, k/n) against scipy's BCa."""
    rng = np.random.default_rng(20)
    for n in (6, 9):
        x = rng.integers(0, 2, n).astype(float)
        ours = stats.bootstrap_ci(x, np.mean, n_resamples=2000, method="BCa", seed=5)
        ref = sps.bootstrap((x,), np.mean, n_resamples=2000, method="BCa", rng=np.random.default_rng(5))
        ties = (ours.bootstrap_distribution == x.mean()).mean()
        assert ties > 0.1  # the case the rule is for
        assert close(ours.confidence_interval.low, ref.confidence_interval.low)
        assert close(ours.confidence_interval.high, ref.confidence_interval.high)


def test_crossed_variance_mean_squares_equal_statsmodels_two_way_anova():
    """Seeds × documents, one value a cell: the mean squares of an additive two-way ANOVA."""
    rng = np.random.default_rng(21)
    for S, D in ((2, 5), (3, 20), (5, 7)):
        y = rng.normal(size=(S, 1)) + rng.normal(size=(1, D)) + rng.normal(size=(S, D))
        frame = pd.DataFrame({"y": y.ravel(), "s": np.repeat(np.arange(S), D), "d": np.tile(np.arange(D), S)})
        table = anova_lm(ols("y ~ C(s) + C(d)", frame).fit(), typ=2)
        ms = table["sum_sq"] / table["df"]
        ours = stats.crossed_variance(y)
        assert close(ours.seed, ms["C(s)"]) and close(ours.doc, ms["C(d)"]) and close(ours.resid, ms["Residual"])


def test_crossed_t_with_one_seed_is_the_one_sample_t_over_documents():
    rng = np.random.default_rng(22)
    for D in (2, 5, 20):
        y = rng.normal(0.1, 1, (1, D))
        ours = stats.crossed_t(y)
        ref = sps.ttest_1samp(y[0], 0.0)
        assert_result(ours, ref)
        lo, hi = ref.confidence_interval()
        assert close(ours.ci.low, lo) and close(ours.ci.high, hi) and ours.df == D - 1


def test_crossed_t_variance_from_the_expected_mean_squares_by_hand():
    """V = [MS_resid + max(MS_seed − MS_resid, 0) + max(MS_doc − MS_resid, 0)] / (S·D), Satterthwaite
    df, written out in float64 for each truncation case."""
    from scipy.stats import t as t_dist

    rng = np.random.default_rng(23)
    seen = set()
    for _ in range(200):
        S, D = rng.integers(2, 6), rng.integers(3, 25)
        y = (rng.normal(size=(S, 1)) * rng.choice([0, 0.3, 2]) + rng.normal(size=(1, D)) * rng.choice([0, 0.3, 2])
             + rng.normal(size=(S, D)))
        ms = stats.crossed_variance(y)
        terms = [(ms.resid, (S - 1) * (D - 1))]
        if ms.seed > ms.resid:
            terms += [(ms.seed, S - 1), (-ms.resid, (S - 1) * (D - 1))]
        if ms.doc > ms.resid:
            terms += [(ms.doc, D - 1), (-ms.resid, (S - 1) * (D - 1))]
        seen.add((ms.seed > ms.resid, ms.doc > ms.resid))
        total = sum(v for v, _ in terms)
        # Satterthwaite on the distinct mean squares (equal ones add their coefficients)
        coef = {"s": float(ms.seed > ms.resid), "d": float(ms.doc > ms.resid)}
        coef["e"] = 1 - coef["s"] - coef["d"]
        df = total**2 / sum((c * v) ** 2 / f for c, v, f in ((coef["s"], ms.seed, S - 1), (coef["d"], ms.doc, D - 1),
                                                             (coef["e"], ms.resid, (S - 1) * (D - 1))) if c)
        se = np.sqrt(total / (S * D))
        ours = stats.crossed_t(y)
        assert close(ours.se, se) and close(ours.df, df)
        assert close(ours.statistic, y.mean() / se)
        assert close(ours.pvalue, 2 * t_dist.sf(abs(y.mean() / se), df))
        q = t_dist.ppf(0.975, df)
        assert close(ours.ci.low, y.mean() - q * se) and close(ours.ci.high, y.mean() + q * se)
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_crossed_t_of_identical_systems_is_the_point_zero():
    ours = stats.crossed_t(np.zeros((3, 20)))
    assert tuple(ours.ci) == (0.0, 0.0) and np.isnan(ours.pvalue)


def test_jackknife_pseudovalues_of_a_mean_are_the_values_and_of_f1_give_the_jackknife_variance():
    rng = np.random.default_rng(24)
    x = rng.normal(size=(3, 9))
    loo = (x.sum(1, keepdims=True) - x) / 8
    np.testing.assert_allclose(stats.jackknife_pseudovalues(x.mean(1), loo), x, **TOL)
    counts = rng.integers(0, 9, (15, 3)).astype(float)
    f1 = lambda c: sums_f1(*c.sum(0))
    full = f1(counts)
    loo = np.array([f1(np.delete(counts, j, 0)) for j in range(15)])
    pv = stats.jackknife_pseudovalues(full, loo)
    jack_var = 14 / 15 * ((loo - loo.mean()) ** 2).sum()  # the textbook jackknife variance
    assert close(pv.var(ddof=1) / 15, jack_var)


def test_pooled_crossed_variance_and_the_detectable_difference_of_its_t():
    from statsmodels.stats.power import TTestPower

    parts = [stats.CrossedVariance(3, 20, 0.5, 2.0, 1.0), stats.CrossedVariance(3, 20, 1.5, 4.0, 3.0)]
    pooled = stats.pooled_crossed_variance(parts)
    assert (pooled.seed, pooled.doc, pooled.resid) == (1.0, 3.0, 2.0)
    with pytest.raises(ValueError, match="one design"):
        stats.pooled_crossed_variance([parts[0], stats.CrossedVariance(5, 20, 1, 1, 1)])
    # the detectable difference of a t with se and df equals statsmodels' one-sample power at that df
    for n, sd in ((3, 0.01), (10, 0.5)):
        se = sd / np.sqrt(n)
        ref = TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8) * sd
        assert np.isclose(stats.detectable_difference_se(se, n - 1), ref, rtol=1e-6)
    assert stats.detectable_difference_se(0.0, 4) == 0.0 and np.isnan(stats.detectable_difference_se(0.1, 0))


def test_corrected_resampled_t_by_hand_and_against_scipy():
    """Nadeau & Bengio's corrected t on 2 repetitions × 3 folds, n_test/n_train = 0.5, by hand:
    d̄ = 0.085/6 = 0.0141667; Σ(d − d̄)² = 9.2083e-4, s² = 1.84167e-4; se = √((1/6 + 0.5)·s²) =
    0.0110805; t = 1.2785 on df 5, two-sided p = 0.2572; 95% CI d̄ ± 2.5706·se. Without the
    correction (ratio 0) it is scipy's one-sample t, and the correction divides that t by
    √(1 + J·ratio)."""
    import scipy.stats as ss
    d = [0.02, 0.01, 0.03, -0.01, 0.02, 0.015]
    r = stats.corrected_resampled_t(d, 0.5)
    assert r.df == 5 and r.variance == pytest.approx(1.84167e-4, rel=1e-5)
    assert r.se == pytest.approx(0.0110805, rel=1e-5)
    assert r.statistic == pytest.approx(1.2785208, rel=1e-6) and r.pvalue == pytest.approx(0.2571943, rel=1e-5)
    assert r.ci.low == pytest.approx(0.0141667 - 2.5705818 * 0.0110805, abs=1e-6)
    plain = ss.ttest_1samp(d, 0.0)
    r0 = stats.corrected_resampled_t(d, 0.0)
    assert r0.statistic == pytest.approx(plain.statistic, rel=1e-12) and r0.pvalue == pytest.approx(plain.pvalue, rel=1e-10)
    for ratio in (0.25, 1 / 9):
        assert stats.corrected_resampled_t(d, ratio).statistic == pytest.approx(
            plain.statistic / np.sqrt(1 + len(d) * ratio), rel=1e-12)
    low, high = ss.ttest_1samp(d, 0.0).confidence_interval()
    assert (r0.ci.low, r0.ci.high) == pytest.approx((low, high), rel=1e-10)
    # the report centres it on the pooled difference; a constant difference has no test
    assert stats.corrected_resampled_t(d, 0.5, estimate=0.02).statistic == pytest.approx(0.02 / r.se)
    same = stats.corrected_resampled_t([0.01] * 4, 0.5)
    assert np.isnan(same.pvalue) and (same.ci.low, same.ci.high) == (0.01, 0.01)
    assert np.isnan(stats.corrected_resampled_t([0.01], 0.5).pvalue)
    assert stats.corrected_resampled_se(r.variance, 2, 3, 0.5) == pytest.approx((r.se, 5.0))
    with pytest.raises(ValueError, match="test_train_ratio must be >= 0"):
        stats.corrected_resampled_t(d, -0.1)
