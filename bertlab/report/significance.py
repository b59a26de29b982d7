"""The significance section in words: the table of each comparison family and one sentence per
comparison saying what it supports and what it doesn't (``sentence``), and the target warning on
top of a study that declares the effect it is about. Renders ``report.json``'s ``comparisons``,
``families`` and ``target``; computes nothing."""
from __future__ import annotations

import math

from bertlab.report.comparisons import IDENTICAL, IDENTICAL_EARLIER
from bertlab.report.format import fmt_number as _f
from bertlab.report.format import fmt_p as _p
from bertlab.report.format import md_table as _table
from bertlab.report.rows import METRICS, metric_name


def significance_section(data: dict, opts: dict) -> list[str]:
    """The "Significance" section from report.json's ``families`` and ``comparisons``."""
    md = ["## Significance: differences with intervals, by comparison family", ""]
    families = data.get("families")
    if families is None:
        return md + ["The study declares no comparison (`[report.compare]`) and names no baseline "
                     "(`[study] baseline`), so nothing is tested.", ""]
    comps = data["comparisons"]
    if not comps:
        return md + ["No variant has a baseline run to pair with yet.", ""]
    alpha = float(opts["alpha"])
    record = ("- **95% CI** and **p (CV t)**: the test of record for a cross-validated study, the corrected "
              "resampled t (`stats.corrected_resampled_t`; Nadeau & Bengio 2003, Bouckaert & Frank 2004) over "
              "the per-(seed, fold) differences, seeds paired: t = Δ / √((1/J + n_test/n_train)·s²), df = J − 1, "
              "J = seeds × folds, centred on the pooled Δ. The n_test/n_train term accounts for the folds' "
              "shared training documents. It answers *would the difference hold with other seeds and other "
              "training and test documents from this corpus?* **p Holm** corrects it within one family and one "
              "metric; the sentences below rest on it.\n- **folds +/−**: how many of the J per-(seed, fold) "
              "differences are above and below 0: whether the difference points the same way on most "
              "training and test documents or comes from a few folds. A count, not a test." if opts.get("cv") else None)
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
        md += family_section(family, [c for c in comps if c["family"] == family["name"]], opts)
    return md


def family_section(family: dict, mine: list[dict], opts: dict) -> list[str]:
    """One comparison family: what it compares, its Holm correction, the table of its comparisons
    ``mine`` and a sentence per comparison."""
    alpha = float(opts["alpha"])
    if family["vary"] is None:
        what = ("every variant against the study baseline (" + ", ".join(
            f"{k}={v}" for k, v in family["baseline"].items()) + ")")
    elif family.get("pairs"):
        what = (", ".join(f"`{a}` against `{b}`" for a, b in family["pairs"])
                + f" (levels of `{family['vary']}`), within every combination of the other factors")
    else:
        what = (f"each level of `{family['vary']}` against `{family['baseline']}`, within every "
                "combination of the other factors")
    if family.get("within"):
        what = what.replace("within every combination of the other factors", "with " + ", ".join(
            f"`{axis}` = `{level}`" for axis, level in family["within"].items()) + " (the other factors: every combination)")
    md = [f"### Family `{family['name']}`: {what}", ""]
    if not mine:
        return md + ["No variant has a baseline run to pair with yet.", ""]
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
        row = [c["variant"], c["baseline"], metric_name(c["metric"], opts), f"{c['diff']:+.4f}", ci, p_sd, holm_cell]
        if opts.get("cv"):
            signs = (c.get("cv") or {}).get("signs")
            row.append(f"{signs[0]} / {signs[1]} of {signs[2]}" if signs and not c["excluded"] else "–")
        body.append(row + [p_docs, _f(c["t"], 3), _p(c["p_t"]), _f(c["d"], 2), seeds, _f(c["mdd"], 4)])
    md += _table(["variant", "baseline", "metric", "Δ", "95% CI", "p (CV t)" if opts.get("cv") else "p (seeds × docs)", "p Holm"]
                 + (["folds +/−"] if opts.get("cv") else [])
                 + ["p (docs, runs fixed)", "t (seeds)", "p (t)", "d", "seeds", "MDD"], body)
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


def target_warning(data: dict, opts: dict, study_name: str) -> list[str]:
    """The line on top of a study that declares ``[report] target_difference``: whether its design
    detects that difference in its primary metric (the MDD of its test of record, 80% power)."""
    if "target" not in data:
        return []
    target, metric, mdd = data["target"]["difference"], data["target"]["metric"], data["target"]["mdd"]
    if mdd is None:
        return [f"The study's target difference is {target:g} in {METRICS[metric]}; none of its comparisons has "
                "been tested yet, so the smallest difference this design detects is not known.", ""]
    if mdd > target:
        return [f"**Warning: this design cannot detect the effect it is about.** The smallest difference its test "
                f"of record detects with 80% power in {METRICS[metric]} is {mdd:.4f}, above the study's target "
                f"of {target:g} (`[report] target_difference`): a non-significant result here says nothing about "
                f"an effect of that size. `bertlab plan {study_name}` says how many seeds (and folds) would.", ""]
    return [f"The design detects a difference of {mdd:.4f} in {METRICS[metric]} with 80% power, at or below "
            f"the study's target of {target:g} (`[report] target_difference`).", ""]
