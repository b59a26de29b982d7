"""The runs of a variant that the statistics use: its rows (one per seed, one for a deterministic
model), their per-document counts, and, for a cross-validated study, each seed's folds pooled into
one run over every document (``pool_folds``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from bertlab.report.counts import concat_counts, document_counts, scores_of_counts
from bertlab.report.rows import FOLD_AXIS, fold_ratio, mean_std, median, variant_key


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


def same_counts(a: dict, b: dict) -> bool:
    """Whether two ``document_counts`` are equal: the same documents, types, tags and counts."""
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
            identical = all(same_counts(counts[0], c) for c in counts[1:])
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
    if metric in ("f1_micro", "f1_macro", "f1_tail"):
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
            row[m] = median(r.get(m) for r in group) if m == "inference_tokens_per_s" else mean_std(
                r.get(m) for r in group)[0]
        types = {t for r in group for t in r.get("train_mentions", {})}
        row["train_mentions"] = {t: int(round(np.mean([r.get("train_mentions", {}).get(t, 0) for r in group])))
                                 for t in sorted(types)}
        if per_fold is not None:  # keyed like variant_runs reads them: a run is scored with every decode
            counts[(run_id, row["decode"])] = concat_counts(per_fold, have)
            row.update(scores_of_counts(counts[(run_id, row["decode"])]))
        else:
            for m in ("f1_micro", "f1_macro", "precision_micro", "recall_micro", "unweighted_accuracy"):
                row[m] = mean_std(r.get(m) for r in group)[0]
            row["per_type"] = {t: {k: float(np.mean([r["per_type"].get(t, {}).get(k, 0) for r in group]))
                                   for k in ("precision", "recall", "f1", "support")}
                               for t in sorted({t for r in group for t in r.get("per_type", {})})}
        pooled.append(row)
    return pooled, counts, left_out
