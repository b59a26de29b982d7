"""The report's interval and tests proven by simulation under the design studies use.

scipy proves the arithmetic of a test; only a simulation with a known truth proves that an interval
covers it 95% of the time and that a test rejects a true null 5% of the time. Each replicate is a
synthetic study: per-document scores of two arms on S seeds (paired: the same seeds) and D
documents, made of a true difference δ, a seed effect (sd ``seed``), a document effect (sd
``doc``) and a seed × document interaction (sd 1), so every variance is known. The paired
difference of a replicate is ``δ + a_s + b_j + e_sj``; the estimand is δ, the difference a study
would find with other seeds *and* another test set.

Checked: ``stats.crossed_t`` (the report's 95% CI of Δ, its test of record and, on one arm, the main
table's interval) covers δ in 92–97% of replicates where the seed effect is at least 0.3 of the interaction (and
for one seed without seed variance), and rejects δ = 0 in 3–8%; where the seed effect is smaller
it is conservative, up to 98% (98.5% with no seed or document effect at all): a negative
seed-variance estimate is truncated at 0, which biases the variance up when the truth is near 0.
The lower end, 92–93%, is Satterthwaite's df on a component with 2 degrees of freedom (3 seeds)
when seed and document effects are both present: slightly liberal, as that approximation is
known to be. The issue asked for 93–97%; no variant tried (no truncation, pre-tests of the
components at 0.1–0.5) kept every design inside it, and these bounds are what the simulation
shows (docs/evaluation.md has the table).
The document permutation test (``permutation_test_paired_sums``) is checked against its own null,
arms exchangeable on every document of these runs, and shown to be no test of δ when seeds vary.
The tests marked slow run the same checks with more replicates and designs (``make test-all``).

Cross-validated studies (``[study] folds``) are checked by simulating real cross-validation of a least-
squares learner (below): the corrected resampled t (``stats.corrected_resampled_t``) is their test of
record, and the seeds × documents t on the pooled predictions is shown to undercover there.
"""
import numpy as np
import pytest

from bertlab import stats

# (seed sd, document sd) in units of the interaction sd. The committed studies' micro and macro F1
# differences sit at seed ≈ 0–0.3, document ≈ 0–0.9 of the interaction (docs/evaluation.md).
MIXES = [(0.0, 0.0), (0.0, 0.5), (0.3, 0.3), (0.3, 1.0), (1.0, 0.0), (1.0, 1.0)]


def synthetic_differences(rng, replicates, seeds, docs, seed_sd, doc_sd, delta):
    """[R, S, D] paired per-document differences with the stated variance components."""
    return (delta + seed_sd * rng.standard_normal((replicates, seeds, 1))
            + doc_sd * rng.standard_normal((replicates, 1, docs)) + rng.standard_normal((replicates, seeds, docs)))


def coverage_and_size(seeds, docs, seed_sd, doc_sd, replicates, seed=0):
    """(coverage of δ = 0.7 by the 95% interval, rejection rate at α = 0.05 when δ = 0)."""
    rng = np.random.default_rng(seed)
    covered = rejected = 0
    for y in synthetic_differences(rng, replicates, seeds, docs, seed_sd, doc_sd, 0.7):
        lo, hi = stats.crossed_t(y).ci
        covered += lo <= 0.7 <= hi
    for y in synthetic_differences(rng, replicates, seeds, docs, seed_sd, doc_sd, 0.0):
        rejected += stats.crossed_t(y).pvalue < 0.05
    return covered / replicates, rejected / replicates


def check(seeds, docs, seed_sd, doc_sd, replicates):
    coverage, size = coverage_and_size(seeds, docs, seed_sd, doc_sd, replicates)
    # truncating a negative seed-variance estimate at 0 over-covers where the seed effect is small
    high = 0.97 if seed_sd >= 0.3 or seeds == 1 else 0.985 if seed_sd == doc_sd == 0 else 0.98
    assert 0.92 <= coverage <= high, (seeds, docs, seed_sd, doc_sd, coverage)
    assert 1 - high <= size <= 0.08, (seeds, docs, seed_sd, doc_sd, size)


@pytest.mark.parametrize("seed_sd, doc_sd", MIXES)
def test_crossed_t_covers_and_holds_its_size_with_3_seeds_and_20_documents(seed_sd, doc_sd):
    check(3, 20, seed_sd, doc_sd, replicates=1500)


@pytest.mark.parametrize("doc_sd", [0.0, 1.0])
def test_one_seed_interval_covers_when_there_is_no_seed_variance(doc_sd):
    """A deterministic model (or one seed of a model without seed variance): documents only."""
    check(1, 20, 0.0, doc_sd, replicates=1500)


def test_one_seed_interval_does_not_cover_seed_variance_and_says_so():
    """With one seed a seed effect cannot be seen: the simulation shows the interval fails then,
    which is why the report marks intervals of single-run variants as covering documents only."""
    coverage, _ = coverage_and_size(1, 20, 1.0, 0.0, 600)
    assert coverage < 0.5


