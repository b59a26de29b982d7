"""What every test in ``bertlab.stats`` shares: the scipy-like result tuple and the p-value of a t."""
from __future__ import annotations

import numpy as np
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
