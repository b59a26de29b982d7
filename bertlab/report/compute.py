"""The numbers of a study's report, computed once: ``compute_report(study_dir)`` reads the study
folder (study.json, results.jsonl, the runs' prediction files and, for a committed folder, the
earlier build's report.json) and returns a ``Report``: ``json``, what ``report.json`` holds, and
``sections``, the numbers behind every table and figure that report.json does not keep. It writes
nothing; ``bertlab.report.markdown`` and ``bertlab.report.figures`` render it, and
``bertlab.report.build`` writes the files.

This module computes the header, the main table with its intervals, calibration, the comparisons
and the target check; ``bertlab.report.classes`` the per-class tables, ``bertlab.report.training``
the costs, curves and gradient flow, ``bertlab.report.anova`` the ANOVA tables."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertlab.families import comparison_families, construction_rules
from bertlab.report import classes, training
from bertlab.report.anova import anova_table
from bertlab.report.comparisons import STATISTICS, comparisons, earlier_build, earlier_metric
from bertlab.report.counts import cv_variant_interval, stack_counts, stacked_folds, variant_interval
from bertlab.report.rows import (DEFAULTS, METRICS, cv_ratio, group_variants, load_study_results, mean_std,
                                 median, metric_value, primaries, table_metrics, variant_label)
from bertlab.report.runs import pool_folds, variant_runs


@dataclass
class Report:
    """Everything a study's report shows, computed from its folder (``compute_report``).

    ``json`` is ``report.json`` as written (keys in the order written): the numbers another build
    or tool reads. ``sections`` maps a section name to the numbers its table or figure shows that
    ``json`` does not keep (e.g. the wall-time table, the learning curves); a section that does not
    apply to the study is absent. ``labels`` maps a variant key to its name in tables."""

    json: dict
    study: dict
    opts: dict
    short: dict
    rebuild: str  # what to type after ``bertlab report`` to rebuild this folder
    runs_finished: int
    variant_count: int
    labels: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)


def report_options(study: dict) -> dict:
    """The study's ``[report]`` options over ``DEFAULTS``; with a declared ``primary``, that metric
    is tested first, then any ``co_primary`` ones, and the others are secondary."""
    opts = {**DEFAULTS, **study.get("report", {})}
    if opts.get("primary"):
        first = primaries(opts)
        opts["metrics"] = first + [m for m in opts["metrics"] if m not in first]
    return opts


def compute_report(study_dir: str | os.PathLike) -> Report:
    """Every number of ``study_dir``'s report (see ``Report``); reads the folder, writes nothing.

    The sections are computed in the order report.json records them (that order is part of the
    file): cross-validation, the main table, bands, per-class intervals, calibration, scoring
    conventions, comparisons, the target check, costs, learning curves, the epoch budget, the
    optional sections (confusion, type shares, ANOVA, gradient flow), the figures' points."""
    study_dir = Path(study_dir)
    study, rows = load_study_results(study_dir)
    opts = report_options(study)
    short = dict(study.get("short_names", {}))
    short["decode"] = "decode"
    axes = list(study.get("axes", {}))
    variants = run_variants = every_run = group_variants(rows, axes)
    pooled_counts, left_out = None, []
    if study.get("folds"):  # one run per (variant, seed), pooled over its folds
        opts["cv"] = dict(study["folds"])
        pooled, pooled_counts, left_out = pool_folds(study_dir, rows, axes, int(study["folds"]["k"]))
        variants = group_variants(pooled, axes)
        run_variants = {k: v for k, v in run_variants.items() if k in variants}
    labels = {k: variant_label(k, short) for k in every_run}
    data: dict = {"study": study["name"], "scale": study["scale"], "statistics": STATISTICS, "variants": {},
                  "comparisons": []}
    report = Report(data, study, opts, short, _rebuild_argument(study_dir), len({r["run_id"] for r in rows}),
                    len(variants), labels)
    if not rows:
        return report
    s = report.sections
    runs = {key: variant_runs(study_dir, group, pooled_counts) for key, group in variants.items()}
    earlier = earlier_build(study_dir)  # the report.json this build replaces
    if opts.get("cv"):
        cv = study["folds"]
        data["cv"] = {"folds": cv["k"], "fold_seed": cv["fold_seed"], "left_out": left_out}
    s["environment"] = environment(rows)
    data["variants"], s["main"] = main_table(variants, runs, labels, opts, earlier)
    bands, s["bands"] = classes.band_table(variants, labels, opts["bands"])
    for label, entry in bands.items():
        data["variants"][label]["bands"] = entry
    s["per_class"] = classes.per_class_tables(variants, runs, labels, int(opts["min_support"]))
    for label, table in s["per_class"].items():
        data["variants"][label]["per_class"] = table
    s["calibration"] = calibration(variants, labels)
    for label, entry in s["calibration"]["variants"].items():
        data["variants"][label]["ece"] = entry["ece"]
    conventions = classes.convention_table(variants, runs, labels)
    if conventions:
        data["conventions"] = conventions
    families = comparison_families(study, opts)
    if families:
        data["comparisons"] = comparisons(variants, runs, labels, families, {
            **opts, "metrics": list(opts["metrics"]), "construction": construction_rules(study, opts)}, earlier)
        data["families"] = families
    if opts.get("target_difference") is not None:
        data["target"] = target(opts, data["comparisons"])
    s["compute"] = training.compute_costs(run_variants, labels)
    for label, values in s["compute"]["variants"].items():
        data["variants"][label]["compute"] = values
    s["time_split"] = training.time_split(run_variants, short)
    if s["time_split"]:
        data["time_split"] = s["time_split"]["json"]
    # dev curves need no pooling: every finished run draws its own, a fold whose seed is unfinished too
    s["curves"] = training.learning_curves(every_run, labels, opts)
    if s["curves"] and left_out:
        s["curves"]["unpooled"] = len(left_out)
    _requested_sections(report, study_dir, rows, variants, run_variants)
    s["figures"] = figure_points(variants)
    return report