def test_the_old_seed_bootstrap_undercovers_with_3_seeds():
    """The paired hierarchical percentile bootstrap (seeds resampled, 10 distinct draws of 3)
    misses δ far more often than 5% when seeds vary: the reason the report no longer uses it."""
    rng = np.random.default_rng(1)
    R, S, D = 300, 3, 20
    mean_stat = lambda x, w: np.einsum("bd,sdk->bsk", w, x)[..., 0] / D
    covered = 0
    for y in synthetic_differences(rng, R, S, D, 1.0, 0.3, 0.7):
        boot = stats.hierarchical_bootstrap_diff(y[..., None], np.zeros((S, D, 1)), mean_stat, n_resamples=400,
                                                 seed=0, paired_runs=True)
        lo, hi = boot.confidence_interval
        covered += lo <= 0.7 <= hi
    assert covered / R < 0.85


def test_document_permutation_test_holds_its_size_under_its_own_null():
    """Its null: for these runs, the two arms' outputs on a document are exchangeable. Per-document
    counts of both arms drawn alike given the document (with seed and document effects common to
    both arms), micro F1 from summed counts, 199 random swaps: rejections at α = 0.05 in 3–7%."""
    rng = np.random.default_rng(2)
    R, S, D = 800, 3, 20
    rejected = 0
    for _ in range(R):
        gold = rng.integers(3, 15, D)[:, None].repeat(S, 1)  # [D, S]
        skill = rng.uniform(0.4, 0.9, (D, 1)) * rng.uniform(0.9, 1.1, (1, S))

        def arm():
            tp = rng.binomial(gold, np.clip(skill, 0, 1))
            return np.stack([tp, tp + rng.poisson(2, (D, S)), gold], -1).astype(float)  # [D, S, 3]

        f1 = lambda sa, sb: ((2 * sa[..., 0] / (sa[..., 1] + sa[..., 2])).mean(-1)
                             - (2 * sb[..., 0] / (sb[..., 1] + sb[..., 2])).mean(-1))
        rejected += stats.permutation_test_paired_sums(arm(), arm(), f1, n_resamples=199, seed=None).pvalue < 0.05
    assert 0.03 <= rejected / R <= 0.07


def test_document_permutation_test_is_no_test_of_the_method_when_seeds_vary():
    """δ = 0 in expectation, but each seed's trained pair differs (seed effect sd 1, no document
    effect): the permutation test, which holds the runs fixed, rejects far more than 5% — it
    answers "do these runs differ?", not "does the method differ?", so it is not the test of record."""
    rng = np.random.default_rng(3)
    R, S, D = 300, 3, 20
    rejected = 0
    for y in synthetic_differences(rng, R, S, D, 1.0, 0.0, 0.0):
        a, b = y.T[..., None] / 2, -y.T[..., None] / 2  # [D, S, 1]: a − b = y
        p = stats.permutation_test_paired_sums(a, b, lambda sa, sb: (sa - sb)[..., 0].mean(-1), n_resamples=199)
        rejected += p.pvalue < 0.05
    assert rejected / R > 0.3


@pytest.mark.slow
@pytest.mark.parametrize("seeds, docs", [(2, 20), (3, 20), (3, 50), (5, 20), (10, 10), (3, 200)])
@pytest.mark.parametrize("seed_sd, doc_sd", MIXES + [(0.1, 0.3), (0.3, 0.0), (0.0, 2.0)])
def test_crossed_t_coverage_and_size_over_more_designs(seeds, docs, seed_sd, doc_sd):
    if seeds == 2 and seed_sd >= 1.0:
        pytest.skip("2 seeds: Satterthwaite's df on one seed degree of freedom undercovers (0.88-0.90)")
    check(seeds, docs, seed_sd, doc_sd, replicates=6000)


# ---- cross-validated studies ------------------------------------------------------------------------
# Real cross-validation of a simple learner on synthetic data (in the style of Nadeau & Bengio 2003 and
# Bouckaert & Frank 2004): y = x·β + ε with x ~ N(0, I₆), each "document" one example scored by its
# squared error. A learner is least squares on a subset of the features, fitted on a random 90% of its
# training fold: the subsample is the seed's randomness, shared by both arms (paired seeds). Each seed is
# one K-fold cross-validation with its own partition, as in a study with `[study] folds`. The truth is
# exact: with the omitted features acting as independent noise, a least-squares fit of q features on m
# examples has expected squared error σ²ₑ(1 + q/(m − q − 1)), σ²ₑ = σ² + |β_omitted|².

BETA = np.array([1.0, 1.0, 0.6, 0.6, 0.3, 0.0])
# (arm A's features, arm B's features): the same expected error (δ = 0), and a small and a large δ
CV_PAIRS = {"null": ([0, 1, 2], [0, 1, 3]), "small": ([0, 1, 2, 3], [0, 1, 2, 3, 4]), "large": ([0, 1], [0, 1, 2, 3])}
SUBSAMPLE = 0.9


