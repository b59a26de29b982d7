"""A study's ``report.md``, rebuilt from ``results.jsonl`` and the runs' prediction files only.

``build_report(study_dir)`` never trains: it reads what ``bertlab experiment`` left in the study
folder, so ``bertlab report NAME`` can be re-run at any time (e.g. after changing ``[report]``
options or while a study is still running).

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
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from bertlab import stats
from bertlab.families import by_construction, comparison_families, construction_rules
from bertlab.errors import fail
from bertlab.files import write_text
from bertlab.metrics import conlleval_entities, invalid_transitions, overlap_matches, strict_entities

METRICS = {"f1_micro": "micro F1", "f1_macro": "macro F1", "unweighted_accuracy": "unweighted acc."}
FOLD_AXIS = "data.fold"  # the axis [study] folds makes (bertlab.experiment); not part of a variant
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
    "target_difference": None,  # the effect the study is about: a warning on top when its MDD is larger
}


def metric_name(metric: str, opts: dict) -> str:
    """A metric's name in tables and sentences; with a declared ``primary``, marked primary or
    secondary."""
    primary = opts.get("primary")
    if not primary:
        return METRICS[metric]
    return f"{METRICS[metric]} ({'primary' if metric == primary else 'secondary'})"


# ---- loading ------------------------------------------------------------------------------------

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
    return ", ".join(f"{short.get(k, k)}={_fmt_value(v)}" for k, v in key)


def _fmt_value(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def group_variants(rows: list[dict], axes: list[str] | None = None) -> dict[tuple, list[dict]]:
    """Rows grouped by variant (in order of first appearance), each group sorted by seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(variant_key(r, axes), []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


# ---- per-document counts and the document bootstrap ---------------------------------------------

def document_counts(pred_file: str | os.PathLike) -> dict:
    """Per-document counts of one prediction file (``predictions_<split>_<decode>.jsonl``).

    Returns ``{"docs": [doc ids in order], "entities": {type: int [D, 3]}`` (true positives,
    predicted, gold; strict IOB2 as seqeval's strict mode), ``"tokens": {label: int [D, 2]}``
    (correct, gold) for the unweighted accuracy, and ``"conventions": {name: int [D, k]}``: the
    other scoring conventions, summed over types — ``conlleval`` and ``lenient`` (tp, predicted,
    gold; ``metrics.conlleval_entities``, ``metrics.lenient_counts``), ``tokens`` (correct tags,
    tags), ``invalid`` (invalid IOB2 transitions the predictions make, predicted ``I-`` tags;
    ``metrics.invalid_transitions``)}``."""
    docs: dict[str, int] = {}
    ent: dict[str, list] = defaultdict(list)
    tok: dict[str, list] = defaultdict(list)
    per_doc_ent, per_doc_tok = [], []
    conventions = {"conlleval": [], "lenient": [], "tokens": [], "invalid": []}
    with open(pred_file, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            s = json.loads(line)
            d = docs.setdefault(s["doc_id"], len(docs))
            if d == len(per_doc_ent):
                per_doc_ent.append(defaultdict(lambda: [0, 0, 0]))
                per_doc_tok.append(defaultdict(lambda: [0, 0]))
                for rows in conventions.values():
                    rows.append([0, 0, 0])
            tags = s["tags"] if "tags" in s else s["gold"]
            gold = {(t, a, b) for t, a, b in strict_entities(tags)}
            pred = {(t, a, b) for t, a, b in strict_entities(s["pred"])}
            loose_gold, loose_pred = set(conlleval_entities(tags)), set(conlleval_entities(s["pred"]))
            for name, row in (("conlleval", (len(loose_gold & loose_pred), len(loose_pred), len(loose_gold))),
                              ("lenient", (overlap_matches(list(gold), list(pred)), len(pred), len(gold))),
                              ("tokens", (sum(g == p for g, p in zip(tags, s["pred"])), len(tags), 0)),
                              ("invalid", (invalid_transitions(s["pred"]),
                                           sum(p.startswith("I-") for p in s["pred"]), 0))):
                conventions[name][d] = [x + y for x, y in zip(conventions[name][d], row)]
            for t, *_ in gold & pred:
                per_doc_ent[d][t][0] += 1
            for t, *_ in pred:
                per_doc_ent[d][t][1] += 1
            for t, *_ in gold:
                per_doc_ent[d][t][2] += 1
            for g, p in zip(tags, s["pred"]):
                per_doc_tok[d][g][1] += 1
                per_doc_tok[d][g][0] += int(g == p)
    types = sorted({t for c in per_doc_ent for t in c})
    labels = sorted({l for c in per_doc_tok for l in c})
    D = len(docs)
    for t in types:
        ent[t] = np.array([per_doc_ent[d][t] if t in per_doc_ent[d] else [0, 0, 0] for d in range(D)],
                          dtype=np.int64)
    for l in labels:
        tok[l] = np.array([per_doc_tok[d][l] if l in per_doc_tok[d] else [0, 0] for d in range(D)],
                          dtype=np.int64)
    return {"docs": list(docs), "entities": dict(ent), "tokens": dict(tok),
            "conventions": {k: np.array(v, dtype=np.int64).reshape(D, 3) for k, v in conventions.items()}}


@dataclass
class CountLayout:
    """How one row of stacked counts is laid out: ``types`` entity types × (tp, predicted, gold),
    then ``tags`` gold tags × (correct, gold). ``classes`` / ``tag_classes`` are the indices of
    the **fixed class sets** the macro metrics average over: the types and tags with a gold
    mention in the full test set."""

    types: list[str]
    tags: list[str]
    classes: np.ndarray
    tag_classes: np.ndarray

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x [..., K]`` -> entity counts ``[..., T, 3]`` and tag counts ``[..., L, 2]``."""
        T = len(self.types)
        return (x[..., :3 * T].reshape(*x.shape[:-1], T, 3),
                x[..., 3 * T:].reshape(*x.shape[:-1], len(self.tags), 2))


def stack_counts(counts: list[dict], docs: list[str] | None = None,
                 types: list[str] | None = None) -> tuple[np.ndarray, CountLayout]:
    """The per-document counts of several runs (``document_counts``) as one float array
    ``[runs, D, K]`` in the order of ``docs`` (default: the first run's), with its layout.
    ``types`` (default: every type gold or predicted in some run) lets two variants share one
    layout. Raises ``ValueError`` when the runs were scored on different documents."""
    docs = list(counts[0]["docs"]) if docs is None else list(docs)
    types = sorted({t for c in counts for t in c["entities"]}) if types is None else list(types)
    tags = sorted({l for c in counts for l in c["tokens"]})
    D = len(docs)
    rows = []
    for c in counts:
        position = {d: i for i, d in enumerate(c["docs"])}
        if sorted(position) != sorted(docs):
            raise ValueError("these runs were scored on different test documents")
        order = [position[d] for d in docs]
        ent = [c["entities"][t][order] if t in c["entities"] else np.zeros((D, 3)) for t in types]
        tok = [c["tokens"][l][order] if l in c["tokens"] else np.zeros((D, 2)) for l in tags]
        rows.append(np.concatenate([np.stack(ent, 1).reshape(D, -1), np.stack(tok, 1).reshape(D, -1)], 1))
    x = np.stack(rows).astype(np.float64)
    probe = CountLayout(types, tags, np.arange(0), np.arange(0))
    ent, tok = probe.split(x[0].sum(0))
    layout = CountLayout(types, tags, np.flatnonzero(ent[:, 2] > 0), np.flatnonzero(tok[:, 1] > 0))
    return x, layout


def class_f1(e: np.ndarray) -> np.ndarray:
    """Per-class F1 from entity counts ``[..., 3]`` (tp, predicted, gold): 2 TP / (predicted +
    gold); NaN where the class has no gold mention (undefined there, not 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(e[..., 2] > 0, 2 * e[..., 0] / (e[..., 1] + e[..., 2]), np.nan)


def per_class_scores(x: np.ndarray, layout: CountLayout, metric: str) -> np.ndarray:
    """Per-class F1 (``f1_macro``: 2 TP / (predicted + gold)) or recall (``unweighted_accuracy``:
    correct / gold) of the fixed class set, from summed counts ``x [..., K]``; NaN for a class with
    no gold mention in ``x`` (the score is undefined there, not 0)."""
    ent, tok = layout.split(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "f1_macro":
            return class_f1(ent[..., layout.classes, :])
        t = tok[..., layout.tag_classes, :]
        return np.where(t[..., 1] > 0, t[..., 0] / t[..., 1], np.nan)


def scores_from_sums(x: np.ndarray, layout: CountLayout, metric: str, full: np.ndarray | None = None) -> np.ndarray:
    """One metric from summed counts ``x [..., K]`` (leading dimensions kept).

    ``f1_micro``: 2 TP / (predicted + gold) pooled over types, 0 without a true positive (as
    seqeval). ``f1_macro`` / ``unweighted_accuracy``: the mean over the **fixed class set** of
    per-class F1 / recall (``per_class_scores``). A class with no gold mention in ``x`` (a document
    resample that left out its documents) takes its value from ``full [..., K]`` (the same runs on
    the full test set, broadcast against ``x``): that resample says nothing about the class, so it
    neither drops out of the mean (which biased resampled macro scores upward) nor counts as 0."""
    if metric == "f1_micro":
        ent, _ = layout.split(x)
        tp, pred, gold = ent[..., 0].sum(-1), ent[..., 1].sum(-1), ent[..., 2].sum(-1)
        return np.where(tp > 0, 2 * tp / np.maximum(pred + gold, 1), 0.0)
    if metric not in ("f1_macro", "unweighted_accuracy"):
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(METRICS)}")
    per_class = per_class_scores(x, layout, metric)
    if per_class.shape[-1] == 0:
        return np.full(per_class.shape[:-1], np.nan)
    if full is not None:
        per_class = np.where(np.isnan(per_class), per_class_scores(full, layout, metric), per_class)
    return per_class.mean(-1)


def score_runs(x: np.ndarray, weights: np.ndarray, layout: CountLayout, metric: str) -> np.ndarray:
    """``[B, S]``: every run of ``x [S, D, K]`` scored on each document resample, given as
    multiplicities ``weights [B, D]`` (all ones: the full test set)."""
    sums = np.einsum("bd,sdk->bsk", weights, x)
    return scores_from_sums(sums, layout, metric, full=x.sum(1)[None])


def multiplicities(idx: np.ndarray, n_docs: int) -> np.ndarray:
    """Resampled document indices ``[B, D]`` -> how often each document is drawn, ``[B, D]``."""
    return np.stack([np.bincount(row, minlength=n_docs) for row in idx]).astype(np.float64)


def pseudovalues(x: np.ndarray, layout: CountLayout, metric: str) -> np.ndarray:
    """``[S, D]``: each run's per-document jackknife pseudo-values of ``metric``
    (``stats.jackknife_pseudovalues``) from its counts ``x [S, D, K]``: the metric on all documents
    and without each one, turned into per-document values whose mean is (nearly) the metric and
    whose spread is its document variance. The leave-one-out scores keep the fixed class set
    (``scores_from_sums``), as every resample does."""
    S, D, _ = x.shape
    full = score_runs(x, np.ones((1, D)), layout, metric)[0]  # [S]
    loo = score_runs(x, 1.0 - np.eye(D), layout, metric)  # [D, S]
    return stats.jackknife_pseudovalues(full, loo.T)


def variant_interval(x: np.ndarray, layout: CountLayout, metric: str,
                     confidence_level: float = 0.95) -> tuple[float, float, float, str | None]:
    """One variant's 95% interval of its mean score over seeds and test documents: ``x [S, D, K]``
    its runs' per-document counts. ``stats.crossed_t`` on the runs' pseudo-values (seeds and
    documents both samples; with one run, documents only).

    Returns ``(estimate, low, high, why_none)``: the seed mean on the full test set and its
    interval, or NaN bounds and the reason when none exists (fewer than 2 documents, an
    undefined metric)."""
    S, D, _ = x.shape
    theta = float(score_runs(x, np.ones((1, D)), layout, metric).mean())
    if D < 2:
        return theta, math.nan, math.nan, "fewer than 2 test documents"
    if math.isnan(theta):
        return theta, math.nan, math.nan, "no class of this metric has a gold mention"
    lo, hi = stats.crossed_t(pseudovalues(x, layout, metric), estimate=theta, confidence_level=confidence_level).ci
    return theta, float(lo), float(hi), None


def cv_variant_interval(x: np.ndarray, fold_of: np.ndarray, ratio: float, layout: CountLayout, metric: str,
                        confidence_level: float = 0.95) -> tuple[float, float, float, str | None]:
    """``variant_interval`` for runs pooled over cross-validation folds: the pooled seed mean, and the
    corrected resampled t (``stats.corrected_resampled_t``) over the per-(seed, fold) scores."""
    S, D, _ = x.shape
    theta = float(score_runs(x, np.ones((1, D)), layout, metric).mean())
    if math.isnan(theta):
        return theta, math.nan, math.nan, "no class of this metric has a gold mention"
    scores = fold_scores(x, fold_of, layout, metric)
    if scores.size < 2 or math.isnan(ratio):
        return theta, math.nan, math.nan, "fewer than 2 folds" if scores.size < 2 else "no fold sizes recorded"
    ci = stats.corrected_resampled_t(scores, ratio, estimate=theta, confidence_level=confidence_level).ci
    return theta, float(ci.low), float(ci.high), None


# ---- the runs of a variant ------------------------------------------------------------------------

def fixed_macro_f1(row: dict) -> float:
    """Macro F1 of one results row over the fixed class set: the mean F1 of the types with test
    support (seqeval's ``f1_macro`` also averages types that were only predicted)."""
    f1 = [v["f1"] for v in row.get("per_type", {}).values() if v.get("support", 0) > 0]
    return float(np.mean(f1)) if f1 else math.nan


def metric_value(row: dict, metric: str) -> float:
    """The value of ``metric`` in a results row, macro F1 over the fixed class set."""
    value = fixed_macro_f1(row) if metric == "f1_macro" else row.get(metric)
    return math.nan if value is None else float(value)


@dataclass
class VariantRuns:
    """The runs of one variant that the statistics use: ``rows`` (one per seed; a single one for a
    deterministic model), their per-document ``counts`` (``None`` without prediction files),
    and ``single``: why several seeds count as one run (``None`` if they don't)."""

    rows: list[dict]
    counts: list[dict] | None
    single: str | None = None
    seeds_run: int = 0
    cv: bool = False  # rows pooled over cross-validation folds (``pool_folds``): counts carry ``fold_of``


def _flagged_deterministic(study_dir: Path, row: dict) -> bool:
    """A run marked deterministic (no random state: HMM, L-BFGS feature CRF), in its results row
    or, for rows written before that field, in its metrics.json."""
    if row.get("deterministic") is not None:
        return bool(row["deterministic"])
    metrics = study_dir / row["run_id"] / "metrics.json"
    if metrics.exists():
        try:
            return bool(json.loads(metrics.read_text(encoding="utf-8")).get("deterministic", False))
        except (json.JSONDecodeError, OSError):
            return False
    return False


def _same_counts(a: dict, b: dict) -> bool:
    return (a["docs"] == b["docs"] and a["entities"].keys() == b["entities"].keys()
            and a["tokens"].keys() == b["tokens"].keys()
            and all(np.array_equal(a["entities"][t], b["entities"][t]) for t in a["entities"])
            and all(np.array_equal(a["tokens"][t], b["tokens"][t]) for t in a["tokens"]))


def variant_runs(study_dir: Path, group: list[dict], pooled_counts: dict | None = None) -> VariantRuns:
    """A variant's rows and per-document counts; a deterministic model, or seeds whose predictions
    are identical (old results of a deterministic model), count as one run. ``pooled_counts``
    (``pool_folds``): the rows are pooled over cross-validation folds, their counts given by run id;
    each seed is then its own partition, so no seed stands for another."""
    if pooled_counts is not None:
        counts = [pooled_counts.get((r["run_id"], r["decode"])) for r in group]
        return VariantRuns(group, counts if group and all(c is not None for c in counts) else None, None,
                           len(group), cv=True)
    files = [study_dir / r["predictions"] for r in group if r.get("predictions")]
    counts = ([document_counts(f) for f in files]
              if group and len(files) == len(group) and all(f.exists() for f in files) else None)
    if any(_flagged_deterministic(study_dir, r) for r in group):
        return VariantRuns(group[:1], counts[:1] if counts else None, "deterministic", len(group))
    if len(group) > 1:
        if counts is not None:
            identical = all(_same_counts(counts[0], c) for c in counts[1:])
        else:
            identical = all(r.get(m) == group[0].get(m) for r in group[1:]
                            for m in ("f1_micro", "f1_macro", "unweighted_accuracy", "per_type"))
        if identical:
            return VariantRuns(group[:1], counts[:1] if counts else None, "identical on every seed", len(group))
    return VariantRuns(group, counts, None, len(group))


def constant_reason(v: VariantRuns, metric: str) -> str | None:
    """Why ``metric`` of this variant is the same on every seed and every resample of the test
    documents — by construction, not by measurement — or ``None``. F1 is 0 whatever the documents
    when no run finds a correct entity; unweighted accuracy is fixed when every tag's recall is
    the same in every document (e.g. only ``O`` is predicted)."""
    if metric in ("f1_micro", "f1_macro"):
        if v.counts is None:
            if v.rows and all(r.get("f1_micro") == 0 for r in v.rows):
                return "has micro F1 = 0 on every seed (no correct entity), so its F1 is 0 on any test set"
            return None
        tp = sum(int(e[:, 0].sum()) for c in v.counts for e in c["entities"].values())
        pred = sum(int(e[:, 1].sum()) for c in v.counts for e in c["entities"].values())
        if tp > 0:
            return None
        what = "predicts no entity at all" if pred == 0 else "finds no correct entity"
        return f"{what} on any seed, so its F1 is 0 on every resample of the test documents"
    if metric == "unweighted_accuracy" and v.counts is not None:
        for tag in {t for c in v.counts for t in c["tokens"]}:
            recalls = set()
            for c in v.counts:
                t = c["tokens"].get(tag)
                if t is None:
                    continue
                present = t[:, 1] > 0
                recalls |= {Fraction(int(a), int(b)) for a, b in t[present]}
            if len(recalls) > 1:
                return None
        return ("has the same recall for every tag in every document on every seed (e.g. it predicts "
                "only O), so its unweighted accuracy is the same on every resample")
    return None


# ---- cross-validated studies ---------------------------------------------------------------------
# A study with [study] folds = K trains each (variant, seed) once per fold; every document is in the
# test fold of exactly one of them. The report pools a (variant, seed)'s K test folds into one run
# over all documents (the point estimates), and keeps which fold each document was tested in (the
# corrected resampled t of the intervals and tests, stats.corrected_resampled_t).

def concat_counts(per_fold: list[dict], folds: list[int]) -> dict:
    """The ``document_counts`` of disjoint test folds as one, with ``fold_of`` (the fold of each
    document, in ``docs`` order)."""
    types = sorted({t for c in per_fold for t in c["entities"]})
    labels = sorted({l for c in per_fold for l in c["tokens"]})

    def stack(part, names, width):
        return {n: np.concatenate([c[part][n] if n in c[part] else np.zeros((len(c["docs"]), width), np.int64)
                                   for c in per_fold]) for n in names}
    return {"docs": [d for c in per_fold for d in c["docs"]], "entities": stack("entities", types, 3),
            "tokens": stack("tokens", labels, 2),
            "fold_of": np.concatenate([np.full(len(c["docs"]), k) for c, k in zip(per_fold, folds)])}


def scores_of_counts(counts: dict) -> dict:
    """A results row's test scores from (pooled) per-document counts, as the training run computes them
    (seqeval's strict entity report, zero_division 0; unweighted accuracy over the gold tags, O included)."""
    per_type = {}
    tp = pred = gold = 0
    for t, e in counts["entities"].items():
        a, p, g = (int(v) for v in e.sum(0))
        tp, pred, gold = tp + a, pred + p, gold + g
        precision, recall = (a / p if p else 0.0), (a / g if g else 0.0)
        per_type[t] = {"precision": precision, "recall": recall, "support": g,
                       "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}
    precision, recall = (tp / pred if pred else 0.0), (tp / gold if gold else 0.0)
    recalls = [int(c.sum(0)[0]) / int(c.sum(0)[1]) for c in counts["tokens"].values() if c.sum(0)[1] > 0]
    return {"per_type": per_type, "precision_micro": precision, "recall_micro": recall,
            "f1_micro": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "f1_macro": float(np.mean([v["f1"] for v in per_type.values()])) if per_type else math.nan,
            "unweighted_accuracy": float(np.mean(recalls)) if recalls else math.nan}


def fold_ratio(row: dict) -> float:
    """n_test / n_train of one fold's run (its ``fold`` record), the corrected t's correlation term."""
    documents = (row.get("fold") or {}).get("documents") or {}
    return documents["test"] / documents["train"] if documents.get("train") else math.nan


def pool_folds(study_dir: Path, rows: list[dict], axes: list[str], folds: int) -> tuple[list[dict], dict, list[str]]:
    """``(pooled rows, {(pooled run id, decode): concatenated counts}, left out)``: per (variant, seed), the rows
    of its ``folds`` folds as one row over all documents, scored from the pooled predictions (the mean
    over folds without prediction files). Costs are summed over the folds (what the seed's
    cross-validation cost), training mentions averaged. A (variant, seed) with unfinished folds is
    left out (its run ids are returned), so that every pooled run covers the same documents."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((variant_key(r, axes), r["seed"]), []).append(r)
    pooled, counts, left_out = [], {}, []
    for (key, seed), group in groups.items():
        group = sorted(group, key=lambda r: r["axes"].get(FOLD_AXIS, 0))
        have = [r["axes"].get(FOLD_AXIS) for r in group]
        if sorted(have) != list(range(folds)):
            left_out += [r["run_id"] for r in group if r["run_id"] not in left_out]  # a run is a row per decode
            continue
        parts = [part for part in group[0]["run_id"].split("__") if not part.startswith("fold=")]
        run_id = "__".join(parts[:-1] + ["fold=pooled"] + parts[-1:]) if parts else "fold=pooled"
        files = [study_dir / r["predictions"] for r in group if r.get("predictions")]
        per_fold = ([document_counts(f) for f in files]
                    if len(files) == len(group) and all(f.exists() for f in files) else None)
        row = {**group[0], "run_id": run_id, "axes": {k: v for k, v in group[0]["axes"].items() if k != FOLD_AXIS},
               "predictions": None, "curve": None, "fold_runs": [r["run_id"] for r in group],
               "fold_ratio": float(np.mean([fold_ratio(r) for r in group]))}
        for m in ("train_seconds", "wall_seconds"):
            values = [r.get(m) for r in group]
            row[m] = None if any(v is None for v in values) else float(sum(values))
        for m in ("seconds_per_epoch", "epochs", "dev_f1_micro", "inference_tokens_per_s"):
            row[m] = median(r.get(m) for r in group) if m == "inference_tokens_per_s" else _mean_std(
                r.get(m) for r in group)[0]
        types = {t for r in group for t in r.get("train_mentions", {})}
        row["train_mentions"] = {t: int(round(np.mean([r.get("train_mentions", {}).get(t, 0) for r in group])))
                                 for t in sorted(types)}
        if per_fold is not None:  # keyed like variant_runs reads them: a run is scored with every decode
            counts[(run_id, row["decode"])] = concat_counts(per_fold, have)
            row.update(scores_of_counts(counts[(run_id, row["decode"])]))
        else:
            for m in ("f1_micro", "f1_macro", "precision_micro", "recall_micro", "unweighted_accuracy"):
                row[m] = _mean_std(r.get(m) for r in group)[0]
            row["per_type"] = {t: {k: float(np.mean([r["per_type"].get(t, {}).get(k, 0) for r in group]))
                                   for k in ("precision", "recall", "f1", "support")}
                               for t in sorted({t for r in group for t in r.get("per_type", {})})}
        pooled.append(row)
    return pooled, counts, left_out


def stacked_folds(counts: list[dict], docs: list[str]) -> np.ndarray:
    """``[runs, D]``: the fold each document was tested in, per run, in the order of ``docs``."""
    out = []
    for c in counts:
        position = {d: i for i, d in enumerate(c["docs"])}
        out.append(np.asarray(c["fold_of"])[[position[d] for d in docs]])
    return np.stack(out)


def fold_scores(x: np.ndarray, fold_of: np.ndarray, layout: CountLayout, metric: str) -> np.ndarray:
    """``[S, K]``: each run of ``x [S, D, K]`` scored on each of its test folds (``fold_of [S, D]``);
    a class with no gold mention in a fold keeps the run's pooled score there (the fixed class set)."""
    folds = sorted(set(np.unique(fold_of).tolist()))
    out = np.zeros((x.shape[0], len(folds)))
    for s in range(x.shape[0]):
        for k, f in enumerate(folds):
            out[s, k] = scores_from_sums(x[s, fold_of[s] == f].sum(0), layout, metric, full=x[s].sum(0))
    return out


def cv_ratio(rows: list[dict]) -> float:
    """The mean n_test / n_train of the folds the rows pool."""
    values = [r.get("fold_ratio", math.nan) for r in rows]
    return float(np.mean(values)) if values else math.nan


# ---- comparison families ------------------------------------------------------------------------

def baseline_of(key: tuple, baseline: dict, variants: dict) -> tuple | None:
    """The baseline variant a variant is compared with: the baseline's values on the baseline
    axes, the variant's own values on every other axis (``None`` when no such variant ran). A
    decode the baseline doesn't name falls back to the baseline's only decode (e.g. a CRF's
    viterbi against a softmax baseline)."""
    want = tuple((k, baseline.get(k, v)) for k, v in key)
    if want in variants:
        return want
    if "decode" not in baseline:
        candidates = [v for v in variants if v[:-1] == want[:-1]]
        if len(candidates) == 1:
            return candidates[0]
    return None


def family_pairs(family: dict, variants: dict) -> list[tuple[tuple, tuple]]:
    """``(variant, baseline variant)`` pairs of one family, in the order of the variants."""
    out = []
    vary = family["vary"]
    for key in variants:
        if vary is None:
            base = baseline_of(key, family["baseline"], variants)
        else:
            values = dict(key)
            level = family["baseline"] if not family.get("pairs") else dict(family["pairs"]).get(values.get(vary))
            if vary not in values or level is None or values[vary] == level:
                continue
            want = tuple((k, level if k == vary else v) for k, v in key)
            base = want if want in variants else None
            if base is None and vary != "decode":  # a model with its own decode (CRF: viterbi)
                candidates = [v for v in variants if v[:-1] == want[:-1]]
                base = candidates[0] if len(candidates) == 1 else None
        if base is not None and base != key:
            out.append((key, base))
    return out


# ---- one comparison -------------------------------------------------------------------------------

def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN entries are left out of the family and stay NaN)."""
    p = np.asarray(pvalues, float)
    out = np.full(len(p), math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = np.asarray(stats.holm(p[ok])[1], float)
    return list(out)


def identical_predictions(a: VariantRuns, b: VariantRuns) -> bool:
    """Whether the two variants score every test document the same on every seed they share (equal
    per-document counts, hence equal on every metric): the same output, as two settings that are one
    function by construction must give (BTL on a corpus with one entity type is ATL)."""
    if a.counts is None or b.counts is None:
        return False
    if a.single or b.single:  # one run stands for every seed: against each run of the other
        pairs = [(x, y) for x in a.counts for y in b.counts]
    else:
        by_seed = {r["seed"]: c for r, c in zip(b.rows, b.counts)}
        pairs = [(c, by_seed[r["seed"]]) for r, c in zip(a.rows, a.counts) if r["seed"] in by_seed]
    return bool(pairs) and all(_same_counts(x, y) for x, y in pairs)


def same_test(runs: dict, pair: tuple, other: tuple) -> bool:
    """Whether comparisons ``pair`` and ``other`` (``(variant, baseline)`` keys) are one test: the two
    variants, and the two baselines, predict the same on every test document of the same seeds (on
    a corpus with one entity type, BTL's KNN-against-argmax comparison is ATL's)."""
    return all(sorted(r["seed"] for r in runs[x].rows) == sorted(r["seed"] for r in runs[y].rows)
               and identical_predictions(runs[x], runs[y]) for x, y in zip(pair, other))


def _comparison_name(c: dict) -> str:
    return f"{c['variant']} vs {c['baseline']}"


# the statistics a report.json was computed with: an earlier build's intervals and tests are reused
# only when they were computed the same way
STATISTICS = "crossed-t-1: seeds x documents t (jackknife pseudo-values), pooled MDD, document permutation"

# why a comparison of two variants with the same predictions is not tested (this build / an earlier one)
IDENTICAL = "the variant predicts what the baseline predicts on every test document of every shared seed"
IDENTICAL_EARLIER = "identical predictions (earlier build)"


def paired_runs(a: VariantRuns, b: VariantRuns) -> list[tuple[int, int]]:
    """Which run of ``a`` is paired with which run of ``b``: by seed (the seeds both ran; a run
    whose seed the other side lacks is left out, never paired by position), or a single run
    (deterministic, or identical on every seed) with every run of the other side."""
    if a.single and b.single:
        return [(0, 0)]
    if a.single:
        return [(0, j) for j in range(len(b.rows))]
    if b.single:
        return [(i, 0) for i in range(len(a.rows))]
    where = {r["seed"]: j for j, r in enumerate(b.rows)}
    return [(i, where[r["seed"]]) for i, r in enumerate(a.rows) if r["seed"] in where]


def compare(a: VariantRuns, b: VariantRuns, metric: str, opts: dict) -> dict:
    """Variant ``a`` against baseline ``b`` on ``metric``, over the runs ``paired_runs`` pairs.

    ``diff``: the mean of the paired differences (the difference of seed means when both ran the
    same seeds). Seed level (same test set): the paired t-test over shared seeds and paired d.
    Document level (needs the prediction files): ``ci`` and ``p_sd``, the interval and the test of
    record, ``stats.crossed_t`` on the paired per-seed, per-document pseudo-value differences
    (seeds and test documents both samples; ``ms`` its mean squares, which the study pools for
    the detectable difference), and ``p_perm``, the paired permutation test swapping whole
    documents between the two variants' runs (``stats.permutation_test_paired_sums``; for these
    runs). ``excluded``: why the comparison is certain by construction (it then is not tested).
    ``mdd`` is filled in by ``comparisons`` from the study's pooled variance."""
    pairs = paired_runs(a, b)
    va = [metric_value(r, metric) for r in a.rows]
    vb = [metric_value(r, metric) for r in b.rows]
    diffs = np.array([va[i] - vb[j] for i, j in pairs]) if pairs else np.array([math.nan])
    out = {"metric": metric, "diff": float(diffs.mean()), "runs": [len(va), len(vb)],
           "single": [a.single, b.single], "n": 0, "t": math.nan, "p_t": math.nan, "d": math.nan,
           "sd_seeds": math.nan, "mdd": math.nan, "ci": None, "ci_note": None, "p_sd": math.nan,
           "p_perm": math.nan, "excluded": None}
    reasons = [f"{who} {why}" for who, v in (("the variant", a), ("the baseline", b))
               if (why := constant_reason(v, metric))]
    out["identical"] = identical_predictions(a, b)
    if out["identical"]:  # no difference on any document of any seed: nothing to test
        reasons.append(IDENTICAL)
    out["excluded"] = "; ".join(reasons) or None

    # seed level: which seed did better, on this test set
    if a.single or b.single:
        out["t_note"] = "deterministic" if "deterministic" in (a.single, b.single) else "identical seeds"
    else:
        out["n"] = len(pairs)
        x, y = np.array([va[i] for i, _ in pairs]), np.array([vb[j] for _, j in pairs])
        if len(pairs) >= 2 and not np.isnan(x - y).any():
            out["sd_seeds"] = float((x - y).std(ddof=1))
            if out["sd_seeds"] > 0:  # identical differences on every seed leave t undefined: no test, not p = 0
                t = stats.ttest_rel(x, y)
                out["t"], out["p_t"], out["d"] = float(t.statistic), float(t.pvalue), float(stats.paired_d(x, y))

    # document level: another test set and other seeds
    if a.counts is None or b.counts is None:
        out["ci_note"] = "no prediction files"
        return out
    if not pairs:
        out["ci_note"] = "no shared seed"
        return out
    types = sorted({t for c in a.counts + b.counts for t in c["entities"]})
    try:
        xa, layout = stack_counts(a.counts, b.counts[0]["docs"], types)
        xb, layout_b = stack_counts(b.counts, b.counts[0]["docs"], types)
    except ValueError:
        out["ci_note"] = "scored on different test documents"
        return out
    ga, gb = layout.split(xa[0].sum(0)), layout_b.split(xb[0].sum(0))
    if layout.tags != layout_b.tags or not (np.array_equal(ga[0][:, 2], gb[0][:, 2])
                                            and np.array_equal(ga[1][:, 1], gb[1][:, 1])):
        out["ci_note"] = "different gold tags"
        return out
    D = xa.shape[1]
    if D < 2:
        out["ci_note"] = "fewer than 2 test documents"
        return out
    xa, xb = xa[[i for i, _ in pairs]], xb[[j for _, j in pairs]]
    if a.cv:  # pooled over folds: the corrected resampled t over the per-(seed, fold) differences
        docs = b.counts[0]["docs"]
        fa = stacked_folds([a.counts[i] for i, _ in pairs], docs)
        if not np.array_equal(fa, stacked_folds([b.counts[j] for _, j in pairs], docs)):
            out["ci_note"] = "different cross-validation folds"
            return out
        ratio = cv_ratio([a.rows[i] for i, _ in pairs] + [b.rows[j] for _, j in pairs])
        d = fold_scores(xa, fa, layout, metric) - fold_scores(xb, fa, layout, metric)
        cv = stats.corrected_resampled_t(d, ratio, estimate=out["diff"])
        out.update(ci=[float(cv.ci.low), float(cv.ci.high)], p_sd=float(cv.pvalue), df=float(cv.df),
                   se=float(cv.se), seeds_crossed=len(pairs), docs=D, test="cv",
                   cv={"variance": cv.variance, "folds": int(d.shape[1]), "ratio": ratio})
        if math.isnan(cv.ci.low):
            out["ci"], out["ci_note"] = None, "no variance estimate"
    else:
        crossed = stats.crossed_t(pseudovalues(xa, layout, metric) - pseudovalues(xb, layout, metric),
                                  estimate=out["diff"])
        out.update(ci=[float(crossed.ci.low), float(crossed.ci.high)], p_sd=float(crossed.pvalue),
                   df=float(crossed.df), se=float(crossed.se), seeds_crossed=len(pairs), docs=D,
                   ms={"seed": crossed.ms.seed, "doc": crossed.ms.doc, "resid": crossed.ms.resid})
        if math.isnan(crossed.ci.low):
            out["ci"], out["ci_note"] = None, "no variance estimate"
        elif len(pairs) == 1 and not (a.single and b.single):
            out["ci_note"] = "one seed: the interval covers the test documents only"

    def seed_mean_diff(sa, sb):
        return (scores_from_sums(sa, layout, metric).mean(-1) - scores_from_sums(sb, layout, metric).mean(-1))

    perm = stats.permutation_test_paired_sums(xa.transpose(1, 0, 2), xb.transpose(1, 0, 2), seed_mean_diff,
                                              n_resamples=int(opts["permutation_resamples"]),
                                              seed=int(opts["permutation_seed"]))
    out["p_perm"], out["perm_exact"] = float(perm.pvalue), 2 ** D <= int(opts["permutation_resamples"])
    return out


def detectable_differences(comps: list[dict], alpha: float) -> None:
    """Fill in each tested comparison's ``mdd``: the smallest true difference its test of record
    detects with 80% power at ``alpha``, from the variance **pooled over the study's tested
    comparisons of one metric and one design** (as many paired seeds and documents), not from
    that comparison's own 3 seeds: a pooled ``stats.CrossedVariance`` for the seed × document t,
    a pooled sd of the per-seed differences for the seed-paired t (no prediction files)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in comps:
        if c["excluded"] or c.get("same_as"):
            continue
        if c.get("cv") and not math.isnan(c["cv"]["variance"]):
            groups[("cv", c["metric"], c["seeds_crossed"], c["cv"]["folds"], round(c["cv"]["ratio"], 6))].append(c)
        elif c.get("ms") and c["ci_note"] != "no prediction files":
            groups[("sd", c["metric"], c["seeds_crossed"], c["docs"])].append(c)
        elif not math.isnan(c["sd_seeds"]):
            groups[("t", c["metric"], c["n"])].append(c)
    for key, group in groups.items():
        if key[0] == "cv":  # the corrected t's se from the per-fold variance pooled over the comparisons
            se, df = stats.corrected_resampled_se(float(np.mean([c["cv"]["variance"] for c in group])),
                                                  key[2], key[3], float(np.mean([c["cv"]["ratio"] for c in group])))
            mdd = stats.detectable_difference_se(se, df, alpha)
        elif key[0] == "sd":
            S, D = key[2], key[3]
            pooled = stats.pooled_crossed_variance(stats.CrossedVariance(S, D, **c["ms"]) for c in group)
            V, df = pooled.variance_of_mean()
            mdd = stats.detectable_difference_se(math.sqrt(V), df, alpha) if V >= 0 else math.nan
        else:
            mdd = stats.detectable_difference(math.sqrt(np.mean([c["sd_seeds"] ** 2 for c in group])), key[2], alpha)
        for c in group:
            c["mdd"], c["mdd_pooled_over"] = mdd, len(group)


def comparisons(variants: dict, runs: dict, labels: dict, families: list[dict], opts: dict,
                earlier: dict | None = None) -> list[dict]:
    """Every comparison of every family and metric; Holm within one family and one metric, over
    the comparisons that are tested (those certain by construction are left out). The p-values
    corrected are the seed × document t's (``p_sd``, the test of record) when every comparison of
    the family has prediction files, else the seed-paired t-test's. Without prediction files, the
    document-level results an ``earlier`` build stored for the same comparison of the same values
    are kept (``earlier_comparison``)."""
    out, all_twins = [], []
    for family in families:
        pairs = family_pairs(family, variants)
        for metric in opts["metrics"]:
            group = []
            for key, base in pairs:
                c = compare(runs[key], runs[base], metric, opts)
                c.update(family=family["name"], variant=labels[key], baseline=labels[base],
                         seeds=[r["seed"] for r in runs[key].rows])
                if c["ci_note"] == "no prediction files" and earlier:
                    c.update(earlier_comparison(earlier, c, runs[key], runs[base]) or {})
                    if c.get("identical") and not c["excluded"]:  # the earlier build saw the predictions
                        c["excluded"] = IDENTICAL_EARLIER
                declared = [f"the {who} {why}" for who, k in (("variant", key), ("baseline", base))
                            for why in by_construction(k, opts.get("construction") or [])]
                if declared:  # [[report.by_construction]]: follows from the design
                    c["excluded"] = "; ".join(filter(None, [c["excluded"], *declared]))
                group.append(c)
            tested, twins = [], []  # a comparison that repeats a tested one's test is counted once
            for c, pair in zip(group, pairs):
                if c["excluded"]:
                    continue
                twin = next((t for t, other in tested if same_test(runs, pair, other)), None)
                if twin is None and c.get("same_as"):  # the earlier build saw the predictions
                    twin = next((t for t, _ in tested if _comparison_name(t) == c["same_as"]), None)
                if twin is None:
                    c.pop("same_as", None)
                    tested.append((c, pair))
                else:
                    c["same_as"] = _comparison_name(twin)
                    twins.append((c, twin))
            tested = [c for c, _ in tested]
            source = "sd" if tested and all(c["ci_note"] != "no prediction files" for c in tested) else "t"
            if source == "sd" and any(c.get("test") == "cv" for c in tested):
                source = "cv"
            p = [c["p_sd"] if source in ("sd", "cv") else c["p_t"] for c in tested]
            for c, adjusted, raw in zip(tested, holm(p), p):
                c.update(p=raw, p_holm=adjusted, holm_source=source,
                         family_size=sum(not math.isnan(x) for x in p))
            for c in group:
                c.setdefault("p", math.nan)
                c.setdefault("p_holm", math.nan)
                c.setdefault("holm_source", source)
                c.setdefault("family_size", 0)
            out += group
            all_twins += twins
    detectable_differences(out, float(opts["alpha"]))
    for c, twin in all_twins:
        c.update({k: twin[k] for k in ("p", "p_holm", "holm_source", "family_size", "mdd")})
    return out


def sentence(c: dict, alpha: float, opts: dict | None = None) -> str:
    """What one comparison supports, and what it doesn't, in plain words. A claim rests on the
    test of record, Holm-adjusted within its family: the seed × document t, whose 95% interval is
    the one printed (so a significant difference has an interval that excludes 0)."""
    if c.get("same_as"):
        return (sentence({**c, "same_as": None}, alpha, opts) + f" The same test as `{c['same_as']}`: both variants and "
                f"both baselines predict the same on every test document, so Holm counts it once.")
    head = f"{c['variant']} vs {c['baseline']}, {metric_name(c['metric'], opts or {})}: {c['diff']:+.4f}"
    if c.get("identical") and c["excluded"] in (IDENTICAL, IDENTICAL_EARLIER):
        # equal because the design makes them one function (not because both are constant)
        return (f"{head}. Identical predictions: every test document scores the same under both on every "
                f"seed they share, so the two are the same function here (a check of the code where the "
                f"design makes them equal, not a finding); left out of the `{c['family']}` Holm family.")
    if c["excluded"]:
        return (f"{head}. Not tested: {c['excluded']}. The difference follows from the construction, not "
                f"from a measurement, so it is left out of the `{c['family']}` Holm family.")
    if c["ci"] is not None:
        interval = f"95% CI [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]"
    else:
        interval = f"no interval: {c['ci_note']}"
    scope = (" The interval and test cover the test documents only (one seed)."
             if c["ci_note"] and c["ci_note"].startswith("one seed") else "")
    undetectable = (f" At this design's pooled variance the test detects only differences of "
                    f"{c['mdd']:.4f} or more (80% power)." if not math.isnan(c["mdd"]) else "")
    if math.isnan(c["p_holm"]):
        why = (f"one side is a single run ({'; '.join(s for s in c['single'] if s)})" if any(c["single"])
               else f"{c['n']} paired seed(s)")
        return f"{head} ({interval}). No test: {why} and no prediction files for a document-level test."
    family = f"the {c['family_size']} tested comparisons of `{c['family']}`"
    if c["holm_source"] == "cv":
        test = f"corrected cross-validation t p = {c['p']:.3g}, Holm-adjusted over {family}: {c['p_holm']:.3g}"
    elif c["holm_source"] == "sd":
        test = f"seed × document t p = {c['p']:.3g}, Holm-adjusted over {family}: {c['p_holm']:.3g}"
    else:
        test = (f"seed-paired t-test p = {c['p']:.3g}, Holm-adjusted over {family}: {c['p_holm']:.3g}; "
                f"without prediction files test-set variance is not accounted for")
    direction = "higher" if c["diff"] > 0 else "lower"
    if c["p_holm"] < alpha:
        where = ("with other seeds and another test set from this corpus" if c["holm_source"] == "sd"
                 else "with other seeds and other training and test documents from this corpus"
                 if c["holm_source"] == "cv" else "across seeds on these documents")
        return (f"{head} ({interval}): {direction}, significant ({test}). A difference that holds {where}; "
                f"other corpora are untested.{scope}")
    if c["p"] < alpha:
        return (f"{head} ({interval}): p = {c['p']:.3g} before correction, not after Holm over {family} "
                f"(adjusted {c['p_holm']:.3g}): suggestive, not established.{scope}{undetectable}")
    return (f"{head} ({interval}): not significant ({test}); the data neither show a difference nor rule out "
            f"one of this size.{scope}{undetectable}")


# ---- an earlier build ------------------------------------------------------------------------------
# A committed study folder (docs/results/NAME) keeps results.jsonl and report.json but not the runs'
# prediction files, so a rebuild cannot redo the document bootstrap. It keeps what the earlier build
# stored instead, where that build scored the same runs with the same values.

def earlier_build(study_dir: Path) -> dict:
    """The ``report.json`` a previous build left in ``study_dir`` (``{}`` if none or unreadable)."""
    try:
        data = json.loads((study_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _same(a, b) -> bool:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))


def earlier_metric(earlier: dict, label: str, v: VariantRuns, metric: str) -> dict | None:
    """What the earlier build stored for this variant and metric (``report.json``,
    ``variants[label][metric]``), if it measured the same thing: the same runs with the same
    values of ``metric``, or, for a variant that is now one run (deterministic or identical
    seeds), that run's value on every stored seed. ``None`` otherwise (other runs, or a changed
    definition such as the fixed class set of macro F1)."""
    if earlier.get("statistics") != STATISTICS:
        return None
    entry = (earlier.get("variants") or {}).get(label) or {}
    stored = entry.get(metric)
    if not isinstance(stored, dict):
        return None
    by_run = dict(zip(entry.get("runs") or [], stored.get("values") or []))
    now = {r["run_id"]: metric_value(r, metric) for r in v.rows}
    if not all(rid in by_run and _same(by_run[rid], x) for rid, x in now.items()):
        return None
    if set(by_run) != set(now) and not (v.single and all(_same(x, next(iter(now.values()))) for x in by_run.values())):
        return None
    return stored


def earlier_comparison(earlier: dict, c: dict, a: VariantRuns, b: VariantRuns) -> dict | None:
    """The document-level results (``ci``, ``ci_note``, ``p_perm`` …) of comparison ``c`` from the
    earlier build, when it stored them for the same family, variants and metric, of the same
    values on both sides, and with the same difference; ``None`` otherwise."""
    if earlier.get("statistics") != STATISTICS:
        return None
    for old in earlier.get("comparisons") or []:
        if (isinstance(old, dict) and "p_perm" in old and "ci" in old
                and old.get("ci_note") != "no prediction files"  # that build had none either
                and all(old.get(k) == c[k] for k in ("family", "variant", "baseline", "metric"))
                and _same(old.get("diff"), c["diff"])
                and earlier_metric(earlier, c["variant"], a, c["metric"]) is not None
                and earlier_metric(earlier, c["baseline"], b, c["metric"]) is not None):
            keep = ("ci", "ci_note", "p_sd", "df", "se", "seeds_crossed", "docs", "ms", "p_perm", "perm_exact",
                    "identical", "same_as")
            return {**{k: old[k] for k in keep if k in old}, "p_perm": float(old["p_perm"]),
                    "p_sd": float(old.get("p_sd", math.nan)), "document_level_from": "earlier build"}
    return None


# ---- the report -----------------------------------------------------------------------------------

def build_report(study_dir: str | os.PathLike) -> Path:
    """Write ``study_dir/report.md`` (and ``report.json``, ``figures/``); returns the report path."""
    study_dir = Path(study_dir)
    study, rows = load_study_results(study_dir)
    opts = {**DEFAULTS, **study.get("report", {})}
    if opts.get("primary"):  # the claim metric is tested first; the others are secondary
        opts["metrics"] = [opts["primary"]] + [m for m in opts["metrics"] if m != opts["primary"]]
    short = dict(study.get("short_names", {}))
    short["decode"] = "decode"
    axes = list(study.get("axes", {}))
    variants = run_variants = group_variants(rows, axes)
    pooled_counts, left_out = None, []
    if study.get("folds"):  # one run per (variant, seed), pooled over its folds
        opts["cv"] = dict(study["folds"])
        pooled, pooled_counts, left_out = pool_folds(study_dir, rows, axes, int(study["folds"]["k"]))
        variants = group_variants(pooled, axes)
        run_variants = {k: v for k, v in run_variants.items() if k in variants}
    labels = {k: variant_label(k, short) for k in run_variants}
    data: dict = {"study": study["name"], "scale": study["scale"], "statistics": STATISTICS, "variants": {},
                  "comparisons": []}
    md: list[str] = []

    md += [f"# Study `{study['name']}` (scale `{study['scale']}`)", ""]
    if study.get("description"):
        md += [study["description"].strip(), ""]
    n_runs = len({r["run_id"] for r in rows})
    # every distinct command that trained in the folder, with its --set / --only (bertlab.experiment)
    made_by = ", then ".join(f"`{c}`" for c in study.get("commands", [])) or (
        f"`bertlab experiment {study['name']} --scale {study['scale']}`")
    md += [f"Made by {made_by} "
           f"(study file `{study.get('source', '')}`); rebuild with `bertlab report {_report_argument(study_dir)}`. "
           f"{n_runs} of {len(study.get('runs', []))} runs finished; {len(variants)} variants "
           f"(decode counted as an axis: every run is scored with each of {', '.join(study.get('decodes', []))}).",
           ""]
    if study.get("baseline"):
        md += ["Baseline: " + ", ".join(f"{short.get(k, k)}={v}" for k, v in study["baseline"].items()), ""]
    if not rows:
        md += ["No finished runs yet."]
        return _write_report(study_dir, md, data)

    runs = {key: variant_runs(study_dir, group, pooled_counts) for key, group in variants.items()}
    earlier = earlier_build(study_dir)  # read before this build replaces it
    if opts.get("cv"):
        md += _cv_section(study, variants, left_out, data)
    md += _environment_section(rows)
    md += _main_section(variants, runs, labels, opts, data, earlier)
    md += _band_section(variants, labels, opts, data)
    md += _per_class_section(variants, runs, labels, opts, data)
    md += _calibration_section(study_dir, variants, labels, opts, data)
    md += _conventions_section(variants, runs, labels, data)
    md += _significance_section(variants, runs, labels, study, opts, data, earlier)
    warning = _target_warning(study, opts, data)
    if warning:
        md[2:2] = warning  # at the top, under the title
    md += _compute_section(run_variants, labels, short, data)
    md += _learning_curve_section(study_dir, run_variants, labels, opts)
    if opts.get("plateau"):
        md += _budget_section(run_variants, short, opts["plateau"], data, curve_key(opts))
    if opts.get("confusion"):
        md += _confusion_section(study_dir, run_variants, labels)
    if opts.get("type_shares"):
        md += _type_share_section(study_dir, run_variants, labels, opts, data)
    if opts.get("anova"):
        for spec in opts["anova"] if isinstance(opts["anova"], list) else [opts["anova"]]:
            md += _anova_section([r for g in variants.values() for r in g] if opts.get("cv") else rows,
                                 spec, short, data)
    if study.get("gradflow"):
        md += _gradflow_section(study_dir, rows, study.get("baseline") or {}, short, data)
    md += _figures_section(study_dir, variants, labels, opts, short, scale=study.get("scale", "default"))
    return _write_report(study_dir, md, data)


def _cv_section(study: dict, variants: dict, left_out: list[str], data: dict) -> list[str]:
    """What a cross-validated study's report pools, in one paragraph."""
    cv = study["folds"]
    md = ["## Cross-validation", "",
          f"{cv['k']}-fold document cross-validation (`[study] folds = {cv['k']}`): every document of the corpus "
          f"is in the test fold of one run per seed, and seed s deals the documents into folds with its own "
          f"partition (seed {cv['fold_seed']} + s, stratified by entity type: "
          "`bertlab.datasets.cross_validation_split`); each fold's dev set is a stratified tenth of the other "
          "documents, the rest trains. A variant's seed is its folds' test predictions pooled, scored once over "
          "all documents; intervals and tests are the corrected resampled t over the per-(seed, fold) scores "
          "(the seeds × documents t on pooled predictions ignores that the fold models share training data, "
          "and undercovers in simulation: docs/evaluation.md).", ""]
    data["cv"] = {"folds": cv["k"], "fold_seed": cv["fold_seed"], "left_out": left_out}
    if left_out:
        md += [f"Not pooled yet ({len(left_out)} run(s) of a seed whose folds have not all finished): "
               + ", ".join(f"`{r}`" for r in left_out[:6]) + (", ..." if len(left_out) > 6 else "") + ".", ""]
    return md


def _target_warning(study: dict, opts: dict, data: dict) -> list[str]:
    """The line on top of a study that declares ``[report] target_difference``: whether its design
    detects that difference in its primary metric (the MDD of its test of record, 80% power)."""
    target = opts.get("target_difference")
    if target is None:
        return []
    metric = opts.get("primary") or opts["metrics"][0]
    mdds = [c["mdd"] for c in data.get("comparisons", []) if c["metric"] == metric and not c["excluded"]
            and not math.isnan(c["mdd"])]
    data["target"] = {"difference": target, "metric": metric, "mdd": max(mdds) if mdds else None}
    if not mdds:
        return [f"The study's target difference is {target:g} in {METRICS[metric]}; no tested comparison has a "
                "detectable difference yet, so whether this design can show it is not known.", ""]
    if max(mdds) > target:
        return [f"**Warning: this design cannot detect the effect it is about.** The smallest difference its test "
                f"of record detects with 80% power in {METRICS[metric]} is {max(mdds):.4f}, above the study's target "
                f"of {target:g} (`[report] target_difference`): a non-significant result here says nothing about "
                f"an effect of that size. `bertlab plan {study['name']}` says how many seeds (and folds) would.", ""]
    return [f"The design detects a difference of {max(mdds):.4f} in {METRICS[metric]} with 80% power, at or below "
            f"the study's target of {target:g} (`[report] target_difference`).", ""]


def _report_argument(study_dir: Path) -> str:
    """What to type after ``bertlab report`` to rebuild this folder: the study name for a folder under
    runs/, ``docs/results/NAME`` for a committed result (its name alone would look under runs/), and
    ``NAME --runs DIR`` for a study written elsewhere (``bertlab experiment ... --runs DIR``)."""
    if study_dir.parent.name == "results" and study_dir.parent.parent.name == "docs":
        return f"docs/results/{study_dir.name}"
    if study_dir.parent.name == "runs":
        return study_dir.name
    parent = study_dir.parent
    try:
        parent = parent.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    return f"{study_dir.name} --runs {parent}"


def _write_report(study_dir: Path, md: list[str], data: dict) -> Path:
    write_text(study_dir / "report.json", json.dumps(data, indent=2, default=_nan_json) + "\n")
    path = study_dir / "report.md"
    write_text(path, "\n".join(md).rstrip() + "\n")
    return path


def _nan_json(o):
    return float(o) if hasattr(o, "item") else str(o)


def _f(x, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(x) -> str:
    """A p-value to 4 decimals; one that would print as 0.0000 is "<0.0001" (a p-value is never 0)."""
    return "<0.0001" if x is not None and not math.isnan(x) and x < 0.00005 else _f(x, 4)


def median(values) -> float:
    """The median of the values that are there (None and NaN left out); NaN if none is."""
    v = np.asarray([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else math.nan


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return out + [""]


def _environment_section(rows: list[dict]) -> list[str]:
    md = ["## Environment and wall time", ""]
    envs = {json.dumps(r.get("env", {}), sort_keys=True) for r in rows}
    for e in sorted(envs):
        env = json.loads(e)
        md.append("- " + ", ".join(f"{k} {v}" for k, v in env.items()))
    md.append("")
    runs = {}
    for r in rows:
        runs.setdefault(r["run_id"], r)
    body = [[f"`{rid}`", _f(r.get("wall_seconds"), 1), _f(r.get("train_seconds"), 1), str(r.get("epochs")),
             _run_origin(r)] for rid, r in runs.items()]
    total = sum(r.get("wall_seconds") or 0 for r in runs.values())
    md += _table(["run", "wall s", "train s", "epochs", "resumed"], body)
    md += [f"Total wall time: {total:.1f} s ({total / 60:.1f} min) over {len(runs)} runs.", ""]
    reused = sorted({str(Path(r["reused_from"]).parent) for r in runs.values() if r.get("reused_from")})
    if reused:
        md += [f"Runs marked *reused* were not trained here: a finished run of the same config (every key "
               f"that changes a result) was copied from {', '.join(f'`{f}`' for f in reused)} "
               f"(`bertlab experiment --reuse`); their times are those of the original run.", ""]
    return md


def _run_origin(row: dict) -> str:
    """The wall-time table's last column: how the run came to be finished."""
    if row.get("reused_from"):
        return f"reused (`{Path(row['reused_from']).parent.name}/{Path(row['reused_from']).name}`)"
    return "yes" if row.get("resumed") else "no"


def _main_section(variants: dict, runs: dict, labels: dict, opts: dict, data: dict,
                  earlier: dict | None = None) -> list[str]:
    n_classes = sorted({sum(1 for v in r.get("per_type", {}).values() if v.get("support", 0) > 0)
                        for g in variants.values() for r in g})
    interval = ("95% CI: of the mean over seeds *and* test documents (`stats.crossed_t` on per-document "
                "jackknife pseudo-values: two-way random effects, seeds × documents, Satterthwaite df; for a "
                "single run, documents only)" if not opts.get("cv") else
                "95% CI: the corrected resampled t over the per-(seed, fold) scores (below)")
    md = ["## Main results (test set)", "",
          f"Mean ± std over seeds (std with ddof=1); {interval}. Entity scores are strict IOB2 "
          "(seqeval's strict mode). Macro F1 and "
          "unweighted accuracy average over a **fixed class set**, the classes with a gold mention in "
          f"the test set ({'/'.join(map(str, n_classes))} entity types; seqeval's macro F1, `f1_macro` in "
          "results.jsonl, also averages types that are only predicted); leaving out every document of a "
          "class, that class keeps its full-test-set score. A model without random "
          "state is one run (`1 (deterministic)`).", ""]
    if opts.get("cv"):
        md += [f"Cross-validated: each row pools a seed's {opts['cv']['k']} test folds, so its scores are over "
               "every document of the corpus; std is over seeds of the pooled scores, and the 95% CI is the "
               "corrected resampled t over the per-(seed, fold) scores (`stats.corrected_resampled_t`, "
               "Nadeau & Bengio 2003), centred on the pooled mean: it covers other seeds and other training "
               "and test documents (docs/evaluation.md, \"Cross-validated studies\").", ""]
    body, missing, kept, stale = [], [], 0, []
    for key, group in variants.items():
        v = runs[key]
        entry = {"label": labels[key], "seeds": [r["seed"] for r in v.rows], "runs": [r["run_id"] for r in v.rows],
                 "single": v.single}
        x = layout = None
        if v.counts is not None:
            x, layout = stack_counts(v.counts)
        seeds = str(len(v.rows))
        if v.single == "deterministic":
            seeds = "1 (deterministic)"
        elif v.single:
            seeds = f"1 ({v.seeds_run} identical runs)"
        cells = [labels[key], seeds]
        for m in METRICS:
            mean, std = _mean_std(metric_value(r, m) for r in v.rows)
            entry[m] = {"mean": mean, "std": std, "values": [metric_value(r, m) for r in v.rows]}
            cells.append(f"{_f(mean)} ± {_f(std)}")
            if x is None:
                stored = earlier_metric(earlier or {}, labels[key], v, m)
                if stored is None or "ci" not in stored:
                    prior = (((earlier or {}).get("variants") or {}).get(labels[key]) or {}).get(m)
                    if isinstance(prior, dict) and prior.get("ci"):  # an interval, but of other values
                        stale.append(f"{labels[key]}, {METRICS[m]}")
                    cells.append("n/a")
                    continue
                # no prediction files (a committed folder): the earlier build's interval of the same values
                kept += 1
                entry[m].update({k: stored[k] for k in ("ci", "ci_note", "point") if k in stored},
                                ci_from="earlier build")
                if stored["ci"] is not None:
                    cells.append(f"[{_f(stored['ci'][0])}, {_f(stored['ci'][1])}]²")
                else:
                    cells.append("none¹²")
                    missing.append(f"{labels[key]}, {METRICS[m]}: {stored.get('ci_note') or 'unknown'}")
                continue
            if v.cv:
                theta, lo, hi, why = cv_variant_interval(x, stacked_folds(v.counts, v.counts[0]["docs"]),
                                                         cv_ratio(v.rows), layout, m)
            else:
                theta, lo, hi, why = variant_interval(x, layout, m)
            entry[m]["point"] = theta
            if why is None:
                entry[m]["ci"] = [lo, hi]
                cells.append(f"[{_f(lo)}, {_f(hi)}]")
            else:
                entry[m]["ci"], entry[m]["ci_note"] = None, why
                cells.append("none¹")
                missing.append(f"{labels[key]}, {METRICS[m]}: {why}")
        data["variants"][labels[key]] = entry
        body.append(cells)
    header = ["variant", "seeds"]
    for m in METRICS:
        header += [metric_name(m, opts), "95% CI"]
    md += _table(header, body)
    if missing:
        md += ["¹ No sound interval, so none is printed:", ""] + [f"- {m}" for m in missing] + [""]
    if kept:
        md += ["² From the earlier build of this folder (its report.json): the runs' prediction files are not "
               f"here, so {kept} interval(s) could not be recomputed; that build scored the same runs with the "
               "same values, and its intervals are kept.", ""]
    if stale:
        md += ["n/a: no prediction files here. The earlier build's intervals of " + "; ".join(stale) + " were of "
               "other values or computed otherwise (other runs, a metric or a statistic defined differently then), so they "
               "are not kept.", ""]
    return md


def band_of(mentions: int, bands: dict) -> str:
    """head (>= bands.head training mentions), tail (< bands.tail), middle otherwise."""
    if mentions >= bands["head"]:
        return "head"
    return "tail" if mentions < bands["tail"] else "middle"


def _band_section(variants: dict, labels: dict, opts: dict, data: dict) -> list[str]:
    bands = opts["bands"]
    md = ["## Per-class F1 by frequency band", "",
          f"Bands by training mentions: head ≥ {bands['head']}, tail < {bands['tail']}, middle between "
          "(`[report] bands`). A band's F1 is the mean over its classes of the class F1 (mean over "
          "seeds); only classes with test support count.", ""]
    per_class = {}
    band_rows = []
    for key, group in variants.items():
        mentions = group[0].get("train_mentions", {})
        types = sorted({t for r in group for t, v in r["per_type"].items() if v["support"] > 0})
        f1 = {t: float(np.mean([r["per_type"].get(t, {"f1": 0.0})["f1"] for r in group])) for t in types}
        per_class[key] = (mentions, f1)
        by_band = defaultdict(list)
        for t in types:
            by_band[band_of(mentions.get(t, 0), bands)].append(f1[t])
        cells = [labels[key]]
        entry = {}
        for b in ("head", "middle", "tail"):
            v = by_band.get(b, [])
            entry[b] = {"f1": float(np.mean(v)) if v else math.nan, "classes": len(v)}
            cells.append(f"{_f(entry[b]['f1'])} ({len(v)})")
        data["variants"][labels[key]]["bands"] = entry
        band_rows.append(cells)
    md += _table(["variant", "head F1 (classes)", "middle F1 (classes)", "tail F1 (classes)"], band_rows)
    # the full per-class table, variants as columns, classes by training frequency
    keys = list(variants)
    mentions = {}  # variants may be on different corpora: a class's count from one that has it
    for k in keys:
        for t, n in per_class[k][0].items():
            mentions.setdefault(t, n)
    types = sorted({t for k in keys for t in per_class[k][1]}, key=lambda t: (-mentions.get(t, 0), t))
    if len(keys) <= 12:
        md += ["<details><summary>Per-class F1 (mean over seeds)</summary>", ""]
        body = [[t, str(mentions.get(t, 0)), band_of(mentions.get(t, 0), bands)]
                + [_f(per_class[k][1].get(t, math.nan), 3) for k in keys] for t in types]
        md += _table(["class", "train mentions", "band"] + [f"({i + 1})" for i in range(len(keys))], body)
        md += ["Columns: " + "; ".join(f"({i + 1}) {labels[k]}" for i, k in enumerate(keys)), "", "</details>", ""]
    return md


def convention_scores(counts: dict) -> dict:
    """One run's scores under each scoring convention, from its ``document_counts``: micro F1
    strict / conlleval / lenient, token accuracy, and the invalid IOB2 transitions its predictions
    make (count, and share of its predicted ``I-`` tags)."""
    def f1(x):
        tp, pred, gold = x.sum(0)
        return 2 * tp / (pred + gold) if tp > 0 else 0.0

    strict = sum(e.sum(0) for e in counts["entities"].values())
    c = counts["conventions"]
    bad, inside = c["invalid"].sum(0)[:2]
    return {"strict": float(2 * strict[0] / (strict[1] + strict[2])) if strict[0] > 0 else 0.0,
            "conlleval": float(f1(c["conlleval"])), "lenient": float(f1(c["lenient"])),
            "token_accuracy": float(c["tokens"][:, 0].sum() / max(c["tokens"][:, 1].sum(), 1)),
            "invalid": int(bad), "invalid_share": float(bad / inside) if inside else 0.0}


def per_class_table(x: np.ndarray, layout: CountLayout, min_support: int) -> dict:
    """Per-class precision, recall, F1 (seed means) with a 95% interval of F1 over seeds and
    documents, from one variant's counts ``x [S, D, K]``; and macro F1 over the classes with at
    least ``min_support`` test mentions, with its interval.

    Per-class intervals: ``stats.crossed_t`` on the class's leave-one-document-out pseudo-values
    (a document without the class's gold mentions leaves its F1 as on the full test set, as the
    fixed class set does for macro F1). The restricted macro F1 is the mean of those classes' F1,
    its pseudo-values the mean of theirs."""
    S, D, _ = x.shape
    ent, _ = layout.split(x)  # [S, D, T, 3]
    full = ent.sum(1)  # [S, T, 3]
    loo = full[:, None] - ent  # [S, D, T, 3]

    f1_full = class_f1(full)  # [S, T]
    f1_loo = np.where(np.isnan(class_f1(loo)), f1_full[:, None], class_f1(loo))  # [S, D, T]
    pseudo = stats.jackknife_pseudovalues(f1_full, np.moveaxis(f1_loo, 1, -1))  # [S, T, D]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(full[..., 1] > 0, full[..., 0] / full[..., 1], 0.0).mean(0)
        recall = np.where(full[..., 2] > 0, full[..., 0] / full[..., 2], np.nan).mean(0)
    rows = {}
    kept = []
    for c in layout.classes:
        support = int(full[0, c, 2])
        ci = stats.crossed_t(pseudo[:, c], estimate=float(f1_full[:, c].mean())).ci if D >= 2 else None
        rows[layout.types[c]] = {"support": support, "precision": float(precision[c]), "recall": float(recall[c]),
                                 "f1": float(f1_full[:, c].mean()),
                                 "ci": None if ci is None or math.isnan(ci.low) else [float(ci.low), float(ci.high)],
                                 "few": support < min_support}
        if support >= min_support:
            kept.append(c)
    macro = {"classes": len(kept), "min_support": min_support, "f1": math.nan, "ci": None}
    if kept:
        estimate = float(f1_full[:, kept].mean(1).mean())
        macro["f1"] = estimate
        if D >= 2:
            ci = stats.crossed_t(pseudo[:, kept].mean(1), estimate=estimate).ci
            macro["ci"] = None if math.isnan(ci.low) else [float(ci.low), float(ci.high)]
    return {"classes": rows, "macro_supported": macro}


def _per_class_section(variants: dict, runs: dict, labels: dict, opts: dict, data: dict) -> list[str]:
    k = int(opts["min_support"])
    tables = {}
    for key in variants:
        v = runs[key]
        if v.counts is None:
            continue
        x, layout = stack_counts(v.counts)
        tables[key] = per_class_table(x, layout, k)
        data["variants"][labels[key]]["per_class"] = tables[key]
    if not tables:
        return []
    md = ["## Per-class scores with intervals (test set)", "",
          f"Precision, recall and F1 per entity type (seed means; strict IOB2), the 95% interval of F1 over "
          f"seeds and documents (`stats.crossed_t` on the class's per-document pseudo-values), and the "
          f"class's test mentions; a class with fewer than {k} (`[report] min_support`) is flagged †: its "
          f"F1 rests on a handful of mentions. Macro F1 over the classes with at least {k} test mentions, "
          f"beside the macro F1 over every class with support (main table):", ""]
    body = []
    for key, t in tables.items():
        m = t["macro_supported"]
        ci = f"[{_f(m['ci'][0])}, {_f(m['ci'][1])}]" if m["ci"] else "none"
        body.append([labels[key], str(m["classes"]), _f(m["f1"]), ci])
    md += _table(["variant", f"classes with ≥ {k} mentions", "macro F1 over them", "95% CI"], body)
    for key, t in tables.items():
        md += [f"<details><summary>{labels[key]}: per class</summary>", ""]
        rows = sorted(t["classes"].items(), key=lambda kv: (-kv[1]["support"], kv[0]))
        md += _table(["class", "test mentions", "precision", "recall", "F1", "95% CI"],
                     [[name + (" †" if r["few"] else ""), str(r["support"]), _f(r["precision"]), _f(r["recall"]),
                       _f(r["f1"]), f"[{_f(r['ci'][0])}, {_f(r['ci'][1])}]" if r["ci"] else "none"]
                      for name, r in rows])
        md += ["</details>", ""]
    return md


def _calibration_section(study_dir: Path, variants: dict, labels: dict, opts: dict, data: dict) -> list[str]:
    """The softmax's expected calibration error on test per variant (seed mean ± std; a property
    of the trained model, so the decodes of one model repeat it) and, with figures on, the
    reliability diagram of each trained model (bins pooled over seeds)."""
    rows = {key: [r["calibration"] for r in group if r.get("calibration")] for key, group in variants.items()}
    rows = {key: cal for key, cal in rows.items() if cal and len(cal) == len(variants[key])}
    if not rows:
        return []
    md = ["## Calibration of the softmax (test set)", "",
          "Expected calibration error over the test words: each word's largest softmax probability "
          "(its confidence) against whether that label is the gold one, in 15 equal-width bins, "
          "ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b| (`bertlab.inference.calibration_error`). "
          "A property of the trained model before any decoder: the decodes of one model repeat it. "
          "Mean ± std over seeds.", ""]
    body, models = [], {}
    for key, cal in rows.items():
        mean, std = _mean_std(c["ece"] for c in cal)
        data["variants"][labels[key]]["ece"] = {"mean": mean, "std": std, "values": [c["ece"] for c in cal]}
        body.append([labels[key], f"{_f(mean)} ± {_f(std)}", str(cal[0]["words"])])
        model = labels[key].rsplit(", decode=", 1)[0]
        models.setdefault(model, cal)  # one curve per trained model
    md += _table(["variant", "ECE", "test words"], body)
    if not opts.get("figures", True):
        return md
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return md
    fig_dir = study_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    cmap = plt.get_cmap("tab20" if len(models) > 10 else "tab10")
    for i, (model, cal) in enumerate(models.items()):
        counts = np.array([[b["count"] for b in c["bins"]] for c in cal], float)  # [seeds, bins]
        conf = np.array([[b["confidence"] or 0.0 for b in c["bins"]] for c in cal], float)  # empty bins: None
        acc = np.array([[b["accuracy"] or 0.0 for b in c["bins"]] for c in cal], float)
        n = counts.sum(0)
        keep = n > 0
        pooled_conf = (counts * conf).sum(0)[keep] / n[keep]
        pooled_acc = (counts * acc).sum(0)[keep] / n[keep]
        ax.plot(pooled_conf, pooled_acc, marker="o", ms=3, lw=1, color=cmap(i % cmap.N), label=model)
    ax.set_xlabel("confidence (largest softmax probability), bin mean")
    ax.set_ylabel("accuracy of the words in the bin")
    ax.set_title("Reliability diagram (test words, bins pooled over seeds)", fontsize=10)
    fig.legend(**_legend_below(len(models) + 1, bbox_to_anchor=(0.5, -0.02)))
    fig.savefig(fig_dir / "reliability.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return md + ["![reliability diagram](figures/reliability.png)", ""]


def _conventions_section(variants: dict, runs: dict, labels: dict, data: dict) -> list[str]:
    """Every scoring convention side by side (seed means), with the invalid transitions each
    decoder emits: strict IOB2 drops an entity that starts with a stray ``I-`` silently."""
    rows, body = {}, []
    for key in variants:
        v = runs[key]
        if v.counts is None or any("conventions" not in c for c in v.counts):
            continue
        per_run = [convention_scores(c) for c in v.counts]
        mean = {k: float(np.mean([r[k] for r in per_run])) for k in per_run[0]}
        rows[labels[key]] = {**mean, "runs": len(per_run)}
        body.append([labels[key], _f(mean["strict"]), _f(mean["conlleval"]), _f(mean["lenient"]),
                     _f(mean["token_accuracy"]), f"{mean['invalid']:.0f}", f"{mean['invalid_share']:.1%}"])
    if not body:
        return []
    data["conventions"] = rows
    md = ["## Scoring conventions side by side (test set, seed means)", "",
          "Micro F1 under **strict** IOB2 (the tables above; an entity must start with `B-`), **conlleval** "
          "(seqeval's default: a stray `I-X` starts an entity), **lenient** (i2b2-style inexact match: a "
          "predicted entity of the right type that overlaps a gold one by a word counts, each entity once), "
          "and token accuracy (every word's tag; the per-class mean of token recall is the unweighted "
          "accuracy above). **Invalid transitions**: `I-X` tags that follow neither `B-X` nor `I-X`, per "
          "run, and their share of the predicted `I-` tags; strict scoring drops their entities without a "
          "trace, so a decoder with many of them looks better strict than it reads. See "
          "docs/evaluation.md, \"Strict versus conlleval\".", ""]
    md += _table(["variant", "strict F1", "conlleval F1", "lenient F1", "token acc.", "invalid transitions",
                  "of predicted I-"], body)
    return md


def _significance_section(variants: dict, runs: dict, labels: dict, study: dict, opts: dict,
                          data: dict, earlier: dict | None = None) -> list[str]:
    md = ["## Significance: differences with intervals, by comparison family", ""]
    families = comparison_families(study, opts)
    if not families:
        return md + ["The study declares no comparison (`[report.compare]`) and names no baseline "
                     "(`[study] baseline`), so nothing is tested.", ""]
    comps = comparisons(variants, runs, labels, families, {**opts, "metrics": list(opts["metrics"]),
                                                           "construction": construction_rules(study, opts)}, earlier)
    data["comparisons"] = comps
    data["families"] = families
    if not comps:
        return md + ["No variant has a baseline run to pair with yet.", ""]
    alpha = float(opts["alpha"])
    record = ("- **95% CI** and **p (CV t)**: the test of record for a cross-validated study, the corrected "
              "resampled t (`stats.corrected_resampled_t`; Nadeau & Bengio 2003, Bouckaert & Frank 2004) over "
              "the per-(seed, fold) differences, seeds paired: t = Δ / √((1/J + n_test/n_train)·s²), df = J − 1, "
              "J = seeds × folds, centred on the pooled Δ. The n_test/n_train term accounts for the folds' "
              "shared training documents. It answers *would the difference hold with other seeds and other "
              "training and test documents from this corpus?* **p Holm** corrects it within one family and one "
              "metric; the sentences below rest on it." if opts.get("cv") else None)
    md += [f"Each row is one variant against its baseline variant, which differs in the family's factor "
           f"only. α = {alpha:g}. What each column answers:", "",
           "- **Δ**: variant minus baseline, difference of the seed means on the whole test set (over the "
           "seeds both ran)." + (" Cross-validated: each seed's test folds pooled, so the whole corpus."
                                 if opts.get("cv") else ""),
           record or "- **95% CI** and **p (seeds × docs)**: the test of record, `stats.crossed_t`: the per-seed, "
           "per-document differences (jackknife pseudo-values, seeds paired) in a two-way random-effects "
           "model, so both *which seeds* and *which test documents* count as samples (Satterthwaite df). It "
           "answers *would the difference hold with other seeds and another test set of this size?* A "
           "deterministic model is one run; with one seed the interval covers the test documents only. "
           "**p Holm** corrects it within one family and one metric; the sentences below rest on it."]
    md += ["- **p (docs, runs fixed)**: paired permutation test over documents (whole documents swapped between "
           "the two variants' runs, seed means compared; exact when 2^D ≤ "
           f"{opts['permutation_resamples']}, else that many random swaps): *do these trained runs differ "
           "beyond which documents are in the test set?* It holds the runs fixed, so it is no test of the "
           "method when seeds vary.",
           "- **t (seeds)**, **p (t)**, **d**: seed-paired t-test on this test set (paired d = mean / sd of the "
           "per-seed differences): *does the difference reproduce across seeds on these documents?* It "
           "ignores test-set variance; not defined for a deterministic model.",
           f"- **MDD**: the smallest true difference the test of record detects with 80% power at "
           f"α = {alpha:g}, from the variance pooled over this study's tested comparisons of the same metric "
           "and design (`bertlab.stats.pooled_crossed_variance`, `detectable_difference_se`; without "
           "prediction files the pooled sd of the per-seed differences and the seed-paired t): a difference "
           "below it is not \"no difference\", it is undetectable with this design.", ""]
    for family in families:
        mine = [c for c in comps if c["family"] == family["name"]]
        if family["vary"] is None:
            what = ("every variant against the study baseline (" + ", ".join(
                f"{k}={v}" for k, v in family["baseline"].items()) + ")")
        elif family.get("pairs"):
            what = (", ".join(f"`{a}` against `{b}`" for a, b in family["pairs"])
                    + f" (levels of `{family['vary']}`), within every combination of the other factors")
        else:
            what = (f"each level of `{family['vary']}` against `{family['baseline']}`, within every "
                    "combination of the other factors")
        md += [f"### Family `{family['name']}`: {what}", ""]
        if not mine:
            md += ["No variant has a baseline run to pair with yet.", ""]
            continue
        sizes = {c["metric"]: c["family_size"] for c in mine if not c["excluded"]}
        left_out = sum(1 for c in mine if c["excluded"])
        repeats = sum(1 for c in mine if c.get("same_as"))
        md += ["Holm correction within this family, per metric: " + ", ".join(
            f"{metric_name(m, opts)} over {sizes.get(m, 0)} tested comparison(s)" for m in opts["metrics"])
            + (f"; {left_out} comparison(s) left out as following from the construction or identical" if left_out else "")
            + (f"; {repeats} the same test as another row (p Holm \"same test\"), counted once" if repeats else "")
            + ".", ""]
        body = []
        for c in mine:
            ci = f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]" if c["ci"] is not None else "none"
            p_sd, p_docs = _p(c["p_sd"]), _p(c["p_perm"])
            holm_cell = ("left out" if c["excluded"] else
                         f"{_p(c['p_holm'])} (same test)" if c.get("same_as") else _p(c["p_holm"]))
            if c["excluded"]:
                p_sd = p_docs = "–"
            seeds = "1 run" if any(c["single"]) else str(c["n"])
            body.append([c["variant"], c["baseline"], metric_name(c["metric"], opts), f"{c['diff']:+.4f}", ci, p_sd,
                         holm_cell, p_docs, _f(c["t"], 3), _p(c["p_t"]), _f(c["d"], 2), seeds, _f(c["mdd"], 4)])
        md += _table(["variant", "baseline", "metric", "Δ", "95% CI", "p (CV t)" if opts.get("cv") else "p (seeds × docs)", "p Holm",
                      "p (docs, runs fixed)", "t (seeds)", "p (t)", "d", "seeds", "MDD"], body)
        if any(c["holm_source"] == "t" and not c["excluded"] for c in mine):
            md += ["Without prediction files there is no document-level test: p Holm corrects the seed-paired "
                   "t-test, which ignores test-set variance.", ""]
        kept = sum(1 for c in mine if c.get("document_level_from"))
        if kept:
            md += [f"The 95% CI, p (seeds × docs) and p (docs, runs fixed) of {kept} comparison(s) come from the earlier build of this folder "
                   "(its report.json): the runs' prediction files are not here to recompute them; that build "
                   "compared the same runs with the same values.", ""]
        notes = sorted({c["ci_note"] for c in mine if c["ci"] is None and c["ci_note"]})
        if notes:
            md += ["No interval where: " + "; ".join(notes) + ".", ""]
        exact = sorted({c["docs"] for c in mine if c.get("docs") and not c["excluded"] and 2 / 2 ** c["docs"] >= alpha})
        for D in exact:
            md += [f"With {D} test documents the permutation test cannot reach p < {alpha:g}: its smallest "
                   f"two-sided p is 2/2^{D} = {2 / 2 ** D:.3g}.", ""]
        md += [f"- {sentence(c, alpha, opts)}" for c in mine] + [""]
    return md


def _compute_section(variants: dict, labels: dict, short: dict, data: dict) -> list[str]:
    md = ["## Compute cost", "",
          "Costs are medians over seeds, F1 the mean: a run that shared its cores with other work runs "
          "slower without computing anything more, which moves a mean but not a median. Train seconds "
          "are the loop's own timing (data loading and final evaluation excluded); inference tokens/s "
          "counts words of the test split per second of scoring with that decode.", ""]
    shares = any(r.get("cpu_share") is not None for group in variants.values() for r in group)
    if shares:
        md += ["CPU share: the training loop's process CPU seconds over its wall seconds × threads, the lowest "
               "of the variant's runs. About 1 (a little less with several threads) when a run had its cores to "
               "itself; well below, e.g. 0.5, when other work shared them, and then its seconds overstate its "
               "cost (runs trained before it was measured have none: '–', or how many runs have one).", ""]
    body = []
    for key, group in variants.items():
        vals = {m: _mean_std(r.get(m) for r in group)[0] for m in ("params", "f1_micro")}
        vals.update({m: median(r.get(m) for r in group)
                     for m in ("seconds_per_epoch", "train_seconds", "inference_tokens_per_s")})
        known = [r["cpu_share"] for r in group if r.get("cpu_share") is not None]
        vals["cpu_share_min"] = min(known) if known else None
        data["variants"][labels[key]]["compute"] = vals
        params = vals["params"]
        share = _f(vals["cpu_share_min"], 2) + (f" ({len(known)} of {len(group)} runs)"
                                               if 0 < len(known) < len(group) else "")
        body.append([labels[key], "–" if math.isnan(params) else f"{params / 1e6:.2f} M",
                     _f(vals["seconds_per_epoch"], 1), _f(vals["train_seconds"], 1),
                     _f(vals["inference_tokens_per_s"], 0), _f(vals["f1_micro"])] + ([share] if shares else []))
    md += _table(["variant", "parameters", "train s / epoch", "train s", "inference tokens/s", "micro F1"]
                 + (["CPU share (lowest)"] if shares else []), body)
    return md + _time_split_section(variants, short, data)


# the parts of ``row["time_split"]`` (bertlab.selection.TIME_PARTS, not imported: it pulls in torch),
# in the order a run spends them, with the names the report prints
TIME_PARTS = {"training": "training", "dev_forward": "dev forward", "knn_fit": "KNN fit",
              "calibration_fit": "calibration fit", "dev_decoding": "dev decoding",
              "best_model_saving": "best-model saving", "checkpoints": "checkpoints",
              "final_scoring": "final scoring"}


def time_split_runs(rows: list[dict]) -> dict[str, dict]:
    """``{run_id: time_split}`` of the rows that carry one. A trained run gives one row per decode,
    all with the run's split, so each run counts once. Old results and the HMM / CRF baselines have
    none."""
    out: dict[str, dict] = {}
    for r in rows:
        if isinstance(r.get("time_split"), dict):
            out.setdefault(r["run_id"], r["time_split"])
    return out


def _time_split_section(variants: dict, short: dict, data: dict) -> list[str]:
    """Where the seconds of each trained variant (the variant without its decode) went: the mean
    over its runs (seeds) of each part of ``time_split`` and its share of their sum, then the same
    summed over the study, and the largest part besides training. Empty when no row has a split."""
    trained: dict[tuple, dict[str, dict]] = {}
    for key, group in variants.items():
        trained.setdefault(key[:-1], {}).update(time_split_runs(group))
    trained = {k: runs for k, runs in trained.items() if runs}
    if not trained:
        return []
    splits = [s for runs in trained.values() for s in runs.values()]
    seen = list(dict.fromkeys(list(TIME_PARTS) + [p for s in splits for p in s]))
    parts = [p for p in seen if any(s.get(p) for s in splits)]  # a part that is 0 everywhere is noise
    zero = [TIME_PARTS.get(p, p) for p in seen if p not in parts and p in TIME_PARTS]
    name = {p: TIME_PARTS.get(p, p.replace("_", " ")) for p in parts}

    def seconds(runs) -> np.ndarray:  # [runs, parts]
        return np.array([[float(s.get(p) or 0.0) for p in parts] for s in runs], dtype=float).reshape(-1, len(parts))

    def cells(values: np.ndarray) -> list[str]:
        total = values.sum()
        return [f"{v:.1f} ({v / total:.0%})" if total > 0 else f"{v:.1f}" for v in values] + [f"{total:.1f}"]

    md = ["### Where the time went", "",
          "Seconds of each run, summed over its epochs (`time_split` in results.jsonl), as the mean over the "
          "runs (seeds) of each trained variant, with each part's share of the timed total; every decode of a "
          "run shares its run's seconds, so a run counts once. **training**: the optimizer steps. After every "
          "epoch, the dev evaluation: **dev forward** (the dev split's forward pass), **KNN fit** (the forward "
          "pass over the training split and the index of the KNN decode), **calibration fit**, **dev decoding** "
          "(decoding and scoring every decode, the KNN queries included). I/O: **best-model saving**, "
          "**checkpoints**. **final scoring**: every decode on dev and test with its best model. Loading the "
          "corpus and the model is not timed (it is in the wall time above)."
          + (f" Zero in every run, so not shown: {', '.join(zero)}." if zero else ""), ""]
    entry: dict = {"parts": parts, "variants": {}}
    body = []
    for key, runs in trained.items():
        label = variant_label(key, short) or "every run"
        mean = seconds(runs.values()).mean(0)
        entry["variants"][label] = {"runs": len(runs), "mean": dict(zip(parts, mean.tolist())),
                                    "share": dict(zip(parts, (mean / mean.sum()).tolist())) if mean.sum() > 0 else None}
        body.append([label, str(len(runs))] + cells(mean))
    total = seconds(splits).sum(0)
    body.append(["study total (sum over runs)", str(len(splits))] + cells(total))
    entry["total"] = dict(zip(parts, total.tolist()))
    md += _table(["trained variant", "runs"] + [f"{name[p]} s" for p in parts] + ["timed total s"], body)
    others = [i for i, p in enumerate(parts) if p != "training"]
    if others and total.sum() > 0:
        i = max(others, key=lambda j: total[j])
        entry["largest_non_training"] = parts[i]
        hours = f"{total[i] / 3600:.2f} h" if total[i] >= 3600 else f"{total[i] / 60:.1f} min"
        md += [f"Besides training, the study's seconds go mostly to **{name[parts[i]]}**: {total[i]:.1f} s "
               f"({hours}), {total[i] / total.sum():.0%} of the timed total.", ""]
    data["time_split"] = entry
    return md


def type_shares(predicted: list[list[str]], train_mentions: dict[str, int], bands: dict) -> dict:
    """Each type's share of the predicted mentions (strict IOB2 entities of ``predicted``, one tag
    list per sentence) against its share of the training mentions, and both summed per frequency
    band: ``{"types": {t: (train share, predicted share)}, "bands": {band: (train share,
    predicted share)}, "predicted": number of predicted mentions}``. A model that learned only the
    type prior predicts each type at its training share; a band predicted below its share is
    under-predicted (imbalance amplified, for the tail)."""
    from collections import Counter
    counts = Counter(t for tags in predicted for t, _, _ in strict_entities(tags))
    n_pred, n_train = sum(counts.values()), sum(train_mentions.values())
    types = sorted(set(train_mentions) | set(counts))
    per_type = {t: (train_mentions.get(t, 0) / n_train if n_train else math.nan,
                    counts.get(t, 0) / n_pred if n_pred else math.nan) for t in types}
    per_band = {}
    for t, (a, b) in per_type.items():
        band = band_of(train_mentions.get(t, 0), bands)
        old = per_band.get(band, (0.0, 0.0))
        per_band[band] = (old[0] + a, old[1] + b)
    return {"types": per_type, "bands": per_band, "predicted": n_pred}


def _type_share_section(study_dir: Path, variants: dict, labels: dict, opts: dict, data: dict) -> list[str]:
    """``[report] type_shares = true`` (random_labels): per variant, the predicted share of each
    frequency band's types on test against their training share, mean over seeds."""
    bands = opts["bands"]
    md = ["## Predicted type shares against training shares", "",
          "Each band's share of the predicted test mentions (strict IOB2) against its share of the training "
          "mentions (mean over seeds); ratio = predicted / training share, below 1 for the tail: the rare types "
          "are predicted less often than they occur. Read it with the decoder: argmax, the calibrated decoder "
          "and the KNN vote each pick the most likely type, so a model that has learned only the label "
          "frequencies predicts the most frequent types only (head ratio above 1, tail 0). A tail ratio below 1 "
          "follows from such decoding by itself; it is evidence that training amplified the imbalance only "
          "where it goes beyond what the decoder does to the prior, which these shares alone cannot tell.", ""]
    body, out = [], {}
    for key, group in variants.items():
        shares = []
        for r in group:
            path = study_dir / r["predictions"] if r.get("predictions") else None
            if path is None or not path.exists():
                continue
            sents = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
            shares.append(type_shares([s["pred"] for s in sents], r.get("train_mentions", {}), bands))
        if not shares:
            continue
        cells, entry = [labels[key]], {}
        for b in ("head", "middle", "tail"):
            train = float(np.mean([sh["bands"].get(b, (0.0, 0.0))[0] for sh in shares]))
            seen = [x for x in (sh["bands"].get(b, (0.0, 0.0))[1] for sh in shares) if not math.isnan(x)]
            pred = float(np.mean(seen)) if seen else math.nan  # nan: no run predicted a mention
            entry[b] = {"train_share": train, "predicted_share": pred, "ratio": pred / train if train else math.nan}
            cells.append(f"{_f(train, 3)} / {_f(pred, 3)} ({_f(entry[b]['ratio'], 2)})")
        cells.append(str(int(np.mean([sh["predicted"] for sh in shares]))))
        out[labels[key]] = entry
        body.append(cells)
    if not body:
        return md + ["No prediction files: no shares.", ""] + _type_probability_section(variants, labels, bands, data)
    data["type_shares"] = out
    md += _table(["variant", "head: train / predicted (ratio)", "middle", "tail", "predicted mentions"], body)
    return md + _type_probability_section(variants, labels, bands, data)


def type_probabilities(mean_probability: dict, train_tags: dict, train_mentions: dict, bands: dict) -> dict:
    """Decoder-free type shares: each entity type's share of the model's mean entity probability on
    test (its mean P(B-X) + P(I-X) over all words, divided by the same summed over every type)
    against its share of the training entity words (B-X and I-X words over all entity words), and
    both summed per frequency band (bands by training mentions, as everywhere in the report).

    Dividing by the entity mass leaves out how much entity the test split holds (its own density),
    so a model that learned only the type prior has every ratio at 1 whatever it does with O; a
    band below 1 is given less probability than its training share, which no decoder produced.
    Returns ``{"types": {t: (train, predicted)}, "bands": {band: (train, predicted)},
    "entity_probability": mean probability of any entity label per word}``."""
    def per_type(counts: dict) -> dict:
        out: dict = {}
        for tag, v in counts.items():
            if tag != "O" and v is not None:
                typ = tag.split("-", 1)[-1]
                out[typ] = out.get(typ, 0.0) + float(v)
        return out
    prob, words = per_type(mean_probability), per_type(train_tags)
    p_total, w_total = sum(prob.values()), sum(words.values())
    types = sorted(set(prob) | set(words))
    shares = {t: (words.get(t, 0.0) / w_total if w_total else math.nan,
                  prob.get(t, 0.0) / p_total if p_total else math.nan) for t in types}
    per_band: dict = {}
    for t, (a, b) in shares.items():
        band = band_of(train_mentions.get(t, 0), bands)
        old = per_band.get(band, (0.0, 0.0))
        per_band[band] = (old[0] + a, old[1] + b)
    return {"types": shares, "bands": per_band, "entity_probability": p_total}


def _type_probability_section(variants: dict, labels: dict, bands: dict, data: dict) -> list[str]:
    """Per trained checkpoint (decodes read from one checkpoint share a row): each band's share of
    the mean entity probability on test against its share of the training entity words, over
    seeds, with a paired t-test of log(predicted share) against log(training share) per band and
    Holm over the table."""
    md = ["### Mean predicted probability against training share (decoder-free)", ""]
    groups: dict = {}  # identical (run, probabilities) rows: decodes sharing a checkpoint
    for key, group in variants.items():
        rows = [r for r in group if r.get("mean_probability") and r.get("train_tags")]
        if not rows:
            continue
        ident = json.dumps(sorted((r["run_id"], r["mean_probability"]) for r in rows), sort_keys=True)
        groups.setdefault(ident, ([], rows))[0].append(key)
    if not groups:
        return md + ["No run recorded its mean test probabilities (`bertlab rescore STUDY_DIR` adds them "
                     "from the runs' checkpoints).", ""]
    md += ["Each band's share of the model's mean **entity probability** on the test words (P(B-X) + P(I-X) "
           "summed over the band's types, over the same summed over every type) against the band's share of "
           "the training entity words. No decoder is involved: a model that learned only the type frequencies "
           "has ratio 1 in every band, and a tail ratio below 1 means the rare types get less probability than "
           "their training share — the amplification the claim is about. Ratio = mean over seeds of "
           "predicted / training share, [min, max] over seeds; p: paired t-test over seeds of log predicted "
           "against log training share (Holm over the table's tests). P(entity) is the mean probability of "
           "any entity label per test word.", ""]
    from bertlab import stats
    body, tests, out = [], [], {}
    for names, rows in groups.values():
        shares = [type_probabilities(r["mean_probability"], r["train_tags"], r.get("train_mentions", {}), bands)
                  for r in rows]
        # the checkpoint's label: the variant without its decode axis, then the decodes read from it
        rest = [(k, v) for k, v in names[0] if k != "decode"]
        decodes = [v for key in names for k, v in key if k == "decode"]
        name = (", ".join(f"{k}={_fmt_value(v)}" for k, v in rest) or labels[names[0]]) + (
            f" ({', '.join(decodes)})" if decodes else "")
        cells, entry = [name], {}
        for b in ("head", "middle", "tail"):
            train = np.array([sh["bands"].get(b, (math.nan, math.nan))[0] for sh in shares])
            pred = np.array([sh["bands"].get(b, (math.nan, math.nan))[1] for sh in shares])
            ratio = pred / train
            p = (stats.ttest_rel(np.log(pred), np.log(train)).pvalue
                 if len(rows) >= 2 and np.all(pred > 0) and np.all(train > 0) and np.ptp(np.log(pred / train)) > 0
                 else math.nan)
            entry[b] = {"train_share": float(np.mean(train)), "predicted_share": float(np.mean(pred)),
                        "ratio": float(np.mean(ratio)), "ratio_min": float(np.min(ratio)),
                        "ratio_max": float(np.max(ratio)), "p": p, "seeds": len(rows)}
            tests.append((name, b))
            cells.append(b)  # filled in after Holm
        entry["entity_probability"] = float(np.mean([sh["entity_probability"] for sh in shares]))
        mentions = rows[0].get("train_mentions", {})
        entry["types"] = {t: {"train_mentions": mentions.get(t, 0),
                              "train_share": float(np.mean([sh["types"].get(t, (0.0, 0.0))[0] for sh in shares])),
                              "predicted_share": float(np.mean([sh["types"].get(t, (0.0, 0.0))[1] for sh in shares]))}
                          for t in sorted(shares[0]["types"], key=lambda t: (-mentions.get(t, 0), t))}
        out[name] = entry
        body.append(cells + [_f(entry["entity_probability"], 3), str(len(rows))])
    ps = [out[n][b]["p"] for n, b in tests]
    finite = [i for i, p in enumerate(ps) if not math.isnan(p)]
    if finite:
        _, adjusted = stats.holm([ps[i] for i in finite])
        for i, a in zip(finite, adjusted):
            out[tests[i][0]][tests[i][1]]["p_holm"] = float(a)
    for cells in body:
        e = out[cells[0]]
        for j, b in enumerate(("head", "middle", "tail"), 1):
            x = e[b]
            p = f"p {_f(x.get('p_holm'), 3)}" if x.get("p_holm") is not None else "p –"
            cells[j] = (f"{_f(x['train_share'], 3)} / {_f(x['predicted_share'], 3)} ({_f(x['ratio'], 2)} "
                        f"[{_f(x['ratio_min'], 2)}, {_f(x['ratio_max'], 2)}], {p})")
    data["type_probabilities"] = out
    md += _table(["checkpoint (decodes)", "head: train / predicted (ratio [min, max], Holm p)", "middle", "tail",
                  "P(entity)", "seeds"], body)
    for name, entry in out.items():  # per type, most frequent first: which rare types lose or gain
        rows = [[t, str(v["train_mentions"]), band_of(v["train_mentions"], bands), _f(v["train_share"], 4),
                 _f(v["predicted_share"], 4),
                 _f(v["predicted_share"] / v["train_share"] if v["train_share"] else math.nan, 2)]
                for t, v in entry["types"].items()]
        md += [f"<details><summary>{name}: per type (mean over seeds)</summary>", ""]
        md += _table(["type", "training mentions", "band", "training word share", "predicted share", "ratio"], rows)
        md += ["</details>", ""]
    return md


def _confusion_section(study_dir: Path, variants: dict, labels: dict) -> list[str]:
    """Per variant: per-type precision / recall / F1 (mean over seeds) and the entity-level
    confusion matrix summed over seeds (gold rows; "missed" and "spurious" for span errors)."""
    from bertlab.metrics import confusion_matrix
    md = ["## Per-type scores and confusion matrices", ""]
    for key, group in variants.items():
        types = sorted({t for r in group for t, v in r["per_type"].items() if v["support"] > 0})
        body = [[t] + [_f(float(np.mean([r["per_type"].get(t, {m: 0.0})[m] for r in group])), 3)
                       for m in ("precision", "recall", "f1")] + [str(group[0]["per_type"][t]["support"])]
                for t in types]
        md += [f"<details><summary>{labels[key]}</summary>", ""]
        md += _table(["type", "precision", "recall", "F1", "support"], body)
        total, rows, cols = None, [], []
        for r in group:
            if not r.get("predictions") or not (study_dir / r["predictions"]).exists():
                continue
            sents = [json.loads(l) for l in (study_dir / r["predictions"]).read_text(encoding="utf-8").splitlines()
                     if l.strip()]
            cm = confusion_matrix([s.get("tags", s.get("gold")) for s in sents], [s["pred"] for s in sents],
                                  level="entity")
            if total is None:
                total, rows, cols = {}, cm.rows, cm.cols
            rows = rows + [x for x in cm.rows if x not in rows]
            cols = cols + [x for x in cm.cols if x not in cols]
            for i, a in enumerate(cm.rows):
                for j, b in enumerate(cm.cols):
                    total[(a, b)] = total.get((a, b), 0) + int(cm.matrix[i, j])
        if total is not None:
            md += [f"Entity confusion, summed over {len(group)} seed(s):", ""]
            md += _table(["gold \\ pred"] + cols, [[a] + [str(total.get((a, b), 0)) for b in cols] for a in rows])
        md += ["</details>", ""]
    return md


def _anova_section(rows: list[dict], spec: dict, short: dict, data: dict) -> list[str]:
    a, b = spec["a"], spec["b"]
    metric, decode = spec.get("metric", "dev_f1_micro"), spec.get("decode", "argmax")
    block = spec.get("block", "train.seed")
    use = [r for r in rows if r["decode"] == decode and math.isfinite(metric_value(r, metric))]
    md = [f"## Two-way ANOVA: {metric} ~ {short.get(a, a)} × {short.get(b, b)}", ""]
    if not use:
        return md + [f"No finished run has {metric}.", ""]
    blocks = [r["axes"].get(block) for r in use] if block else []
    use_block = bool(block) and None not in blocks and len(set(map(str, blocks))) > 1
    incomplete = []
    if use_block:  # a complete block design: keep the seeds that every cell has (a study in progress)
        cells = {(str(r["axes"][a]), str(r["axes"][b])) for r in use}
        have = {}
        for r in use:
            have.setdefault(str(r["axes"][block]), set()).add((str(r["axes"][a]), str(r["axes"][b])))
        incomplete = sorted(k for k, c in have.items() if c != cells)
        use = [r for r in use if str(r["axes"][block]) not in incomplete]
        blocks = [r["axes"][block] for r in use]
        use_block = len(set(map(str, blocks))) > 1
        if not use:
            return md + [f"No {short.get(block, block)} has finished every cell yet.", ""]
    table = stats.anova_two_way([metric_value(r, metric) for r in use], [str(r["axes"][a]) for r in use],
                                [str(r["axes"][b]) for r in use],
                                block=[str(k) for k in blocks] if use_block else None)
    block_name = short.get(block, block) if block else ""
    if table["Residual"]["df"] == 0:  # one run per cell (one seed so far): nothing to test against
        have = sorted({str(r["axes"].get(block)) for r in use}) if block else []
        return md + [f"One run per cell so far ({len(use)} runs"
                     + (f": {block_name} {', '.join(have)}" if have else "")
                     + "): the model with interaction fits them exactly and leaves no residual to test "
                       "against. The table needs at least 2 runs per cell"
                     + (f" (2 {block_name}s that have every cell)." if block else "."), ""]
    data.setdefault("anova", []).append({"a": a, "b": b, "metric": metric, "decode": decode, "table": dict(table)})
    names = {"A": short.get(a, a), "B": short.get(b, b), "A:B": f"{short.get(a, a)} × {short.get(b, b)}",
             "Block": f"{block_name} (block)", "Residual": "residual"}
    body = [[names.get(name, name), _f(row["SS"], 6), f"{row['df']:.0f}", _f(row["MS"], 6), _f(row["F"], 3),
             _f(row["p"], 4)] for name, row in table.items()]
    how = (f"{block_name} as a block factor (randomised complete block: each {block_name} is shared by every "
           f"cell, so its effect leaves the residual)" if use_block else "no block factor")
    if incomplete:
        how += (f"; left out until they have every cell: {block_name} {', '.join(incomplete)}")
    what = " (test macro F1 over the fixed class set)" if metric == "f1_macro" else ""
    md += [f"Type II sums of squares (`bertlab.stats.anova_two_way`) of {metric}{what}, {len(use)} runs, "
           f"decode {decode}, {how}.", ""]
    md += _table(["source", "sum of squares", "df", "mean square", "F", "p"], body)
    total = sum(row["SS"] for row in table.values())
    md += ["Share of the total variation: " + ", ".join(
        f"{names[k]} {table[k]['SS'] / total:.0%}" for k in table if total > 0) + ".", ""]
    return md


def _curves(group: list[dict]) -> list[dict]:
    """The learning curves of a variant's runs (rows without one, e.g. old results, are skipped)."""
    return [r["curve"] for r in group if isinstance(r.get("curve"), dict) and r["curve"].get("epoch")]


def _curve_matrix(curves: list[dict], key: str) -> tuple[list[int], np.ndarray]:
    """Epochs (union over runs) and ``[runs, epochs]`` values of ``key``, NaN where missing."""
    epochs = sorted({int(e) for c in curves for e in c["epoch"]})
    at = {e: i for i, e in enumerate(epochs)}
    out = np.full((len(curves), len(epochs)), np.nan)
    for i, c in enumerate(curves):
        for e, v in zip(c["epoch"], c.get(key) or []):
            if v is not None:
                out[i, at[int(e)]] = float(v)
    return epochs, out


CURVE_COLUMNS = 13  # at most this many epoch columns in the learning-curve table


def curve_key(opts: dict) -> str:
    """The dev curve the learning curves and the plateau rule read: the primary metric's, when the
    study declares one (it also selected the checkpoints), else micro F1."""
    return f"dev_{opts['primary']}" if opts.get("primary") else "dev_f1_micro"


def _learning_curve_section(study_dir: Path, variants: dict, labels: dict, opts: dict) -> list[str]:
    """Dev scores per epoch, from the ``curve`` of each results row (absent for old results and for
    models fitted in one go): a table per variant and ``figures/learning_curves.png``."""
    with_curves = {k: _curves(g) for k, g in variants.items()}
    with_curves = {k: c for k, c in with_curves.items() if c}
    if not with_curves:
        return []
    key_ = curve_key(opts)
    name = "micro F1" if key_ == "dev_f1_micro" else metric_name(opts["primary"], opts)
    md = ["## Learning curves (dev)", "",
          f"Dev {name} after each epoch (mean over seeds) with this variant's decode, and the epoch whose "
          "checkpoint was scored on the test set (`best epoch`, 0-based, per seed) under the selection "
          "rule `select`.", ""]
    epochs = sorted({e for cs in with_curves.values() for e in _curve_matrix(cs, key_)[0]})
    thinned = len(epochs) > CURVE_COLUMNS
    if thinned:  # e.g. BiLSTMs trained for 50 epochs: a readable table, every epoch in the figure
        every = math.ceil((len(epochs) - 1) / (CURVE_COLUMNS - 1))
        epochs = sorted(set(epochs[::every]) | {epochs[-1]})
        md += [f"Epochs 0, {every}, {2 * every}, … and the last ({epochs[-1]}) are shown (each run's `metrics.csv` "
               f"and the figure have them all); a column's mean is over the seeds that trained that epoch; "
               f"`last` is the mean of each seed's last epoch (which epoch, per seed, in brackets).", ""]
    body = []
    for key, curves in with_curves.items():
        group = variants[key]
        ep, values = _curve_matrix(curves, key_)
        with np.errstate(invalid="ignore"):
            mean = {e: (float(np.nanmean(values[:, i])) if not np.isnan(values[:, i]).all() else math.nan)
                    for i, e in enumerate(ep)}
        best = ", ".join("–" if r.get("best_epoch") is None else str(r["best_epoch"]) for r in group)
        select = sorted({str(r["select"]) for r in group if r.get("select")})
        row = [labels[key], "/".join(select) or "–", best] + [_f(mean.get(e, math.nan)) for e in epochs]
        if thinned:  # a short curve's end falls between the columns shown
            last = [(c["epoch"][-1], c[key_][-1]) for c in curves]
            known = [v for _, v in last if v is not None]
            row.append(f"{_f(float(np.mean(known)) if known else math.nan)} ({', '.join(str(e) for e, _ in last)})")
        body.append(row)
    md += _table(["variant", "select", "best epoch (per seed)"] + [f"epoch {e}" for e in epochs]
                 + (["last"] if thinned else []), body)
    if opts.get("figures", True):
        marks = None
        if opts.get("plateau"):  # the plateau rule's epoch on each line (report section "Epoch budget")
            found = budgets(variants, opts["plateau"], key_)["variants"]
            marks = {k: (v["plateau_epoch"], v["plateaued"]) for k, v in found.items() if v["f1_max"] > 0}
        figure = _learning_curve_figure(study_dir, with_curves, variants, labels, marks, key_)
        if figure:
            md += [f"![dev {'micro F1' if key_ == 'dev_f1_micro' else METRICS[opts['primary']]} per epoch]({figure})", ""]
            if marks:
                md += ["A star marks each line's plateau epoch under the study's plateau rule, a cross the last "
                       "epoch of a line that never plateaued (its budget is a lower bound).", ""]
    return md


def plateau_epoch(curve, delta: float = 0.005, window: int = 3) -> tuple[int, bool]:
    """The plateau rule of a study's ``[report] plateau``: the first epoch e whose next ``window``
    epochs all stay within ``delta`` of it (|F1(e + j) - F1(e)| < delta, j = 1..window), and
    whether one was found; if none was (the curve still moves, or is too short to tell), the last
    epoch, flagged ``False``: a lower bound on the budget, not a plateau."""
    values = [float(v) for v in curve]
    for e in range(len(values) - window):
        if all(abs(values[e + j] - values[e]) < delta for j in range(1, window + 1)):
            return e, True
    return len(values) - 1, False


def seed_mean_curve(curves: list[dict], key: str = "dev_f1_micro") -> np.ndarray:
    """The mean over seeds of ``key`` per epoch, over the epochs every seed reached (a run stopped
    early has a shorter curve; averaging the survivors alone would bias the later epochs)."""
    epochs, values = _curve_matrix(curves, key)
    complete = ~np.isnan(values).any(axis=0)
    n = int(np.argmin(complete)) if not complete.all() else len(epochs)  # the common prefix
    return values[:, :n].mean(axis=0)


def budgets(variants: dict, spec: dict, dev_key: str = "dev_f1_micro") -> dict:
    """The plateau rule applied to every variant's seed-mean dev micro F1 curve, then per arm (the
    variant's axes but ``spec["choose"]``, e.g. the learning rate) the chosen value with the highest
    plateau F1 and its budget (plateau epoch + 1, an epoch count), per decode."""
    unknown = sorted(set(spec) - {"delta", "window", "choose"})
    if unknown:
        raise ValueError(f"[report] plateau: unknown key(s) {unknown}; expected delta, window, choose")
    delta, window, choose = float(spec.get("delta", 0.005)), int(spec.get("window", 3)), spec.get("choose")
    per_variant, arms = {}, {}
    for key, group in variants.items():
        curves = _curves(group)
        if not curves:
            continue
        mean = seed_mean_curve(curves, dev_key)
        if not len(mean):
            continue
        e, found = plateau_epoch(mean, delta, window)
        per_variant[key] = {"plateau_epoch": e, "plateaued": found, "f1_at_plateau": float(mean[e]),
                            "f1_max": float(mean.max()), "epochs": len(mean), "seeds": len(curves)}
        if not mean.max() > 0:
            continue  # F1 0 at every epoch: this decode cannot read the model out; it sets no budget
        arm = tuple((k, v) for k, v in key if k != choose)
        best = arms.get(arm)
        if best is None or per_variant[key]["f1_at_plateau"] > per_variant[best]["f1_at_plateau"]:
            arms[arm] = key
    return {"variants": per_variant, "arms": {arm: key for arm, key in arms.items()},
            "delta": delta, "window": window, "choose": choose}


def _budget_section(variants: dict, short: dict, spec: dict, data: dict, dev_key: str = "dev_f1_micro") -> list[str]:
    b = budgets(variants, spec, dev_key)
    if not b["variants"]:
        return []
    choose = b["choose"]
    name = short.get(choose, choose) if choose else None
    md = ["## Epoch budget (plateau rule)", "",
          f"Rule, declared in the study file: on the seed-mean dev {'micro F1' if dev_key == 'dev_f1_micro' else METRICS[dev_key[4:]]} curve of a variant, the plateau "
          f"is the first epoch whose next {b['window']} epochs each stay within {b['delta']} of it; "
          f"without one, the last epoch trained, marked *not plateaued* (the budget is then a lower bound). "
          + (f"Per arm the `{name}` with the highest F1 at its plateau is chosen; " if choose else "")
          + "an arm's budget is its plateau epoch + 1 (epochs, counted from 1). A curve at 0 every epoch "
          "(a decode that cannot read the model out, e.g. argmax after BTL) sets no budget.", ""]
    label = lambda key: variant_label(key, short)  # noqa: E731
    body = [[label(k), str(v["seeds"]), str(v["epochs"]), str(v["plateau_epoch"]),
             ("F1 0 throughout: no budget" if not v["f1_max"] > 0 else "yes" if v["plateaued"] else "**not plateaued**"),
             _f(v["f1_at_plateau"]), _f(v["f1_max"])]
            for k, v in b["variants"].items()]
    md += _table(["variant", "seeds", "epochs (all seeds)", "plateau epoch", "plateaued", "dev F1 there",
                  "dev F1 max"], body)
    body, data_arms, by_decode = [], [], {}
    for arm, key in b["arms"].items():
        v = b["variants"][key]
        chosen = dict(key).get(choose) if choose else None
        budget = v["plateau_epoch"] + 1
        decode = dict(arm).get("decode")
        prev = by_decode.get(decode)
        by_decode[decode] = (max(prev[0], budget), prev[1] and v["plateaued"]) if prev else (budget, v["plateaued"])
        body.append([label(arm)] + ([_fmt_value(chosen)] if choose else []) +
                    [str(budget) + ("" if v["plateaued"] else " (lower bound)"), _f(v["f1_at_plateau"])])
        data_arms.append({"arm": dict(arm), "chosen": chosen, "budget_epochs": budget,
                          "plateaued": v["plateaued"], "f1_at_plateau": v["f1_at_plateau"]})
    md += _table(["arm"] + ([f"best {name}"] if choose else []) + ["budget (epochs)", "dev F1 at plateau"], body)
    md += ["A study comparing these arms with one decode uses the largest budget among them: "
           + "; ".join(f"{d}: **{n} epochs**" + ("" if ok else " (a lower bound: some arm had not plateaued)")
                       for d, (n, ok) in by_decode.items()) + ".", ""]
    data["budget"] = {"delta": b["delta"], "window": b["window"], "choose": choose, "arms": data_arms,
                      "by_decode": {str(d): {"epochs": n, "plateaued": ok} for d, (n, ok) in by_decode.items()}}
    return md


def _learning_curve_figure(study_dir: Path, with_curves: dict, variants: dict, labels: dict,
                           marks: dict | None = None, dev_key: str = "dev_f1_micro") -> str | None:
    """``figures/learning_curves.png``: one panel per decode, a line per variant (mean over seeds)
    with a band from the lowest to the highest seed; ``marks`` ``{variant: (epoch, plateaued)}``
    puts a star on the plateau epoch (a cross on the last epoch of a line that never plateaued)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    decodes = list(dict.fromkeys(dict(k)["decode"] for k in with_curves))
    # one colour per trained variant (the key without its decode), the same in every panel
    trained = list(dict.fromkeys(k[:-1] for k in variants))
    cmap = plt.get_cmap("tab10" if len(trained) <= 10 else "tab20")
    colour = {key: cmap(trained.index(key[:-1]) % cmap.N) for key in variants}
    # two panels a row at most, so the figure stays about a page wide
    ncols = min(len(decodes), 2)
    nrows = -(-len(decodes) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(max(7.0, 4.6 * ncols), 3.6 * nrows), squeeze=False,
                             sharey=True, layout="constrained")
    panels = list(grid.flat[:len(decodes)])
    for ax in grid.flat[len(decodes):]:
        ax.set_visible(False)
    all_epochs = sorted({e for cs in with_curves.values() for e in _curve_matrix(cs, dev_key)[0]})
    for ax, decode in zip(panels, decodes):
        for key, curves in with_curves.items():
            if dict(key)["decode"] != decode:
                continue
            epochs, values = _curve_matrix(curves, dev_key)
            keep = ~np.isnan(values).all(0)
            if not keep.any():
                continue
            ep, v = np.asarray(epochs)[keep], values[:, keep]
            label = ", ".join(part for part in labels[key].split(", ") if not part.startswith("decode="))
            ax.plot(ep, np.nanmean(v, 0), marker="o", ms=3, color=colour[key], label=label or labels[key])
            if len(v) > 1:
                ax.fill_between(ep, np.nanmin(v, 0), np.nanmax(v, 0), color=colour[key], alpha=0.2, lw=0)
            if marks and key in marks and marks[key][0] in list(ep):
                e, found = marks[key]
                y = float(np.nanmean(v[:, list(ep).index(e)]))
                ax.plot([e], [y], marker="*" if found else "X", ms=11, color=colour[key], mec="black", mew=0.6,
                        ls="none", label="_plateau")  # "_": not in the legend
        ax.set_title(f"decode = {decode}")
        ax.set_xlabel("epoch (0-based)")
        if len(all_epochs) <= 20:
            ax.set_xticks(all_epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    for row in grid:
        row[0].set_ylabel(f"dev {'micro F1' if dev_key == 'dev_f1_micro' else METRICS[dev_key[4:]]}\n(mean; band: min–max over seeds)")
    handles = {}
    for ax in panels:  # one legend entry per trained variant, whatever panel it is drawn in
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):  # matplotlib's "not in the legend"
                handles.setdefault(line.get_label(), line)
    fig.legend(list(handles.values()), list(handles), title="trained variant", **_legend_below(len(handles)))
    fig_dir = study_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    fig.savefig(fig_dir / "learning_curves.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return "figures/learning_curves.png"


def gradflow_by_variant(study_dir: Path, rows: list[dict], statistic: str = "grad_norm") -> dict:
    """``{trained variant key: {seed: {layer: mean over steps}}}`` from each run's gradflow.csv."""
    from bertlab.gradflow import layer_means, read_rows
    out: dict = {}
    for r in rows:
        path = study_dir / r["run_id"] / "gradflow" / "gradflow.csv"
        key = tuple((k, v) for k, v in r["axes"].items() if k != "train.seed")
        if path.exists() and r["seed"] not in out.get(key, {}):
            out.setdefault(key, {})[r["seed"]] = layer_means(read_rows(path), statistic)
    return out


def _gradflow_section(study_dir: Path, rows: list[dict], baseline: dict, short: dict, data: dict) -> list[str]:
    """Per trained variant and layer, the gradient norm (mean over recorded steps, then over seeds)
    and, against the study's baseline variant, the ratio per layer with a seed-paired t-test on the
    log norms (Holm over the layers of one comparison); then each variant's first-seed summary
    (bertlab.gradflow.markdown_summary). Figures are in ``<run>/gradflow/``."""
    from bertlab.gradflow import layer_sort_key, markdown_summary, read_rows
    md = ["## Gradient flow", ""]
    by_variant = gradflow_by_variant(study_dir, rows)
    if not by_variant:
        return md + ["No run has gradient-flow records.", ""]
    layers = sorted({layer for seeds in by_variant.values() for m in seeds.values() for layer in m}, key=layer_sort_key)
    label = {key: variant_label(key, short) or "every run" for key in by_variant}
    md += ["Gradient norm of each layer's parameters (attention and FFN together), averaged over the recorded "
           "steps of a run, then mean ± std over seeds. A resumed run's records are complete (the recorder "
           "saves them with every checkpoint).", ""]
    body = []
    for key, seeds in by_variant.items():
        cells = []
        for layer in layers:
            mean, sd = _mean_std(m.get(layer) for m in seeds.values())
            cells.append(f"{mean:.3g}" + ("" if math.isnan(sd) else f" ± {sd:.2g}"))
        body.append([label[key], str(len(seeds))] + cells)
    md += _table(["trained variant", "seeds"] + layers, body)
    base_items = {k: v for k, v in baseline.items() if k != "decode"}
    base = next((k for k in by_variant if base_items and all(dict(k).get(a) == v for a, v in base_items.items())), None)
    data["gradflow"] = {"layers": layers, "variants": {label[k]: {str(s): m for s, m in v.items()}
                                                        for k, v in by_variant.items()}, "comparisons": []}
    if base is not None and len(by_variant) > 1:
        md += [f"Against `{label[base]}`: the ratio of seed-mean gradient norms per layer, and the seed-paired "
               "t-test of the log norms (p Holm-adjusted over the layers of each row; seeds present in both).", ""]
        body = []
        for key, seeds in by_variant.items():
            if key == base:
                continue
            common = sorted(set(seeds) & set(by_variant[base]))
            cells, pvalues = [], []
            for layer in layers:
                a = np.array([seeds[s].get(layer, math.nan) for s in common], float)
                b = np.array([by_variant[base][s].get(layer, math.nan) for s in common], float)
                ok = ~(np.isnan(a) | np.isnan(b)) & (a > 0) & (b > 0)
                ratio = float(np.mean(a[ok]) / np.mean(b[ok])) if ok.any() else math.nan
                p = float(stats.ttest_rel(np.log(a[ok]), np.log(b[ok]))[1]) if ok.sum() >= 2 else math.nan
                cells.append(ratio)
                pvalues.append(p)
            adjusted = holm(pvalues)
            body.append([label[key], str(len(common))] + [
                "–" if math.isnan(r) else f"{r:.3g}×" + ("" if math.isnan(q) else f" (p {q:.2g})")
                for r, q in zip(cells, adjusted)])
            data["gradflow"]["comparisons"].append({"variant": label[key], "baseline": label[base], "seeds": common,
                                                    "ratio": dict(zip(layers, cells)),
                                                    "p_holm": dict(zip(layers, adjusted))})
        md += _table(["trained variant", "paired seeds"] + layers, body)
    md += ["Each variant's first seed, in detail:", ""]
    for key, seeds in by_variant.items():
        first = min(seeds)
        rid = next(r["run_id"] for r in rows if r["seed"] == first
                   and tuple((k, v) for k, v in r["axes"].items() if k != "train.seed") == key)
        md += [f"<details><summary>{rid}</summary>", "",
               markdown_summary(read_rows(study_dir / rid / "gradflow" / "gradflow.csv")), "</details>", ""]
    return md


LEGEND_POINTS = 8  # legend text size: figures are read at page size, where 6 pt is unreadable


def _legend_below(entries: int, **extra) -> dict:
    """Keyword arguments of ``fig.legend`` / ``ax.legend`` for a legend outside and below the plot
    (``bbox_inches="tight"`` keeps it in the PNG): 8-pt text, one to three columns."""
    return {"fontsize": LEGEND_POINTS, "title_fontsize": LEGEND_POINTS + 1, "loc": "upper center",
            "bbox_to_anchor": (0.5, 0), "ncol": 1 if entries <= 3 else 2 if entries <= 12 else 3, "frameon": False,
            **extra}


def variant_styles(variants: dict, short: dict, cmap_of) -> tuple[dict, dict, dict]:
    """How each variant is drawn: ``{variant key: (colour, marker)}``, a colour per trained variant
    (the key without its decode: both decodes of one run share it) and a marker per decode. Also
    ``{trained label: colour}`` and ``{decode: marker}`` for the two legends. ``cmap_of(name)`` is
    ``plt.get_cmap``; colours repeat after 20 trained variants."""
    trained = list(dict.fromkeys(k[:-1] for k in variants))
    decodes = list(dict.fromkeys(k[-1][1] for k in variants))
    cmap = cmap_of("tab10" if len(trained) <= 10 else "tab20")
    colours = {t: cmap(i % cmap.N) for i, t in enumerate(trained)}
    markers = {d: "o^sDvP*X"[i % 8] for i, d in enumerate(decodes)}
    style = {k: (colours[k[:-1]], markers[k[-1][1]]) for k in variants}
    return style, {variant_label(t, short) or "every run": c for t, c in colours.items()}, markers


def spread_coincident(x, y, step: float = 0.02, max_half: float = 0.1) -> np.ndarray:
    """``x`` of a scatter on a log x axis, with the points that share their exact ``(x, y)`` (e.g.
    every variant at F1 = 0 for a class none of them finds) spread side by side instead of drawn on
    top of each other: the k-th of n such points (in input order) is multiplied by
    ``10 ** (h * (2k / (n - 1) - 1))``, ``h = min(step * (n - 1) / 2, max_half)`` decades. A point
    alone at its ``(x, y)`` does not move. Deterministic (no random draw): the same figure on every
    build, and a variant keeps its side in every pile."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = x.copy()
    piles: dict[tuple, list[int]] = {}
    for i, point in enumerate(zip(x.tolist(), y.tolist())):
        piles.setdefault(point, []).append(i)
    for members in piles.values():
        n = len(members)
        if n > 1:
            half = min(step * (n - 1) / 2, max_half)
            out[members] = x[members] * 10 ** np.linspace(-half, half, n)
    return out


def _figures_section(study_dir: Path, variants: dict, labels: dict, opts: dict, short: dict | None = None,
                     scale: str = "default") -> list[str]:
    """``figures/f1_vs_frequency.png`` (test F1 of every class against its training mentions) and
    ``figures/accuracy_vs_time.png`` (micro F1 against training seconds): colour = trained
    variant, marker = decode, legends below the plot."""
    md = ["## Figures", ""]
    if not opts.get("figures", True):
        return md + ["Figures are off (`[report] figures = false`).", ""]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return md + ["matplotlib is not installed (`pip install bertlab[plot]`): tables only.", ""]
    fig_dir = study_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    style, colours, markers = variant_styles(variants, short or {}, plt.get_cmap)

    def legends(fig, ax) -> None:
        """The colour legend (trained variants) below ``ax`` and, with several decodes, the marker
        legend to its right (figure legends, so ``bbox_inches="tight"`` keeps both)."""
        by_colour = [Line2D([], [], ls="none", marker="o", color=c, label=t) for t, c in colours.items()]
        fig.legend(handles=by_colour, title="trained variant (colour)", bbox_transform=ax.transAxes,
                   **_legend_below(len(by_colour), bbox_to_anchor=(0.5, -0.16)))
        if len(markers) > 1:
            by_marker = [Line2D([], [], ls="none", marker=m, color="0.35", label=d) for d, m in markers.items()]
            fig.legend(handles=by_marker, title="decode (marker)", fontsize=LEGEND_POINTS,
                       title_fontsize=LEGEND_POINTS + 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       bbox_transform=ax.transAxes, frameon=False)

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    xs, ys, keys = [], [], []
    for key, group in variants.items():
        mentions = group[0].get("train_mentions", {})
        types = sorted({t for r in group for t, v in r["per_type"].items() if v["support"] > 0})
        xs += [max(mentions.get(t, 0), 0.5) for t in types]
        ys += [float(np.mean([r["per_type"].get(t, {"f1": 0.0})["f1"] for r in group])) for t in types]
        keys += [key] * len(types)
    xs_drawn = spread_coincident(xs, ys)
    for key in variants:
        at = [i for i, k in enumerate(keys) if k == key]
        colour, marker = style[key]
        ax.scatter(xs_drawn[at], np.asarray(ys)[at], s=18, color=colour, marker=marker, alpha=0.75, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("training mentions of the class (count, log scale; a class with 0 drawn at 0.5)")
    ax.set_ylabel("test F1 of the class (mean over seeds)")
    ax.set_title("Per-class test F1 against class frequency\n(points at the same value spread sideways)",
                 fontsize=10)
    legends(fig, ax)
    fig.savefig(fig_dir / "f1_vs_frequency.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    times = []
    for key, group in variants.items():
        t = median(r.get("train_seconds") for r in group)  # a cost, as in the compute table
        f1 = _mean_std(r.get("f1_micro") for r in group)
        colour, marker = style[key]
        ax.errorbar([t], [f1[0]], yerr=[0 if math.isnan(f1[1]) else f1[1]], fmt=marker, color=colour, ms=7,
                    capsize=3)
        times.append(t)
    times = [t for t in times if t > 0 and math.isfinite(t)]
    if times and max(times) / min(times) > 100:  # e.g. an HMM's second next to a BERT's minutes
        ax.set_xscale("log")
    ax.set_xlabel("training time per run (s, median over seeds" + ("; log scale)" if ax.get_xscale() == "log" else ")"))
    ax.set_ylabel("test micro F1 (mean ± std over seeds)")
    ax.set_title("Accuracy against training time", fontsize=10)
    legends(fig, ax)
    fig.savefig(fig_dir / "accuracy_vs_time.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    # training seconds are wall-clock on a machine shared with whatever else ran (other workers,
    # other studies): runs of a few seconds differ by that load, not by what they cost
    caveat = ("Training time is wall-clock seconds on the machine that ran the study, shared with whatever "
              "else ran there (other workers, other jobs); ")
    caveat += ("at `smoke` scale a run takes seconds, so the horizontal differences are that load's noise, not "
               "the variants' cost: read the time axis of a `default` or `full` study." if scale == "smoke" else
               "compare times of runs made on one machine under one load (\"Environment and wall time\" "
               "says which machine ran each).")
    return md + ["![F1 per class vs class frequency](figures/f1_vs_frequency.png)", "",
                 "![accuracy vs training time](figures/accuracy_vs_time.png)", "", caveat, ""]


# ---- command line ---------------------------------------------------------------------------------

# ---- publishing: a study folder as committed under docs/results ----------------------------------

# what a finished run folder keeps when published: everything but what only resuming and serving
# need (the checkpoint, the best models, dev predictions, claims, temp files) and gradflow.jsonl (the
# same rows as gradflow.csv, which the report reads); test predictions stay, the report's intervals
# and document-level tests are computed from them
_UNPUBLISHED_FILES = ("checkpoint", "claim-", "predictions_dev_", ".", "gradflow.jsonl")
_UNPUBLISHED_DIRS = ("best",)


def publish(study_dir: str | os.PathLike, dest: str | os.PathLike) -> tuple[Path, list[str]]:
    """Copy the finished runs of ``study_dir`` (a folder ``bertlab experiment`` writes) to ``dest``
    without their checkpoints, best models, dev predictions and claims, with ``study.json``; then
    rewrite ``dest``'s results.jsonl from its run folders and build its report there. Run folders
    already in ``dest`` stay (publishing a study in parts, e.g. across sessions, adds to it); a run
    still training in ``study_dir`` (no metrics.json) is not copied. Each run folder is written
    whole beside its place and swapped in (``bertlab.files.write_folder``), so an interrupted
    publish (a full disk, Ctrl-C) leaves each run folder the old one or the new one, never files of
    two runs in one folder; an OSError names the file it was writing. Returns ``(report path, run
    ids copied)``."""
    from bertlab.files import write_bytes, write_folder
    from bertlab.results import write_results
    src, dest = Path(study_dir), Path(dest)
    if not (src / "study.json").exists():
        raise FileNotFoundError(f"{src / 'study.json'}: not found; is {src} a study folder made by "
                                f"`bertlab experiment`?")
    if src.resolve() == dest.resolve():
        raise ValueError(f"--publish {dest}: the same folder as the study; give another one")
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for rdir in sorted(p for p in src.iterdir() if p.is_dir() and (p / "metrics.json").exists()):
        files = [path.relative_to(rdir) for path in sorted(rdir.rglob("*")) if path.is_file()]
        files = [rel for rel in files if not (rel.parts[0].startswith(_UNPUBLISHED_DIRS)
                                              or any(part.startswith(_UNPUBLISHED_FILES) for part in rel.parts))]

        def write(tmp: Path, rdir=rdir, files=files) -> None:
            for rel in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    write_bytes(tmp / rel, (rdir / rel).read_bytes())
                except OSError as e:  # name the file as it will be, not the temp folder's copy
                    raise OSError(e.errno, e.strerror or str(e), str(dest / rdir.name / rel)) from e
        write_folder(dest / rdir.name, write)
        copied.append(rdir.name)
    write_bytes(dest / "study.json", (src / "study.json").read_bytes())
    write_results(dest)
    return build_report(dest), copied


def main(argv: list[str] | None = None) -> int:
    """``bertlab report NAME [--out runs] [--publish DEST]``: rebuild runs/NAME/report.md from its
    results, or publish the study to DEST and build the report there."""
    ap = argparse.ArgumentParser(prog="bertlab report", description=(
        "Rebuild a study's report.md, report.json and figures from its results.jsonl and prediction "
        "files; trains nothing (docs/experiments.md). A finished run (metrics.json) that has no row in "
        "results.jsonl gets one first: the file is rebuilt from the run folders."))
    ap.add_argument("name", help="a study folder under --runs (e.g. btl_focal, btl_focal-smoke) or a path "
                                 "to one (e.g. docs/results/btl_focal)")
    ap.add_argument("--runs", "--out", dest="out", default="runs", metavar="DIR",
                    help="the folder that holds study folders, where NAME is looked up (default runs/; "
                         "--out is the old name)")
    ap.add_argument("--publish", metavar="DEST", help=(
        "copy the study's finished runs to DEST without checkpoints, best models, dev predictions "
        "and claims (what docs/results/NAME commits), keep runs already there, and build the report in "
        "DEST; re-run it as more runs finish"))
    args = ap.parse_args(argv)
    folder = Path(args.name) if Path(args.name).is_dir() else Path(args.out) / args.name
    try:
        if args.publish:
            path, copied = publish(folder, args.publish)
            print(f"published {len(copied)} finished run(s) of {folder} to {args.publish}")
            print(path)
            return 0
        if (folder / "study.json").exists():
            from bertlab.results import complete_results
            missing = complete_results(folder)
            if missing:
                print(f"{folder / 'results.jsonl'}: {len(missing)} finished run(s) had no row ({missing[0]}"
                      f"{', ...' if len(missing) > 1 else ''}); rebuilt from the run folders", file=sys.stderr)
        print(build_report(folder))
    except Exception as e:  # OSError: also a full or read-only disk, named by its file
        hint = ""
        committed = committed_results(args.name)
        scaled = scale_folders(args.out, args.name)
        if isinstance(e, FileNotFoundError) and not (folder / "study.json").exists() and scaled:
            # runs/NAME is the default scale's folder; a smoke run wrote runs/NAME-smoke
            hint = (f" Other scales of this study are in {', '.join(str(f) + '/' for f in scaled)}; e.g. "
                    f"`bertlab report {scaled[0].name}` (`make report NAME={scaled[0].name}`).")
        elif isinstance(e, FileNotFoundError) and not (folder / "study.json").exists() and committed:
            hint = f" The committed result is in {committed}/; rebuild it with `bertlab report {committed}`."
        return fail("report", e, also=(ValueError,), hint=hint)
    return 0


def scale_folders(runs: str | Path, name: str) -> list[Path]:
    """The study folders ``runs/NAME-SCALE`` (e.g. ``btl_focal-smoke``) of a study name: those whose
    study.json names that study."""
    if not name or Path(name).name != name:  # a path, not a study name
        return []
    found = []
    for path in sorted(Path(runs).glob(f"{name}-*/study.json")):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("name") == name:
                found.append(path.parent)
        except (OSError, ValueError):
            continue  # a folder being written, or not a study's: no hint from it
    return found


def committed_results(name: str) -> str | None:
    """The committed result folder ``docs/results/NAME`` of this checkout, as a path to type (relative
    to the working directory when it is below it), or ``None`` when there is none."""
    if not name or Path(name).name != name:  # a path, not a study name
        return None
    folder = Path(__file__).resolve().parent.parent / "docs" / "results" / name
    if not (folder / "study.json").exists():
        return None
    try:
        return str(folder.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)
