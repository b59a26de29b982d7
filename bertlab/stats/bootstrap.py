"""Bootstrap intervals: percentile and BCa over one level, and the hierarchical (seeds, then
documents) bootstrap of a difference between two variants."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special



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