def _requested_sections(report: Report, study_dir: Path, rows: list[dict], variants: dict, run_variants: dict
                        ) -> None:
    """The sections a study asks for, into ``report``: the epoch budget (``[report] plateau``),
    confusion matrices, type shares, ANOVA tables (``[report]`` options) and the gradient flow
    (``[study] gradflow``)."""
    data, s, opts, labels, short = report.json, report.sections, report.opts, report.labels, report.short
    if opts.get("plateau"):
        s["budget"] = training.budget(run_variants, short, opts["plateau"], training.curve_key(opts))
        if s["budget"]:
            data["budget"] = s["budget"]["json"]
    if opts.get("confusion"):
        s["confusion"] = classes.confusion(study_dir, run_variants, labels)
    if opts.get("type_shares"):
        s["type_shares"] = classes.type_share_table(study_dir, run_variants, labels, opts["bands"])
        if s["type_shares"]["variants"]:
            data["type_shares"] = s["type_shares"]["variants"]
        s["type_probabilities"] = classes.type_probability_table(run_variants, labels, opts["bands"])
        if s["type_probabilities"]:
            data["type_probabilities"] = s["type_probabilities"]
    if opts.get("anova"):
        s["anova"] = [anova_table([r for g in variants.values() for r in g] if opts.get("cv") else rows, spec)
                      for spec in (opts["anova"] if isinstance(opts["anova"], list) else [opts["anova"]])]
        tables = [a["json"] for a in s["anova"] if a.get("json")]
        if tables:
            data["anova"] = tables
    if report.study.get("gradflow"):
        s["gradflow"] = training.gradflow(study_dir, rows, report.study.get("baseline") or {}, short)
        if s["gradflow"]:
            data["gradflow"] = s["gradflow"]["json"]


def _rebuild_argument(study_dir: Path) -> str:
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


def environment(rows: list[dict]) -> dict:
    """The environments the runs ran in (each once, sorted), and per run (once, not per decode) its
    wall and training seconds, epochs and how it came to be finished; the total wall seconds and the
    studies reused runs were copied from."""
    envs = [json.loads(e) for e in sorted({json.dumps(r.get("env", {}), sort_keys=True) for r in rows})]
    runs: dict = {}
    for r in rows:
        runs.setdefault(r["run_id"], r)
    return {"envs": envs,
            "runs": [{"run_id": rid, "wall_seconds": r.get("wall_seconds"), "train_seconds": r.get("train_seconds"),
                      "epochs": r.get("epochs"), "resumed": r.get("resumed"), "reused_from": r.get("reused_from")}
                     for rid, r in runs.items()],
            "total_wall_seconds": sum(r.get("wall_seconds") or 0 for r in runs.values()),
            "reused_from": sorted({str(Path(r["reused_from"]).parent) for r in runs.values() if r.get("reused_from")})}