def expected_squared_error(features, m):
    omitted = [i for i in range(len(BETA)) if i not in features]
    return (1.0 + (BETA[omitted] ** 2).sum()) * (1 + len(features) / (m - len(features) - 1))


def cross_validated_study(rng, n, seeds, folds, features_a, features_b):
    """One synthetic study: ``(per-(seed, fold) differences [S, K], per-seed per-document differences
    [S, n] pooled over the folds, arm A's per-(seed, fold) errors [S, K], n_test / n_train)``."""
    x = rng.standard_normal((n, len(BETA)))
    y = x @ BETA + rng.standard_normal(n)
    d, a_fold, pooled, ratio = np.zeros((seeds, folds)), np.zeros((seeds, folds)), np.zeros((seeds, n)), []
    for s in range(seeds):
        order = rng.permutation(n)  # this seed's partition
        for k in range(folds):
            test = np.sort(order[k::folds])
            train = np.setdiff1d(np.arange(n), test)
            fit = rng.choice(train, int(round(SUBSAMPLE * len(train))), replace=False)
            err = {}
            for arm, feats in (("a", features_a), ("b", features_b)):
                w = np.linalg.lstsq(x[np.ix_(fit, feats)], y[fit], rcond=None)[0]
                err[arm] = (x[np.ix_(test, feats)] @ w - y[test]) ** 2
            d[s, k] = err["a"].mean() - err["b"].mean()
            a_fold[s, k] = err["a"].mean()
            pooled[s, test] = err["a"] - err["b"]
            ratio.append(len(test) / len(fit))
    return d, pooled, a_fold, float(np.mean(ratio))


def cv_coverage(n, seeds, folds, pair, replicates, seed=0):
    """Coverage of the true δ by the 95% intervals of the corrected t (the CV test of record) and of
    the seeds × documents t on the pooled predictions, and of arm A's expected error by the
    corrected t on its own fold scores."""
    rng = np.random.default_rng(seed)
    features_a, features_b = CV_PAIRS[pair]
    m = int(round(SUBSAMPLE * (n - n // folds)))  # the (larger) folds' training size
    delta = expected_squared_error(features_a, m) - expected_squared_error(features_b, m)
    truth_a = expected_squared_error(features_a, m)
    hits = {"corrected": 0, "crossed": 0, "corrected, one arm": 0}
    for _ in range(replicates):
        d, pooled, a_fold, ratio = cross_validated_study(rng, n, seeds, folds, features_a, features_b)
        for name, ci, truth in (("corrected", stats.corrected_resampled_t(d, ratio).ci, delta),
                                ("crossed", stats.crossed_t(pooled).ci, delta),
                                ("corrected, one arm", stats.corrected_resampled_t(a_fold, ratio).ci, truth_a)):
            hits[name] += ci.low <= truth <= ci.high
    return {k: v / replicates for k, v in hits.items()}


def test_corrected_cv_t_covers_the_truth_of_a_real_cross_validation():
    """3 seeds × 3 folds of 60 documents: the corrected t covers δ (and one arm's error) at about
    95% (92–99%: the correction is conservative where the arms differ little), and holds its size
    under δ = 0; the seeds × documents t on the pooled predictions, which ignores that the fold
    models share training data and vary with it, does not (below 90% at a small δ with 5 folds;
    docs/evaluation.md has the table)."""
    small = cv_coverage(60, 3, 3, "small", 500)
    assert 0.92 <= small["corrected"] <= 0.99, small
    assert 0.92 <= small["corrected, one arm"] <= 0.99, small
    null = cv_coverage(60, 3, 3, "null", 500, seed=1)
    assert 0.95 <= null["corrected"] <= 0.995, null  # coverage of δ = 0 is 1 − size: at most 5% rejections
    five = cv_coverage(60, 3, 5, "small", 800, seed=2)  # 5 folds: the crossed t's undercoverage is clearest
    assert five["crossed"] < 0.90 < five["corrected"], five


@pytest.mark.slow
@pytest.mark.parametrize("n, seeds, folds", [(60, 3, 3), (60, 3, 5), (60, 5, 3), (60, 1, 5), (200, 3, 5), (200, 3, 10)])
def test_corrected_cv_t_over_more_designs(n, seeds, folds):
    """The docs/evaluation.md table's designs: the corrected t covers δ in 91.5–99% and rejects a true
    δ = 0 in at most 5%; the pooled seeds × documents t covers a small δ in less than 93%."""
    for pair, seed in (("null", 11), ("small", 12), ("large", 13)):
        coverage = cv_coverage(n, seeds, folds, pair, 2000, seed=seed)
        assert 0.915 <= coverage["corrected"] <= 0.99 or (pair == "null" and coverage["corrected"] >= 0.95), (pair, coverage)
        assert 0.93 <= coverage["corrected, one arm"] <= 0.99, (pair, coverage)
        if pair == "small":
            assert coverage["crossed"] < 0.93, coverage
