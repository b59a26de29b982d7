"""A study's ``report.md``, rebuilt from ``results.jsonl`` and the runs' prediction files only.

``build_report(study_dir)`` never trains: it reads what ``bertlab experiment`` left in the study
folder, so ``bertlab report NAME`` can be re-run at any time (e.g. after changing ``[report]``
options or while a study is still running). It computes once, then renders from the numbers:

* ``compute``: ``compute_report(study_dir)``, a pure function of the study folder, returns every
  number the report shows (``Report.json`` is report.json); by topic, ``rows`` (results rows and
  variants), ``counts`` (per-document counts, intervals), ``runs`` (a variant's runs, folds pooled),
  ``comparisons`` (the tests, Holm, MDD, an earlier build's results), ``classes``, ``training``,
  ``anova``.
* ``markdown`` and ``significance``: report.md from those numbers (``format``: how a number, a
  p-value and a table print); ``figures``: matplotlib figures from them (arrays, not files).
* ``build``: ``build_report``, the one place that writes report.json, report.md and figures/.
* ``cli``: ``bertlab report`` (``main``) and ``publish``.
* ``verdicts``: a claim's category (supported / not supported / mixed / inconclusive) from a built
  study folder, by the rules docs/experiments.md fixed before the cross-validated tests; it reads
  report.json, it is no part of it.

The package exports ``build_report``, its entry point from Python.

The numbers, and how each is computed (docs/evaluation.md, "Which test answers which question",
explains the choices):

* **mean ± std over seeds**: std with ``ddof=1`` (the sample standard deviation), ``–`` for one run.
  A model without random state (marked ``deterministic``, or with identical predictions on every
  seed) is one run.
* **macro F1 and unweighted accuracy** average over a fixed class set, the classes with a gold
  mention in the test set; in a document resample without any mention of a class, that class
  keeps its full-test-set score (``scores_from_sums``).
* **95% CI**: of the mean over seeds *and* test documents, ``stats.crossed_t`` on each run's
  per-document jackknife pseudo-values (``pseudovalues``): a two-way random-effects model, seeds ×
  documents, Satterthwaite df; for a single run (deterministic) documents only. Its coverage is
  proven by simulation (tests/test_stats_simulation.py, docs/evaluation.md).
* **comparisons**, in the families the study declares (``[report.compare]``; else every variant
  against ``[study] baseline``), each level against the baseline level within every combination
  of the other factors, runs paired by seed (``paired_runs``): the difference of seed means with
  its interval and test of record (``crossed_t`` on the paired differences), Holm-corrected within
  one family and one metric (comparisons certain by construction, and those the study declares
  so in ``[[report.by_construction]]``, left out); a paired permutation test over documents (for
  these runs), the seed-paired t-test with paired d, and the smallest difference the test of
  record detects (80% power) from the variance pooled over the study's comparisons.
* **two-way ANOVA** (``[report] anova``): Type II, the seed as a block factor by default.
* **learning curves**: dev scores per epoch from each row's ``curve``, when the rows have one.
* **where the time went**: each trained variant's mean seconds per part of ``time_split``
  (training, dev evaluation, KNN fit, I/O, final scoring) and its share, and the study's total.
* **a committed folder** (``docs/results/NAME``: results and report.json, no prediction files):
  the intervals and document-level tests are taken from the earlier build's report.json where it
  scored the same runs with the same values, and marked so.
"""
from bertlab.report.build import build_report

__all__ = ["build_report"]
