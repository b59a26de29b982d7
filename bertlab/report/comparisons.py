"""The comparisons of a study: each variant against its baseline variant, in the families the study
declares, on each tested metric (``compare``, ``comparisons``), with Holm within a family and the
smallest detectable difference from the variance pooled over the study (``detectable_differences``).

A committed study folder (docs/results/NAME) keeps results.jsonl and report.json but not the runs'
prediction files, so a rebuild cannot redo the document-level statistics. It keeps what the earlier
build stored instead, where that build scored the same runs with the same values
(``earlier_metric``, ``earlier_comparison``)."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from bertlab import stats
from bertlab.families import by_construction
from bertlab.report.counts import fold_scores, pseudovalues, scores_from_sums, stack_counts, stacked_folds
from bertlab.report.rows import cv_ratio, metric_value
from bertlab.report.runs import VariantRuns, constant_reason, same_counts


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
            if any(str(values.get(axis)) != level for axis, level in family.get("within", {}).items()):
                continue
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
    return bool(pairs) and all(same_counts(x, y) for x, y in pairs)


def same_test(runs: dict, pair: tuple, other: tuple) -> bool:
    """Whether comparisons ``pair`` and ``other`` (``(variant, baseline)`` keys) are one test: the two
    variants, and the two baselines, predict the same on every test document of the same seeds (on
    a corpus with one entity type, BTL's KNN-against-argmax comparison is ATL's)."""
    return all(sorted(r["seed"] for r in runs[x].rows) == sorted(r["seed"] for r in runs[y].rows)
               and identical_predictions(runs[x], runs[y]) for x, y in zip(pair, other))


def comparison_name(c: dict) -> str:
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
    tail = opts.get("tail_types")
    va = [metric_value(r, metric, tail) for r in a.rows]
    vb = [metric_value(r, metric, tail) for r in b.rows]
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

    document_level(a, b, pairs, metric, opts, out)
    return out


def document_level(a: VariantRuns, b: VariantRuns, pairs: list[tuple[int, int]], metric: str, opts: dict,
                   out: dict) -> None:
    """The document-level part of ``compare`` (another test set and other seeds), filled into its
    ``out``: the interval and test of record (``ci``, ``p_sd``, the crossed t's mean squares ``ms``,
    or the corrected resampled t for runs pooled over folds) and the permutation test over documents
    (``p_perm``); ``ci_note`` says why there is none (no prediction files, no shared seed, ...)."""
    if a.counts is None or b.counts is None:
        out["ci_note"] = "no prediction files"
        return
    if not pairs:
        out["ci_note"] = "no shared seed"
        return
    types = sorted({t for c in a.counts + b.counts for t in c["entities"]})
    try:
        xa, layout = stack_counts(a.counts, b.counts[0]["docs"], types, opts.get("tail_types"))
        xb, layout_b = stack_counts(b.counts, b.counts[0]["docs"], types, opts.get("tail_types"))
    except ValueError:
        out["ci_note"] = "scored on different test documents"
        return
    ga, gb = layout.split(xa[0].sum(0)), layout_b.split(xb[0].sum(0))
    if layout.tags != layout_b.tags or not (np.array_equal(ga[0][:, 2], gb[0][:, 2])
                                            and np.array_equal(ga[1][:, 1], gb[1][:, 1])):
        out["ci_note"] = "different gold tags"
        return
    D = xa.shape[1]
    if D < 2:
        out["ci_note"] = "fewer than 2 test documents"
        return
    xa, xb = xa[[i for i, _ in pairs]], xb[[j for _, j in pairs]]
    if a.cv:  # pooled over folds: the corrected resampled t over the per-(seed, fold) differences
        docs = b.counts[0]["docs"]
        fa = stacked_folds([a.counts[i] for i, _ in pairs], docs)
        if not np.array_equal(fa, stacked_folds([b.counts[j] for _, j in pairs], docs)):
            out["ci_note"] = "different cross-validation folds"
            return
        ratio = cv_ratio([a.rows[i] for i, _ in pairs] + [b.rows[j] for _, j in pairs])
        d = fold_scores(xa, fa, layout, metric) - fold_scores(xb, fa, layout, metric)
        cv = stats.corrected_resampled_t(d, ratio, estimate=out["diff"])
        out.update(ci=[float(cv.ci.low), float(cv.ci.high)], p_sd=float(cv.pvalue), df=float(cv.df),
                   se=float(cv.se), seeds_crossed=len(pairs), docs=D, test="cv",
                   cv={"variance": cv.variance, "folds": int(d.shape[1]), "ratio": ratio,
                       # how many per-(seed, fold) differences lie above and below 0, of how many
                       "signs": [int((d > 0).sum()), int((d < 0).sum()), int(d.size)]})
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
                    c.update(earlier_comparison(earlier, c, runs[key], runs[base], opts.get("tail_types")) or {})
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
                    twin = next((t for t, _ in tested if comparison_name(t) == c["same_as"]), None)
                if twin is None:
                    c.pop("same_as", None)
                    tested.append((c, pair))
                else:
                    c["same_as"] = comparison_name(twin)
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


def earlier_metric(earlier: dict, label: str, v: VariantRuns, metric: str, tail=None) -> dict | None:
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
    now = {r["run_id"]: metric_value(r, metric, tail) for r in v.rows}
    if not all(rid in by_run and _same(by_run[rid], x) for rid, x in now.items()):
        return None
    if set(by_run) != set(now) and not (v.single and all(_same(x, next(iter(now.values()))) for x in by_run.values())):
        return None
    return stored


def earlier_comparison(earlier: dict, c: dict, a: VariantRuns, b: VariantRuns, tail=None) -> dict | None:
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
                and earlier_metric(earlier, c["variant"], a, c["metric"], tail) is not None
                and earlier_metric(earlier, c["baseline"], b, c["metric"], tail) is not None):
            keep = ("ci", "ci_note", "p_sd", "df", "se", "seeds_crossed", "docs", "ms", "p_perm", "perm_exact",
                    "identical", "same_as")
            return {**{k: old[k] for k in keep if k in old}, "p_perm": float(old["p_perm"]),
                    "p_sd": float(old.get("p_sd", math.nan)), "document_level_from": "earlier build"}
    return None
