"""A study's ``report.md``, rebuilt from ``results.jsonl`` and the runs' prediction files only.

``build_report(study_dir)`` never trains: it reads what ``bertlab experiment`` left in the study
folder, so ``bertlab report NAME`` can be re-run at any time (e.g. after changing ``[report]``
options or while a study is still running).

The numbers, and how each is computed (docs/experiments.md explains the choices):

* **mean ± std over seeds**: std with ``ddof=1`` (the sample standard deviation), ``–`` for one seed.
* **95% CI over test documents**: a BCa bootstrap. One set of resamples of the test
  documents, ``idx = default_rng(seed).integers(0, D, size=(B, D))``, is shared by every seed and
  every variant; in each resample every seed's run is scored on the same documents and the scores
  are averaged over seeds. The CI is the bias-corrected and accelerated interval of that seed-mean
  (``bertlab.stats.bca_levels``; the acceleration from leave-one-document-out), so it is the
  uncertainty of the number in the table due to *which documents* happen to be in the test set.
  BCa, not the plain percentile interval, because macro F1 and unweighted accuracy are biased
  upward under document resampling (a class that loses its few documents drops out of the mean),
  and the percentile interval then can exclude the point estimate.
* **significance**: each variant against the study's baseline with the same values on the other
  axes, paired by seed: ``scipy.stats.ttest_rel`` and ``wilcoxon`` (exact), Holm-corrected over all
  comparisons of one metric, effect size paired d = mean(diff) / std(diff, ddof=1).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from bertlab.files import write_text
from bertlab.metrics import strict_entities
from bertlab.stats import bca_levels

METRICS = {"f1_micro": "micro F1", "f1_macro": "macro F1", "unweighted_accuracy": "unweighted acc."}
DEFAULTS = {
    "metrics": ["f1_micro", "f1_macro"],  # metrics tested for significance (Holm family each)
    "alpha": 0.05,
    "bootstrap_resamples": 1000,
    "bootstrap_seed": 0,
    "bands": {"head": 500, "tail": 50},  # head: >= head training mentions; tail: < tail
    "anova": None,  # {a = "optim.lr", b = "sampler.batch_size", metric = "dev_f1_micro", decode = "argmax"}
    "figures": True,
    "confusion": False,  # per-type P/R/F1 and entity confusion matrices per variant (issue #7)
}


# ---- loading ------------------------------------------------------------------------------------

def load_study_results(study_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(study.json, rows of results.jsonl)`` of a study folder, with clear errors."""
    from bertlab.experiment import read_results
    study_dir = Path(study_dir)
    meta_file, results = study_dir / "study.json", study_dir / "results.jsonl"
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file}: not found; is {study_dir} a study folder made by "
                                f"`bertlab experiment`?")
    study = json.loads(meta_file.read_text(encoding="utf-8"))
    rows = read_results(results) if results.exists() else []
    return study, rows


