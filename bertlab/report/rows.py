"""Reading a study's results rows and grouping them into variants: the vocabulary every part of
the report shares (metric names, the ``[report]`` defaults, a variant's key and label, the seed
mean and median that tables and ``bertlab tradeoff`` print)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

METRICS = {"f1_micro": "micro F1", "f1_macro": "macro F1", "unweighted_accuracy": "unweighted acc.",
           "f1_tail": "tail F1"}
# the main table's columns; f1_tail joins them when the study declares its tail ([report] tail_types)
TABLE_METRICS = ("f1_micro", "f1_macro", "unweighted_accuracy")
FOLD_AXIS = "data.fold"  # the axis [study] folds makes (bertlab.study.spec); not part of a variant
DEFAULTS = {
    "metrics": ["f1_micro", "f1_macro"],  # metrics tested for significance (Holm family each)
    "compare": None,  # {NAME = {vary = "loss.name", baseline = "ce"}, ...}; None: [study] baseline
    "by_construction": None,  # [{where = {AXIS = LEVEL, ...}, why = "..."}]: comparisons not tested
    "alpha": 0.05,
    "permutation_resamples": 9999,
    "permutation_seed": 0,
    "bands": {"head": 500, "tail": 50},  # head: >= head training mentions; tail: < tail
    "min_support": 5,  # per-class rows with fewer test mentions are flagged; macro F1 also over the rest
    "anova": None,  # {a = "optim.lr", b = "sampler.batch_size", metric = "dev_f1_micro", decode = "argmax",
    #                  block = "train.seed"}, or a list of such tables (one section each)
    "figures": True,
    "confusion": False,  # per-type P/R/F1 and entity confusion matrices per variant (issue #7)
    "type_shares": False,  # each type's share of the predicted test mentions vs of the training mentions
    "plateau": None,  # {delta = 0.005, window = 3, choose = "optim.lr"}: the epoch budget from the curves
    "primary": None,  # the claim metric, declared before the study ran: tested first, the others "secondary"
    "co_primary": [],  # the claim's other metrics (e.g. f1_tail): "primary" too, tested next; they select nothing
    "target_difference": None,  # the effect the study is about: a warning on top when its MDD is larger
    "tail_types": None,  # f1_tail's fixed class set: entity types named before the runs (a list)
}


def primaries(opts: dict) -> list[str]:
    """The claim's metrics: ``[report] primary`` (it selects checkpoints) and its ``co_primary``;
    ``opts``: the report options or a study's ``[report]`` table."""
    return [opts["primary"], *opts.get("co_primary", [])] if opts.get("primary") else []


def metric_name(metric: str, opts: dict) -> str:
    """A metric's name in tables and sentences; with a declared ``primary``, marked primary or
    secondary."""
    if not opts.get("primary"):
        return METRICS[metric]
    return f"{METRICS[metric]} ({'primary' if metric in primaries(opts) else 'secondary'})"


def load_study_results(study_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(study.json, rows of results.jsonl)`` of a study folder, with clear errors."""
    from bertlab.results import read_json, read_results
    study_dir = Path(study_dir)
    meta_file, results = study_dir / "study.json", study_dir / "results.jsonl"
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file}: not found; is {study_dir} a study folder made by "
                                f"`bertlab experiment`?")
    study = read_json(meta_file)
    rows = read_results(results) if results.exists() else []
    return study, rows


def variant_key(row: dict, axes: list[str] | None = None) -> tuple:
    """The variant of a result row: every axis value but the seed (in the study's axis order),
    and the decode."""
    axes = list(row["axes"]) if axes is None else axes
    return tuple((k, row["axes"][k]) for k in axes if k not in ("train.seed", FOLD_AXIS) and k in row["axes"]) + (
        ("decode", row["decode"]),)


def variant_label(key: tuple, short: dict) -> str:
    """A variant's name in tables: ``short=value`` per axis of ``key`` (``short`` maps an axis to
    its short name), e.g. ``loss=focal, decode=knn``."""
    return ", ".join(f"{short.get(k, k)}={format_value(v)}" for k, v in key)


def format_value(v) -> str:
    """An axis value as a label prints it: a float by its repr (``0.001``, not ``0.0010``)."""
    return repr(v) if isinstance(v, float) else str(v)


def group_variants(rows: list[dict], axes: list[str] | None = None) -> dict[tuple, list[dict]]:
    """Rows grouped by variant (in order of first appearance), each group sorted by seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(variant_key(r, axes), []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def table_metrics(opts: dict) -> tuple[str, ...]:
    """The metrics of the main table: micro F1, macro F1, unweighted accuracy, and the tail F1 when
    the study names its tail types."""
    return TABLE_METRICS + (("f1_tail",) if opts.get("tail_types") else ())


def fixed_macro_f1(row: dict) -> float:
    """Macro F1 of one results row over the fixed class set: the mean F1 of the types with test
    support (seqeval's ``f1_macro`` also averages types that were only predicted)."""
    f1 = [v["f1"] for v in row.get("per_type", {}).values() if v.get("support", 0) > 0]
    return float(np.mean(f1)) if f1 else math.nan


def tail_f1(row: dict, tail) -> float:
    """The tail F1 of one results row: the mean F1 of the ``tail`` types with test support (a fixed
    class set declared before the runs, ``[report] tail_types``); NaN if none has support."""
    per_type = row.get("per_type", {})
    f1 = [per_type[t]["f1"] for t in tail if per_type.get(t, {}).get("support", 0) > 0]
    return float(np.mean(f1)) if f1 else math.nan


def metric_value(row: dict, metric: str, tail=None) -> float:
    """The value of ``metric`` in a results row: macro F1 over the fixed class set, the tail F1 over
    the ``tail`` types (``tail_f1``)."""
    if metric == "f1_tail":
        return tail_f1(row, tail or ())
    value = fixed_macro_f1(row) if metric == "f1_macro" else row.get(metric)
    return math.nan if value is None else float(value)


def median(values) -> float:
    """The median of the values that are there (None and NaN left out); NaN if none is."""
    v = np.asarray([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else math.nan


def mean_std(values) -> tuple[float, float]:
    """``(mean, std)`` of the values that are there (None left out), std with ``ddof=1`` (the sample
    standard deviation); ``std`` is NaN for one value, both NaN for none."""
    v = np.asarray([x for x in values if x is not None], float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def band_of(mentions: int, bands: dict) -> str:
    """head (>= bands.head training mentions), tail (< bands.tail), middle otherwise."""
    if mentions >= bands["head"]:
        return "head"
    return "tail" if mentions < bands["tail"] else "middle"


def fold_ratio(row: dict) -> float:
    """n_test / n_train of one fold's run (its ``fold`` record), the corrected t's correlation term."""
    documents = (row.get("fold") or {}).get("documents") or {}
    return documents["test"] / documents["train"] if documents.get("train") else math.nan


def cv_ratio(rows: list[dict]) -> float:
    """The mean n_test / n_train of the folds the rows pool."""
    values = [r.get("fold_ratio", math.nan) for r in rows]
    return float(np.mean(values)) if values else math.nan