def main_table(variants: dict, runs: dict, labels: dict, opts: dict, earlier: dict | None = None
               ) -> tuple[dict, dict]:
    """``(report.json's variants, the table's other numbers)``: per variant its seeds, runs and, per
    metric, the mean ± std over seeds and the 95% interval of the mean over seeds and documents
    (``variant_interval``; ``cv_variant_interval`` for a cross-validated study), or, without
    prediction files, the interval the earlier build stored for the same values (``ci_from``).
    The other numbers: the sizes of the fixed class sets, how many runs a single run stands for,
    and the variants whose earlier interval was of other values (``stale``)."""
    n_classes = sorted({sum(1 for v in r.get("per_type", {}).values() if v.get("support", 0) > 0)
                        for g in variants.values() for r in g})
    entries, seeds_run, stale = {}, {}, []
    for key in variants:
        v = runs[key]
        entry = {"label": labels[key], "seeds": [r["seed"] for r in v.rows], "runs": [r["run_id"] for r in v.rows],
                 "single": v.single}
        x = layout = None
        tail = opts.get("tail_types")
        if v.counts is not None:
            x, layout = stack_counts(v.counts, tail=tail)
        for m in table_metrics(opts):
            values = [metric_value(r, m, tail) for r in v.rows]
            mean, std = mean_std(values)
            entry[m] = {"mean": mean, "std": std, "values": values}
            if x is None:
                stored = earlier_metric(earlier or {}, labels[key], v, m, tail)
                if stored is None or "ci" not in stored:
                    prior = (((earlier or {}).get("variants") or {}).get(labels[key]) or {}).get(m)
                    if isinstance(prior, dict) and prior.get("ci"):  # an interval, but of other values
                        stale.append(f"{labels[key]}, {METRICS[m]}")
                    continue
                # no prediction files (a committed folder): the earlier build's interval of the same values
                entry[m].update({k: stored[k] for k in ("ci", "ci_note", "point") if k in stored},
                                ci_from="earlier build")
                continue
            if v.cv:
                theta, lo, hi, why = cv_variant_interval(x, stacked_folds(v.counts, v.counts[0]["docs"]),
                                                         cv_ratio(v.rows), layout, m)
            else:
                theta, lo, hi, why = variant_interval(x, layout, m)
            entry[m]["point"] = theta
            if why is None:
                entry[m]["ci"] = [lo, hi]
            else:
                entry[m]["ci"], entry[m]["ci_note"] = None, why
        entries[labels[key]] = entry
        seeds_run[labels[key]] = v.seeds_run
    return entries, {"n_classes": n_classes, "seeds_run": seeds_run, "stale": stale}


def calibration(variants: dict, labels: dict) -> dict:
    """The softmax's expected calibration error on test per variant whose every run recorded one
    (seed mean ± std, and the test words), and per trained model (the label without its decode: its
    decodes repeat it) the reliability diagram's points, bins pooled over seeds: ``{"variants":
    {label: {"ece", "words"}}, "models": {model: (confidence [bins], accuracy [bins])}}``."""
    rows = {key: [r["calibration"] for r in group if r.get("calibration")] for key, group in variants.items()}
    rows = {key: cal for key, cal in rows.items() if cal and len(cal) == len(variants[key])}
    out: dict = {"variants": {}, "models": {}}
    cals = {}
    for key, cal in rows.items():
        mean, std = mean_std(c["ece"] for c in cal)
        out["variants"][labels[key]] = {"ece": {"mean": mean, "std": std, "values": [c["ece"] for c in cal]},
                                        "words": cal[0]["words"]}
        cals.setdefault(labels[key].rsplit(", decode=", 1)[0], cal)  # one curve per trained model
    for model, cal in cals.items():
        counts = np.array([[b["count"] for b in c["bins"]] for c in cal], float)  # [seeds, bins]
        conf = np.array([[b["confidence"] or 0.0 for b in c["bins"]] for c in cal], float)  # empty bins: None
        acc = np.array([[b["accuracy"] or 0.0 for b in c["bins"]] for c in cal], float)
        n = counts.sum(0)
        keep = n > 0
        out["models"][model] = ((counts * conf).sum(0)[keep] / n[keep], (counts * acc).sum(0)[keep] / n[keep])
    return out


def target(opts: dict, comps: list[dict]) -> dict:
    """For a study that declares ``[report] target_difference``: the largest detectable difference
    (MDD, 80% power) of the tested comparisons in its primary metric (``None`` when none has one),
    which the report sets against the target."""
    metric = opts.get("primary") or opts["metrics"][0]
    mdds = [c["mdd"] for c in comps if c["metric"] == metric and not c["excluded"] and not math.isnan(c["mdd"])]
    return {"difference": opts["target_difference"], "metric": metric, "mdd": max(mdds) if mdds else None}


def figure_points(variants: dict) -> dict:
    """The points of the two summary figures: per (variant, class with test support) its training
    mentions (0 drawn at 0.5 on the log axis) and seed-mean test F1, ``{"frequency": {"keys",
    "mentions", "f1"}}``; per variant its median training seconds and test micro F1 mean ± std,
    ``{"time": {key: (seconds, mean, std)}}``."""
    xs, ys, keys = [], [], []
    time = {}
    for key, group in variants.items():
        mentions = group[0].get("train_mentions", {})
        types = sorted({t for r in group for t, v in r["per_type"].items() if v["support"] > 0})
        xs += [max(mentions.get(t, 0), 0.5) for t in types]
        ys += [float(np.mean([r["per_type"].get(t, {"f1": 0.0})["f1"] for r in group])) for t in types]
        keys += [key] * len(types)
    for key, group in variants.items():
        time[key] = (median(r.get("train_seconds") for r in group),  # a cost, as in the compute table
                     *mean_std(r.get("f1_micro") for r in group))
    return {"variants": list(variants), "frequency": {"keys": keys, "mentions": xs, "f1": ys}, "time": time}