def variant_key(row: dict, axes: list[str] | None = None) -> tuple:
    """The variant of a result row: every axis value but the seed (in the study's axis order),
    and the decode."""
    axes = list(row["axes"]) if axes is None else axes
    return tuple((k, row["axes"][k]) for k in axes if k != "train.seed" and k in row["axes"]) + (
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
    (correct, gold) for the unweighted accuracy}``."""
    docs: dict[str, int] = {}
    ent: dict[str, list] = defaultdict(list)
    tok: dict[str, list] = defaultdict(list)
    per_doc_ent, per_doc_tok = [], []
    with open(pred_file, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            s = json.loads(line)
            d = docs.setdefault(s["doc_id"], len(docs))
            if d == len(per_doc_ent):
                per_doc_ent.append(defaultdict(lambda: [0, 0, 0]))
                per_doc_tok.append(defaultdict(lambda: [0, 0]))
            tags = s["tags"] if "tags" in s else s["gold"]
            gold = {(t, a, b) for t, a, b in strict_entities(tags)}
            pred = {(t, a, b) for t, a, b in strict_entities(s["pred"])}
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
    return {"docs": list(docs), "entities": dict(ent), "tokens": dict(tok)}


def scores_from_counts(ent: np.ndarray, tok: np.ndarray) -> dict[str, np.ndarray]:
    """Micro F1, macro F1 and unweighted accuracy from summed counts.

    ``ent[..., T, 3]`` (tp, predicted, gold per entity type), ``tok[..., L, 2]`` (correct, gold per
    tag); leading dimensions are kept. Macro F1 averages over the types that are gold or predicted
    (seqeval's rule); unweighted accuracy averages recall over the tags that are gold."""
    tp, n_pred, n_true = ent[..., 0], ent[..., 1], ent[..., 2]
    micro = np.where(tp.sum(-1) > 0, 2 * tp.sum(-1) / np.maximum(n_pred.sum(-1) + n_true.sum(-1), 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
        r = np.where(n_true > 0, tp / np.maximum(n_true, 1), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
        present = (n_pred + n_true) > 0
        macro = (f * present).sum(-1) / present.sum(-1)
        correct, gold = tok[..., 0], tok[..., 1]
        has = gold > 0
        ua = (np.where(has, correct / np.maximum(gold, 1), 0.0)).sum(-1) / has.sum(-1)
    return {"f1_micro": micro, "f1_macro": macro, "unweighted_accuracy": ua}


def bootstrap_variant(counts: list[dict], idx: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """The document-bootstrap of one variant: ``counts`` per seed (``document_counts``), ``idx``
    ``[B, D]`` resampled document indices. Returns ``{metric: (full-sample seed mean, lo, hi)}``."""
    docs = counts[0]["docs"]
    for c in counts[1:]:
        if sorted(c["docs"]) != sorted(docs):
            raise ValueError("the seeds of one variant were scored on different test documents")
    types = sorted({t for c in counts for t in c["entities"]})
    labels = sorted({l for c in counts for l in c["tokens"]})
    D = len(docs)

    def stack(c, table, keys, width):
        order = [c["docs"].index(d) for d in docs]
        return np.stack([c[table][k][order] if k in c[table] else np.zeros((D, width), np.int64)
                         for k in keys], axis=1)  # [D, K, width]

    ent = np.stack([stack(c, "entities", types, 3) for c in counts])  # [S, D, T, 3]
    tok = np.stack([stack(c, "tokens", labels, 2) for c in counts])    # [S, D, L, 2]
    B = idx.shape[0]
    weights = np.stack([np.bincount(row, minlength=D) for row in idx])   # [B, D] multiplicities
    ent_b = np.einsum("bd,sdtk->sbtk", weights, ent)
    tok_b = np.einsum("bd,sdlk->sblk", weights, tok)
    full = scores_from_counts(ent.sum(1), tok.sum(1))
    boot = scores_from_counts(ent_b, tok_b)
    # leave-one-document-out: the totals minus that document's counts, [S, D, ...]
    jack = scores_from_counts(ent.sum(1, keepdims=True) - ent, tok.sum(1, keepdims=True) - tok)
    out = {}
    for m in METRICS:
        dist = boot[m].mean(0)  # the seed mean, per resample
        theta = float(full[m].mean())
        if B and D > 1:
            lo, hi = np.quantile(dist, bca_levels(dist, theta, jack[m].mean(0)))
        else:
            lo, hi = math.nan, math.nan
        out[m] = (theta, float(lo), float(hi))
    return out


def resample_indices(n_docs: int, n_resamples: int, seed: int) -> np.ndarray:
    """The shared document resamples: ``default_rng(seed).integers(0, n_docs, (B, n_docs))``."""
    return np.random.default_rng(seed).integers(0, n_docs, size=(n_resamples, n_docs))


# ---- significance ---------------------------------------------------------------------------------

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


def paired_test(a: list[float], b: list[float]) -> dict:
    """Paired tests of ``a`` (variant) against ``b`` (baseline), one value per seed."""
    from bertlab import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = a - b
    n = len(diff)
    out = {"n": n, "mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": float(diff.mean()),
           "t": math.nan, "p_t": math.nan, "p_w": math.nan, "d": math.nan}
    # identical differences on every seed (e.g. a deterministic model against itself) leave the
    # t statistic undefined: no test rather than a p of 0
    if n >= 2 and diff.std(ddof=1) > 0:
        t = stats.ttest_rel(a, b)
        out["t"], out["p_t"] = float(t.statistic), float(t.pvalue)
        out["d"] = float(stats.paired_d(a, b))
        out["p_w"] = float(stats.wilcoxon(a, b).pvalue)
    return out


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN entries are left out of the family and stay NaN)."""
    from bertlab import stats
    p = np.asarray(pvalues, float)
    out = np.full(len(p), math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = np.asarray(stats.holm(p[ok])[1], float)
    return list(out)


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with n pairs."""
    return min(1.0, 2.0 / 2 ** n)


def sentence(c: dict, alpha: float, n_family: int) -> str:
    """What one comparison supports, and what it doesn't, in plain words."""
    name, base, metric = c["variant"], c["baseline"], METRICS[c["metric"]]
    n, diff = c["n"], c["diff"]
    if n < 2:
        return f"{name} vs {base} on {metric}: only {n} paired seed(s), so no test is possible."
    if math.isnan(c["p_t"]):
        return (f"{name} vs {base}: the {metric} difference is {diff:+.4f} on every one of the {n} "
                f"seeds (no seed-to-seed variation), so a paired test is undefined; nothing is claimed.")
    direction = "higher" if diff > 0 else "lower"
    wnote = " (Wilcoxon cannot decide with so few seeds, see above)" if min_wilcoxon_p(n) >= alpha else ""
    if c["p_holm"] < alpha:
        return (f"{name} has {direction} {metric} than {base} ({diff:+.4f}, paired d = {c['d']:.2f}): "
                f"significant after Holm correction over {n_family} comparisons "
                f"(p = {c['p_t']:.3g}, adjusted {c['p_holm']:.3g}, {n} seeds). This is a difference "
                f"between training runs on this test set; it says nothing about other datasets{wnote}.")
    if c["p_t"] < alpha:
        return (f"{name} has {direction} {metric} than {base} ({diff:+.4f}) with p = {c['p_t']:.3g} "
                f"before correction, but not after Holm correction over {n_family} comparisons "
                f"(adjusted {c['p_holm']:.3g}): suggestive, not established with {n} seeds{wnote}.")
    return (f"{name} vs {base}: {metric} differs by {diff:+.4f}, not significant with {n} seeds "
            f"(p = {c['p_t']:.3g}, adjusted {c['p_holm']:.3g}); the data neither show a difference "
            f"nor rule out one of this size{wnote}.")


# ---- the report -----------------------------------------------------------------------------------

def build_report(study_dir: str | os.PathLike) -> Path:
    """Write ``study_dir/report.md`` (and ``report.json``, ``figures/``); returns the report path."""
    study_dir = Path(study_dir)
    study, rows = load_study_results(study_dir)
    opts = {**DEFAULTS, **study.get("report", {})}
    short = dict(study.get("short_names", {}))
    short["decode"] = "decode"
    variants = group_variants(rows, list(study.get("axes", {})))
    labels = {k: variant_label(k, short) for k in variants}
    data: dict = {"study": study["name"], "scale": study["scale"], "variants": {}, "comparisons": []}
    md: list[str] = []

    md += [f"# Study `{study['name']}` (scale `{study['scale']}`)", ""]
    if study.get("description"):
        md += [study["description"].strip(), ""]
    n_runs = len({r["run_id"] for r in rows})
    md += [f"Made by `bertlab experiment {study['name']} --scale {study['scale']}` "
           f"(study file `{study.get('source', '')}`); rebuild with `bertlab report {study_dir.name}`. "
           f"{n_runs} of {len(study.get('runs', []))} runs finished; {len(variants)} variants "
           f"(decode counted as an axis: every run is scored with each of {', '.join(study.get('decodes', []))}).",
           ""]
    if study.get("baseline"):
        md += ["Baseline: " + ", ".join(f"{short.get(k, k)}={v}" for k, v in study["baseline"].items()), ""]
    if not rows:
        md += ["No finished runs yet."]
        return _write_report(study_dir, md, data)

    md += _environment_section(rows)
    md += _main_section(study_dir, variants, labels, opts, data)
    md += _band_section(variants, labels, opts, data)
    md += _significance_section(variants, labels, study.get("baseline", {}), opts, data)
    md += _compute_section(variants, labels, data)
    if opts.get("confusion"):
        md += _confusion_section(study_dir, variants, labels)
    if opts.get("anova"):
        md += _anova_section(rows, opts["anova"], short, data)
    if study.get("gradflow"):
        md += _gradflow_section(study_dir, rows)
    md += _figures_section(study_dir, variants, labels, opts)
    return _write_report(study_dir, md, data)


def _write_report(study_dir: Path, md: list[str], data: dict) -> Path:
    write_text(study_dir / "report.json", json.dumps(data, indent=2, default=_nan_json) + "\n")
    path = study_dir / "report.md"
    write_text(path, "\n".join(md).rstrip() + "\n")
    return path


def _nan_json(o):
    return float(o) if hasattr(o, "item") else str(o)


def _f(x, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


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
             "yes" if r.get("resumed") else "no"] for rid, r in runs.items()]
    total = sum(r.get("wall_seconds") or 0 for r in runs.values())
    md += _table(["run", "wall s", "train s", "epochs", "resumed"], body)
    md += [f"Total wall time: {total:.1f} s ({total / 60:.1f} min) over {len(runs)} runs.", ""]
    return md


def _main_section(study_dir: Path, variants: dict, labels: dict, opts: dict, data: dict) -> list[str]:
    md = ["## Main results (test set)", "",
          "Mean ± std over seeds (std with ddof=1); 95% CI: BCa bootstrap over test documents "
          f"({opts['bootstrap_resamples']} resamples shared by all seeds and variants, the seed mean "
          "per resample). Entity scores are strict IOB2 (seqeval's strict mode).", ""]
    body = []
    cache: dict[int, np.ndarray] = {}
    for key, group in variants.items():
        entry = {"label": labels[key], "seeds": [r["seed"] for r in group], "runs": [r["run_id"] for r in group]}
        files = [study_dir / r["predictions"] for r in group if r.get("predictions")]
        ci = None
        if len(files) == len(group) and all(f.exists() for f in files):
            counts = [document_counts(f) for f in files]
            D = len(counts[0]["docs"])
            if D not in cache:
                cache[D] = resample_indices(D, int(opts["bootstrap_resamples"]), int(opts["bootstrap_seed"]))
            ci = bootstrap_variant(counts, cache[D])
        cells = [labels[key], str(len(group))]
        for m in METRICS:
            mean, std = _mean_std(r.get(m) for r in group)
            entry[m] = {"mean": mean, "std": std, "values": [r.get(m) for r in group]}
            cells.append(f"{_f(mean)} ± {_f(std)}")
            if ci is not None:
                entry[m]["ci"] = [ci[m][1], ci[m][2]]
                entry[m]["bootstrap_point"] = ci[m][0]
                cells.append(f"[{_f(ci[m][1])}, {_f(ci[m][2])}]")
            else:
                cells.append("n/a")
        data["variants"][labels[key]] = entry
        body.append(cells)
    header = ["variant", "seeds"]
    for m in METRICS.values():
        header += [m, "95% CI"]
    return md + _table(header, body)


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


def comparisons(variants: dict, labels: dict, baseline: dict, metrics: list[str]) -> list[dict]:
    """Every (variant, metric) compared with its baseline variant, paired by seed; p-values
    Holm-adjusted within each metric."""
    out = []
    if not baseline:
        return out
    for metric in metrics:
        family = []
        for key, group in variants.items():
            base = baseline_of(key, baseline, variants)
            if base is None or base == key:
                continue
            base_by_seed = {r["seed"]: r for r in variants[base]}
            pairs = [(r[metric], base_by_seed[r["seed"]][metric]) for r in group
                     if r["seed"] in base_by_seed and r.get(metric) is not None]
            res = paired_test([a for a, _ in pairs], [b for _, b in pairs])
            res.update(variant=labels[key], baseline=labels[base], metric=metric,
                       seeds=[r["seed"] for r in group if r["seed"] in base_by_seed])
            family.append(res)
        for c, p in zip(family, holm([c["p_t"] for c in family])):
            c["p_holm"] = p
            c["family_size"] = sum(not math.isnan(x["p_t"]) for x in family)
        out += family
    return out


def _significance_section(variants: dict, labels: dict, baseline: dict, opts: dict, data: dict) -> list[str]:
    md = ["## Significance against the baseline", ""]
    if not baseline:
        return md + ["The study names no baseline (`[study] baseline`), so nothing is tested.", ""]
    comps = comparisons(variants, labels, baseline, list(opts["metrics"]))
    data["comparisons"] = comps
    if not comps:
        return md + ["No variant has a baseline run to pair with yet.", ""]
    md += [f"Paired over seeds: t-test (`ttest_rel`) and exact Wilcoxon signed-rank; Holm correction "
           f"over the comparisons of each metric; paired d = mean(diff) / std(diff). α = {opts['alpha']}.", ""]
    body = [[c["variant"], c["baseline"], METRICS[c["metric"]], str(c["n"]), f"{c['diff']:+.4f}",
             _f(c["t"], 3), _f(c["p_t"], 4), _f(c["p_holm"], 4), _f(c["p_w"], 4), _f(c["d"], 2)]
            for c in comps]
    md += _table(["variant", "baseline", "metric", "n", "Δ mean", "t", "p (t)", "p Holm", "p (Wilcoxon)",
                  "d"], body)
    small = sorted({c["n"] for c in comps if c["n"] >= 2 and min_wilcoxon_p(c["n"]) >= opts["alpha"]})
    for n in small:
        md += [f"With {n} seeds the exact Wilcoxon test cannot reach p < {opts['alpha']:g}: its smallest "
               f"possible two-sided p is 2/2^{n} = {min_wilcoxon_p(n):.3g}, so its p-values above are "
               f"reported for completeness and only the t-test can show a difference.", ""]
    md += [f"- {sentence(c, opts['alpha'], c['family_size'])}" for c in comps]
    return md + [""]


def _compute_section(variants: dict, labels: dict, data: dict) -> list[str]:
    md = ["## Compute cost", "",
          "Means over seeds. Train seconds are the loop's own timing (data loading and final "
          "evaluation excluded); inference tokens/s counts words of the test split per second of "
          "scoring with that decode.", ""]
    body = []
    for key, group in variants.items():
        vals = {m: _mean_std(r.get(m) for r in group)[0] for m in
                ("params", "seconds_per_epoch", "train_seconds", "inference_tokens_per_s", "f1_micro")}
        data["variants"][labels[key]]["compute"] = vals
        params = vals["params"]
        body.append([labels[key], "–" if math.isnan(params) else f"{params / 1e6:.2f} M",
                     _f(vals["seconds_per_epoch"], 1), _f(vals["train_seconds"], 1),
                     _f(vals["inference_tokens_per_s"], 0), _f(vals["f1_micro"])])
    return md + _table(["variant", "parameters", "train s / epoch", "train s", "inference tokens/s",
                        "micro F1"], body)


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
    from bertlab import stats
    a, b = spec["a"], spec["b"]
    metric, decode = spec.get("metric", "dev_f1_micro"), spec.get("decode", "argmax")
    use = [r for r in rows if r["decode"] == decode and r.get(metric) is not None]
    md = [f"## Two-way ANOVA: {metric} ~ {short.get(a, a)} × {short.get(b, b)}", ""]
    if not use:
        return md + [f"No finished run has {metric}.", ""]
    table = stats.anova_two_way([r[metric] for r in use], [str(r["axes"][a]) for r in use],
                                [str(r["axes"][b]) for r in use])
    data["anova"] = dict(table)
    names = {"A": short.get(a, a), "B": short.get(b, b), "A:B": f"{short.get(a, a)} × {short.get(b, b)}",
             "Residual": "residual (seeds)"}
    body = [[names.get(name, name), _f(row["SS"], 6), f"{row['df']:.0f}", _f(row["MS"], 6), _f(row["F"], 3),
             _f(row["p"], 4)] for name, row in table.items()]
    md += [f"Type II sums of squares (`bertlab.stats.anova_two_way`), {len(use)} runs, decode {decode}.", ""]
    md += _table(["source", "sum of squares", "df", "mean square", "F", "p"], body)
    total = sum(row["SS"] for row in table.values())
    md += ["Share of the total variation: " + ", ".join(
        f"{names[k]} {table[k]['SS'] / total:.0%}" for k in table if total > 0) + ".", ""]
    return md


def _gradflow_section(study_dir: Path, rows: list[dict]) -> list[str]:
    """The gradient-flow summary (bertlab.gradflow.markdown_summary) of the first seed of each
    trained variant; the figures are in ``<run>/gradflow/``."""
    from bertlab.gradflow import markdown_summary, read_rows
    md = ["## Gradient flow", ""]
    firsts: dict = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        key = tuple((k, v) for k, v in r["axes"].items() if k != "train.seed")
        firsts.setdefault(key, r["run_id"])
    found = [rid for rid in firsts.values() if (study_dir / rid / "gradflow" / "gradflow.csv").exists()]
    if not found:
        return md + ["No run has gradient-flow records.", ""]
    md += ["Recorded during training (a resumed run records only the steps after resuming); the "
           "first seed of each variant. Figures: `<run>/gradflow/*.png`.", ""]
    for rid in found:
        md += [f"<details><summary>{rid}</summary>", "",
               markdown_summary(read_rows(study_dir / rid / "gradflow" / "gradflow.csv")), "</details>", ""]
    return md


def _figures_section(study_dir: Path, variants: dict, labels: dict, opts: dict) -> list[str]:
    md = ["## Figures", ""]
    if not opts.get("figures", True):
        return md + ["Figures are off (`[report] figures = false`).", ""]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return md + ["matplotlib is not installed (`pip install bertlab[plot]`): tables only.", ""]
    fig_dir = study_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    # one distinct (colour, marker) per variant: tab10 up to 10 variants, tab20 beyond, markers
    # cycling after 20; legends sit outside the axes so they never hide a point
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    style = {key: dict(color=cmap(i % cmap.N), marker="osD^vPX*"[i // cmap.N % 8])
             for i, key in enumerate(variants)}
    legend = dict(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, group in variants.items():
        mentions = group[0].get("train_mentions", {})
        types = sorted({t for r in group for t, v in r["per_type"].items() if v["support"] > 0})
        xs = [max(mentions.get(t, 0), 0.5) for t in types]
        ys = [np.mean([r["per_type"].get(t, {"f1": 0.0})["f1"] for r in group]) for t in types]
        ax.scatter(xs, ys, s=14, label=labels[key], alpha=0.7, **style[key])
    ax.set_xscale("log")
    ax.set_xlabel("training mentions of the class (log)")
    ax.set_ylabel("test F1 (mean over seeds)")
    ax.legend(**legend)
    fig.savefig(fig_dir / "f1_vs_frequency.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    times = []
    for key, group in variants.items():
        t = _mean_std(r.get("train_seconds") for r in group)[0]
        f1 = _mean_std(r.get("f1_micro") for r in group)
        ax.errorbar([t], [f1[0]], yerr=[0 if math.isnan(f1[1]) else f1[1]], fmt=style[key]["marker"],
                    color=style[key]["color"], label=labels[key])
        times.append(t)
    times = [t for t in times if t > 0 and math.isfinite(t)]
    if times and max(times) / min(times) > 100:  # e.g. an HMM's second next to a BERT's minutes
        ax.set_xscale("log")
    ax.set_xlabel("train seconds (mean over seeds)" + (" (log)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("test micro F1")
    ax.legend(**legend)
    fig.savefig(fig_dir / "accuracy_vs_time.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return md + ["![F1 per class vs class frequency](figures/f1_vs_frequency.png)", "",
                 "![accuracy vs training time](figures/accuracy_vs_time.png)", ""]


# ---- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``bertlab report NAME [--out runs]``: rebuild runs/NAME/report.md from its results."""
    ap = argparse.ArgumentParser(prog="bertlab report", description=main.__doc__)
    ap.add_argument("name", help="study folder name under --out (e.g. btl_focal, btl_focal-smoke) "
                                 "or a path to a study folder")
    ap.add_argument("--out", default="runs")
    args = ap.parse_args(argv)
    folder = Path(args.name) if Path(args.name).is_dir() else Path(args.out) / args.name
    try:
        print(build_report(folder))
    except (FileNotFoundError, ValueError) as e:
        print(f"bertlab report: {e}", file=sys.stderr)
        return 2
    return 0
