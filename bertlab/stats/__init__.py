"""Statistics for comparing NER runs, written in NumPy with scipy's names and results.

One namespace, as ``scipy.stats`` is one: ``from bertlab import stats; stats.ttest_rel(a, b)``. The
functions live by topic in ``significance`` (t tests, ANOVA, Wilcoxon, permutation tests, Holm,
effect sizes), ``bootstrap``, ``crossed`` (seeds × documents, cross-validation) and ``power``.

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

from bertlab.stats.bootstrap import (ConfidenceInterval, BootstrapResult, bootstrap_ci, bca_levels,
                                     hierarchical_bootstrap_diff)
from bertlab.stats.common import ALTERNATIVES, TestResult
from bertlab.stats.crossed import (jackknife_pseudovalues, CrossedVariance, crossed_variance, crossed_t,
                                   pooled_crossed_variance, corrected_resampled_t, corrected_resampled_se)
from bertlab.stats.power import detectable_difference, detectable_difference_se, seeds_needed
from bertlab.stats.significance import (ttest_rel, ttest_ind, f_oneway, AnovaTable, anova_two_way, wilcoxon,
                                        permutation_test_paired, permutation_test_paired_sums, bonferroni,
                                        holm, cohens_d, paired_d)

__all__ = ["ttest_rel", "ttest_ind", "f_oneway", "anova_two_way", "AnovaTable", "wilcoxon", "holm",
           "bonferroni", "bootstrap_ci", "BootstrapResult", "ConfidenceInterval", "cohens_d", "paired_d",
           "permutation_test_paired", "permutation_test_paired_sums", "hierarchical_bootstrap_diff",
           "seeds_needed", "detectable_difference", "detectable_difference_se", "TestResult",
           "jackknife_pseudovalues", "CrossedVariance", "crossed_variance", "crossed_t", "pooled_crossed_variance",
           "corrected_resampled_t", "corrected_resampled_se"]
