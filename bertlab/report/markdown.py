"""``report.md`` from a computed ``Report`` (``bertlab.report.compute``): one function per section,
each a pure function of the numbers it prints. ``render(report, plotting)`` joins them; with
``plotting`` (figures on and matplotlib installed) the text links the figures that
``bertlab.report.figures`` draws."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bertlab.report.format import fmt_number as _f
from bertlab.report.format import md_table as _table
from bertlab.report.rows import METRICS, band_of, format_value, metric_name, table_metrics, variant_label
from bertlab.report.significance import significance_section, target_warning
from bertlab.report.training import TIME_PARTS


def render(report, plotting: bool) -> str:
    """The text of ``report.md``: the sections in their order, those that do not apply left out."""
    data, opts, s = report.json, report.opts, report.sections
    md = header(report)
    if not s:  # no finished run
        return "\n".join(md + ["No finished runs yet."]).rstrip() + "\n"
    md[2:2] = target_warning(data, opts, report.study["name"])  # at the top, under the title
    if "cv" in data:
        md += cv_section(data["cv"])
    md += environment_section(s["environment"])
    if not data["variants"]:  # cross-validated, and no seed of any variant has all its folds here
        md += [f"No variant is pooled: a variant's test tables, tests and figures need every fold of one of its "
               f"seeds, and none has all {data['cv']['folds']} here.", ""]
        return "\n".join(md + learning_curve_section(s["curves"], opts, plotting)).rstrip() + "\n"
    md += main_section(data["variants"], s["main"], opts)
    md += band_section(data["variants"], s["bands"], opts["bands"])
    md += per_class_section(s["per_class"], int(opts["min_support"]))
    md += calibration_section(s["calibration"], plotting)
    md += conventions_section(data.get("conventions"))
    md += significance_section(data, opts)
    md += compute_section(s["compute"])
    md += time_split_section(s["time_split"])
    md += learning_curve_section(s["curves"], opts, plotting)
    if "budget" in s:
        md += budget_section(s["budget"], report.short)
    if "confusion" in s:
        md += confusion_section(s["confusion"])
    if "type_shares" in s:
        md += type_share_section(s["type_shares"]) + type_probability_section(s["type_probabilities"],
                                                                               opts["bands"])
    for table in s.get("anova", []):
        md += anova_section(table, report.short)
    if "gradflow" in s:
        md += gradflow_section(s["gradflow"])
    md += figures_section(opts, plotting, report.study.get("scale", "default"))
    return "\n".join(md).rstrip() + "\n"


def header(report) -> list[str]:
    """The title, the study's description, how it was made and how to rebuild it, the baseline."""
    study, short = report.study, report.short
    md = [f"# Study `{study['name']}` (scale `{study['scale']}`)", ""]
    if study.get("description"):
        md += [study["description"].strip(), ""]
    # every distinct command that trained in the folder, with its --set / --only (bertlab.study)
    made_by = ", then ".join(f"`{c}`" for c in study.get("commands", [])) or (
        f"`bertlab experiment {study['name']} --scale {study['scale']}`")
    md += [f"Made by {made_by} "
           f"(study file `{study.get('source', '')}`); rebuild with `bertlab report {report.rebuild}`. "
           f"{report.runs_finished} of {len(study.get('runs', []))} runs finished; {report.variant_count} variants "
           f"(decode counted as an axis: every run is scored with each of {', '.join(study.get('decodes', []))}).",
           ""]
    if study.get("baseline"):
        md += ["Baseline: " + ", ".join(f"{short.get(k, k)}={v}" for k, v in study["baseline"].items()), ""]
    return md


def cv_section(cv: dict) -> list[str]:
    """What a cross-validated study's report pools, in one paragraph."""
    md = ["## Cross-validation", "",
          f"{cv['folds']}-fold document cross-validation (`[study] folds = {cv['folds']}`): every document of the "
          f"corpus is in the test fold of one run per seed, and seed s deals the documents into folds with its own "
          f"partition (seed {cv['fold_seed']} + s, stratified by entity type: "
          "`bertlab.datasets.cross_validation_split`); each fold's dev set is a stratified tenth of the other "
          "documents, the rest trains. A variant's seed is its folds' test predictions pooled, scored once over "
          "all documents; intervals and tests are the corrected resampled t over the per-(seed, fold) scores "
          "(the seeds × documents t on pooled predictions ignores that the fold models share training data, "
          "and undercovers in simulation: docs/evaluation.md).", ""]
    left_out = cv["left_out"]
    if left_out:
        md += [f"Not pooled yet ({len(left_out)} run(s) of a seed whose folds have not all finished): "
               + ", ".join(f"`{r}`" for r in left_out[:6]) + (", ..." if len(left_out) > 6 else "") + ".", ""]
    return md


def environment_section(env: dict) -> list[str]:
    """The environments the runs ran in and a row per run: wall and training seconds, epochs, origin."""
    md = ["## Environment and wall time", ""]
    for e in env["envs"]:
        md.append("- " + ", ".join(f"{k} {v}" for k, v in e.items()))
    md.append("")
    body = [[f"`{r['run_id']}`", _f(r["wall_seconds"], 1), _f(r["train_seconds"], 1), str(r["epochs"]),
             _run_origin(r)] for r in env["runs"]]
    total = env["total_wall_seconds"]
    md += _table(["run", "wall s", "train s", "epochs", "resumed"], body)
    md += [f"Total wall time: {total:.1f} s ({total / 60:.1f} min) over {len(env['runs'])} runs.", ""]
    if env["reused_from"]:
        md += [f"Runs marked *reused* were not trained here: a finished run of the same config (every key "
               f"that changes a result) was copied from {', '.join(f'`{f}`' for f in env['reused_from'])} "
               f"(`bertlab experiment --reuse`); their times are those of the original run.", ""]
    return md


def _run_origin(run: dict) -> str:
    """The wall-time table's last column: how the run came to be finished."""
    if run.get("reused_from"):
        return f"reused (`{Path(run['reused_from']).parent.name}/{Path(run['reused_from']).name}`)"
    return "yes" if run.get("resumed") else "no"


def main_section(variants: dict, main: dict, opts: dict) -> list[str]:
    """The main table: per variant and metric the seed mean ± std and the 95% interval (report.json's
    ``variants``), footnotes for the missing, earlier-build and stale intervals."""
    interval = ("95% CI: of the mean over seeds *and* test documents (`stats.crossed_t` on per-document "
                "jackknife pseudo-values: two-way random effects, seeds × documents, Satterthwaite df; for a "
                "single run, documents only)" if not opts.get("cv") else
                "95% CI: the corrected resampled t over the per-(seed, fold) scores (below)")
    md = ["## Main results (test set)", "",
          f"Mean ± std over seeds (std with ddof=1); {interval}. Entity scores are strict IOB2 "
          "(seqeval's strict mode). Macro F1 and "
          "unweighted accuracy average over a **fixed class set**, the classes with a gold mention in "
          f"the test set ({'/'.join(map(str, main['n_classes']))} entity types; seqeval's macro F1, `f1_macro` in "
          "results.jsonl, also averages types that are only predicted); leaving out every document of a "
          "class, that class keeps its full-test-set score. A model without random "
          "state is one run (`1 (deterministic)`).", ""]
    if opts.get("tail_types"):
        md += [f"Tail F1 (`f1_tail`) is the macro F1 over the tail class set the study declared before its runs "
               f"(`[report] tail_types`, those with test support): {', '.join(opts['tail_types'])}.", ""]
    if opts.get("cv"):
        md += [f"Cross-validated: each row pools a seed's {opts['cv']['k']} test folds, so its scores are over "
               "every document of the corpus; std is over seeds of the pooled scores, and the 95% CI is the "
               "corrected resampled t over the per-(seed, fold) scores (`stats.corrected_resampled_t`, "
               "Nadeau & Bengio 2003), centred on the pooled mean: it covers other seeds and other training "
               "and test documents (docs/evaluation.md, \"Cross-validated studies\").", ""]
    body, missing, kept = [], [], 0
    for label, entry in variants.items():
        seeds = str(len(entry["seeds"]))
        if entry["single"] == "deterministic":
            seeds = "1 (deterministic)"
        elif entry["single"]:
            seeds = f"1 ({main['seeds_run'][label]} identical runs)"
        cells = [label, seeds]
        for m in table_metrics(opts):
            e = entry[m]
            cells.append(f"{_f(e['mean'])} ± {_f(e['std'])}")
            if "ci" not in e:
                cells.append("n/a")
            elif e.get("ci_from"):
                kept += 1
                if e["ci"] is not None:
                    cells.append(f"[{_f(e['ci'][0])}, {_f(e['ci'][1])}]²")
                else:
                    cells.append("none¹²")
                    missing.append(f"{label}, {METRICS[m]}: {e.get('ci_note') or 'unknown'}")
            elif e["ci"] is not None:
                cells.append(f"[{_f(e['ci'][0])}, {_f(e['ci'][1])}]")
            else:
                cells.append("none¹")
                missing.append(f"{label}, {METRICS[m]}: {e['ci_note']}")
        body.append(cells)
    header = ["variant", "seeds"]
    for m in table_metrics(opts):
        header += [metric_name(m, opts), "95% CI"]
    md += _table(header, body)
    if missing:
        md += ["¹ No sound interval, so none is printed:", ""] + [f"- {m}" for m in missing] + [""]
    if kept:
        md += ["² From the earlier build of this folder (its report.json): the runs' prediction files are not "
               f"here, so {kept} interval(s) could not be recomputed; that build scored the same runs with the "
               "same values, and its intervals are kept.", ""]
    if main["stale"]:
        md += ["n/a: no prediction files here. The earlier build's intervals of " + "; ".join(main["stale"]) + " were of "
               "other values or computed otherwise (other runs, a metric or a statistic defined differently then), so they "
               "are not kept.", ""]
    return md


def band_section(variants: dict, detail: dict, bands: dict) -> list[str]:
    """F1 by frequency band per variant (report.json's ``bands``), then, for at most 12 variants, the
    per-class F1 table with each class's training mentions and band."""
    md = ["## Per-class F1 by frequency band", "",
          f"Bands by training mentions: head ≥ {bands['head']}, tail < {bands['tail']}, middle between "
          "(`[report] bands`). A band's F1 is the mean over its classes of the class F1 (mean over "
          "seeds); only classes with test support count.", ""]
    labels = list(detail["f1"])
    body = [[label] + [f"{_f(variants[label]['bands'][b]['f1'])} ({variants[label]['bands'][b]['classes']})"
                       for b in ("head", "middle", "tail")] for label in labels]
    md += _table(["variant", "head F1 (classes)", "middle F1 (classes)", "tail F1 (classes)"], body)
    mentions = detail["mentions"]
    if len(labels) <= 12:
        md += ["<details><summary>Per-class F1 (mean over seeds)</summary>", ""]
        body = [[t, str(mentions.get(t, 0)), band_of(mentions.get(t, 0), bands)]
                + [_f(detail["f1"][label].get(t, math.nan), 3) for label in labels] for t in detail["types"]]
        md += _table(["class", "train mentions", "band"] + [f"({i + 1})" for i in range(len(labels))], body)
        md += ["Columns: " + "; ".join(f"({i + 1}) {label}" for i, label in enumerate(labels)), "", "</details>", ""]
    return md


def per_class_section(tables: dict, k: int) -> list[str]:
    """Per-class precision, recall, F1 and its interval per variant (report.json's ``per_class``)."""
    if not tables:
        return []
    md = ["## Per-class scores with intervals (test set)", "",
          f"Precision, recall and F1 per entity type (seed means; strict IOB2), the 95% interval of F1 over "
          f"seeds and documents (`stats.crossed_t` on the class's per-document pseudo-values), and the "
          f"class's test mentions; a class with fewer than {k} (`[report] min_support`) is flagged †: its "
          f"F1 rests on a handful of mentions. Macro F1 over the classes with at least {k} test mentions, "
          f"beside the macro F1 over every class with support (main table):", ""]
    body = []
    for label, t in tables.items():
        m = t["macro_supported"]
        ci = f"[{_f(m['ci'][0])}, {_f(m['ci'][1])}]" if m["ci"] else "none"
        body.append([label, str(m["classes"]), _f(m["f1"]), ci])
    md += _table(["variant", f"classes with ≥ {k} mentions", "macro F1 over them", "95% CI"], body)
    for label, t in tables.items():
        md += [f"<details><summary>{label}: per class</summary>", ""]
        rows = sorted(t["classes"].items(), key=lambda kv: (-kv[1]["support"], kv[0]))
        md += _table(["class", "test mentions", "precision", "recall", "F1", "95% CI"],
                     [[name + (" †" if r["few"] else ""), str(r["support"]), _f(r["precision"]), _f(r["recall"]),
                       _f(r["f1"]), f"[{_f(r['ci'][0])}, {_f(r['ci'][1])}]" if r["ci"] else "none"]
                      for name, r in rows])
        md += ["</details>", ""]
    return md


def calibration_section(calibration: dict, plotting: bool) -> list[str]:
    """The expected calibration error per variant and, plotting, the reliability diagram."""
    if not calibration["variants"]:
        return []
    md = ["## Calibration of the softmax (test set)", "",
          "Expected calibration error over the test words: each word's largest softmax probability "
          "(its confidence) against whether that label is the gold one, in 15 equal-width bins, "
          "ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b| (`bertlab.inference.calibration_error`). "
          "A property of the trained model before any decoder: the decodes of one model repeat it. "
          "Mean ± std over seeds.", ""]
    body = [[label, f"{_f(v['ece']['mean'])} ± {_f(v['ece']['std'])}", str(v["words"])]
            for label, v in calibration["variants"].items()]
    md += _table(["variant", "ECE", "test words"], body)
    if not plotting:
        return md
    return md + ["![reliability diagram](figures/reliability.png)", ""]


def conventions_section(rows: dict | None) -> list[str]:
    """Every scoring convention side by side (report.json's ``conventions``), with the invalid
    transitions each decoder emits: strict IOB2 drops an entity that starts with a stray ``I-``."""
    if not rows:
        return []
    body = [[label, _f(mean["strict"]), _f(mean["conlleval"]), _f(mean["lenient"]), _f(mean["token_accuracy"]),
             f"{mean['invalid']:.0f}", f"{mean['invalid_share']:.1%}"] for label, mean in rows.items()]
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


def compute_section(costs: dict) -> list[str]:
    """The compute-cost table (report.json's ``compute`` per variant)."""
    md = ["## Compute cost", "",
          "Costs are medians over seeds, F1 the mean: a run that shared its cores with other work runs "
          "slower without computing anything more, which moves a mean but not a median. Train seconds "
          "are the loop's own timing (data loading and final evaluation excluded); inference tokens/s "
          "counts words of the test split per second of scoring with that decode.", ""]
    shares = costs["shares"]
    if shares:
        md += ["CPU share: the training loop's process CPU seconds over its wall seconds × threads, the lowest "
               "of the variant's runs. About 1 (a little less with several threads) when a run had its cores to "
               "itself; well below, e.g. 0.5, when other work shared them, and then its seconds overstate its "
               "cost (runs trained before it was measured have none: '–', or how many runs have one).", ""]
    body = []
    for label, vals in costs["variants"].items():
        known, runs = costs["known"][label], costs["runs"][label]
        params = vals["params"]
        share = _f(vals["cpu_share_min"], 2) + (f" ({known} of {runs} runs)" if 0 < known < runs else "")
        body.append([label, "–" if math.isnan(params) else f"{params / 1e6:.2f} M",
                     _f(vals["seconds_per_epoch"], 1), _f(vals["train_seconds"], 1),
                     _f(vals["inference_tokens_per_s"], 0), _f(vals["f1_micro"])] + ([share] if shares else []))
    md += _table(["variant", "parameters", "train s / epoch", "train s", "inference tokens/s", "micro F1"]
                 + (["CPU share (lowest)"] if shares else []), body)
    return md


def time_split_section(split: dict | None) -> list[str]:
    """Where the time went (report.json's ``time_split``): per trained variant and for the study, the
    seconds of each part and its share, and the largest part besides training."""
    if not split:
        return []
    entry, zero = split["json"], split["zero"]
    parts = entry["parts"]
    name = {p: TIME_PARTS.get(p, p.replace("_", " ")) for p in parts}

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
    body = [[label, str(v["runs"])] + cells(np.array([v["mean"][p] for p in parts], dtype=float))
            for label, v in entry["variants"].items()]
    total = np.array([entry["total"][p] for p in parts], dtype=float)
    body.append(["study total (sum over runs)", str(split["runs"])] + cells(total))
    md += _table(["trained variant", "runs"] + [f"{name[p]} s" for p in parts] + ["timed total s"], body)
    if "largest_non_training" in entry:
        i = parts.index(entry["largest_non_training"])
        hours = f"{total[i] / 3600:.2f} h" if total[i] >= 3600 else f"{total[i] / 60:.1f} min"
        md += [f"Besides training, the study's seconds go mostly to **{name[parts[i]]}**: {total[i]:.1f} s "
               f"({hours}), {total[i] / total.sum():.0%} of the timed total.", ""]
    return md


def learning_curve_section(curves: dict | None, opts: dict, plotting: bool) -> list[str]:
    """Dev scores per epoch per variant (mean over seeds), the best epoch per seed, and the figure."""
    if not curves:
        return []
    key_ = curves["key"]
    name = "micro F1" if key_ == "dev_f1_micro" else metric_name(opts["primary"], opts)
    # cross-validated: one run per (seed, fold), each with its own dev documents
    unit = "run" if opts.get("cv") else "seed"
    md = ["## Learning curves (dev)", "",
          f"Dev {name} after each epoch (mean over "
          + ("the runs, one per seed and fold, each on its fold's dev documents" if opts.get("cv") else "seeds")
          + f") with this variant's decode, and the epoch whose checkpoint was scored on the test set "
          f"(`best epoch`, 0-based, per {unit}) under the selection rule `select`.", ""]
    epochs, every = curves["epochs"], curves["every"]
    if curves.get("unpooled"):
        md += [f"The curves include the {curves['unpooled']} finished run(s) not pooled yet (dev scores need no "
               "pooling); their test scores enter the tables once their seed's folds are all in.", ""]
    if every:
        md += [f"Epochs 0, {every}, {2 * every}, … and the last ({epochs[-1]}) are shown (each run's `metrics.csv` "
               f"and the figure have them all); a column's mean is over the {unit}s that trained that epoch; "
               f"`last` is the mean of each {unit}'s last epoch (which epoch, per {unit}, in brackets).", ""]
    body = []
    for label, v in curves["variants"].items():
        best = ", ".join("–" if b is None else str(b) for b in v["best"])
        row = [label, "/".join(v["select"]) or "–", best] + [_f(v["mean"].get(e, math.nan)) for e in epochs]
        if every:  # a short curve's end falls between the columns shown
            known = [x for _, x in v["last"] if x is not None]
            row.append(f"{_f(float(np.mean(known)) if known else math.nan)} ({', '.join(str(e) for e, _ in v['last'])})")
        body.append(row)
    md += _table(["variant", "select", f"best epoch (per {unit})"] + [f"epoch {e}" for e in epochs]
                 + (["last"] if every else []), body)
    if plotting:
        md += [f"![dev {'micro F1' if key_ == 'dev_f1_micro' else METRICS[opts['primary']]} per epoch]"
               "(figures/learning_curves.png)", ""]
        if curves["marks"]:
            md += ["A star marks each line's plateau epoch under the study's plateau rule, a cross the last "
                   "epoch of a line that never plateaued (its budget is a lower bound).", ""]
    return md


def budget_section(budget: dict | None, short: dict) -> list[str]:
    """The epoch budget of ``[report] plateau`` (report.json's ``budget``): the rule's epoch per
    variant, the chosen value and budget per arm, and the budget per decode."""
    if not budget:
        return []
    b, out = budget["rule"], budget["json"]
    choose = out["choose"]
    dev_key = budget["key"]
    name = short.get(choose, choose) if choose else None
    md = ["## Epoch budget (plateau rule)", "",
          f"Rule, declared in the study file: on the seed-mean dev {'micro F1' if dev_key == 'dev_f1_micro' else METRICS[dev_key[4:]]} curve of a variant, the plateau "
          f"is the first epoch whose next {b['window']} epochs each stay within {b['delta']} of it; "
          f"without one, the last epoch trained, marked *not plateaued* (the budget is then a lower bound). "
          + (f"Per arm the `{name}` with the highest F1 at its plateau is chosen; " if choose else "")
          + "an arm's budget is its plateau epoch + 1 (epochs, counted from 1). A curve at 0 every epoch "
          "(a decode that cannot read the model out, e.g. argmax after BTL) sets no budget.", ""]
    body = [[variant_label(k, short), str(v["seeds"]), str(v["epochs"]), str(v["plateau_epoch"]),
             ("F1 0 throughout: no budget" if not v["f1_max"] > 0 else "yes" if v["plateaued"] else "**not plateaued**"),
             _f(v["f1_at_plateau"]), _f(v["f1_max"])]
            for k, v in b["variants"].items()]
    md += _table(["variant", "seeds", "epochs (all seeds)", "plateau epoch", "plateaued", "dev F1 there",
                  "dev F1 max"], body)
    body = [[variant_label(tuple(a["arm"].items()), short)] + ([format_value(a["chosen"])] if choose else [])
            + [str(a["budget_epochs"]) + ("" if a["plateaued"] else " (lower bound)"), _f(a["f1_at_plateau"])]
            for a in out["arms"]]
    md += _table(["arm"] + ([f"best {name}"] if choose else []) + ["budget (epochs)", "dev F1 at plateau"], body)
    md += ["A study comparing these arms with one decode uses the largest budget among them: "
           + "; ".join(f"{d}: **{v['epochs']} epochs**" + ("" if v["plateaued"] else " (a lower bound: some arm had not plateaued)")
                       for d, v in out["by_decode"].items()) + ".", ""]
    return md


def confusion_section(confusion: dict) -> list[str]:
    """Per variant, per-type precision / recall / F1 and the entity confusion matrix over seeds."""
    md = ["## Per-type scores and confusion matrices", ""]
    for label, v in confusion.items():
        body = [[t, _f(p, 3), _f(r, 3), _f(f1, 3), str(support)] for t, p, r, f1, support in v["types"]]
        md += [f"<details><summary>{label}</summary>", ""]
        md += _table(["type", "precision", "recall", "F1", "support"], body)
        if v["counts"] is not None:
            total, cols = v["counts"], v["cols"]
            md += [f"Entity confusion, summed over {v['seeds']} seed(s):", ""]
            md += _table(["gold \\ pred"] + cols, [[a] + [str(total.get((a, b), 0)) for b in cols] for a in v["rows"]])
        md += ["</details>", ""]
    return md


def type_share_section(shares: dict) -> list[str]:
    """Per variant, each band's predicted share of the test mentions against its training share
    (report.json's ``type_shares``)."""
    md = ["## Predicted type shares against training shares", "",
          "Each band's share of the predicted test mentions (strict IOB2) against its share of the training "
          "mentions (mean over seeds); ratio = predicted / training share, below 1 for the tail: the rare types "
          "are predicted less often than they occur. Read it with the decoder: argmax, the calibrated decoder "
          "and the KNN vote each pick the most likely type, so a model that has learned only the label "
          "frequencies predicts the most frequent types only (head ratio above 1, tail 0). A tail ratio below 1 "
          "follows from such decoding by itself; it is evidence that training amplified the imbalance only "
          "where it goes beyond what the decoder does to the prior, which these shares alone cannot tell.", ""]
    if not shares["variants"]:
        return md + ["No prediction files: no shares.", ""]
    body = [[label] + [f"{_f(e[b]['train_share'], 3)} / {_f(e[b]['predicted_share'], 3)} ({_f(e[b]['ratio'], 2)})"
                       for b in ("head", "middle", "tail")] + [str(shares["predicted"][label])]
            for label, e in shares["variants"].items()]
    return md + _table(["variant", "head: train / predicted (ratio)", "middle", "tail", "predicted mentions"], body)


def type_probability_section(out: dict, bands: dict) -> list[str]:
    """Per checkpoint, each band's share of the mean entity probability against its training share,
    with Holm-adjusted p (report.json's ``type_probabilities``), and the shares per type."""
    md = ["### Mean predicted probability against training share (decoder-free)", ""]
    if not out:
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
    body = []
    for name, e in out.items():
        cells = [name]
        for b in ("head", "middle", "tail"):
            x = e[b]
            p = f"p {_f(x.get('p_holm'), 3)}" if x.get("p_holm") is not None else "p –"
            cells.append(f"{_f(x['train_share'], 3)} / {_f(x['predicted_share'], 3)} ({_f(x['ratio'], 2)} "
                         f"[{_f(x['ratio_min'], 2)}, {_f(x['ratio_max'], 2)}], {p})")
        body.append(cells + [_f(e["entity_probability"], 3), str(e["head"]["seeds"])])
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


def anova_section(result: dict, short: dict) -> list[str]:
    """One ``[report] anova`` table (``bertlab.report.anova.anova_table``), or why there is none yet."""
    a, b, metric, decode, block = result["a"], result["b"], result["metric"], result["decode"], result["block"]
    md = [f"## Two-way ANOVA: {metric} ~ {short.get(a, a)} × {short.get(b, b)}", ""]
    if result["status"] == "no runs":
        return md + [f"No finished run has {metric}.", ""]
    if result["status"] == "no complete block":
        return md + [f"No {short.get(block, block)} has finished every cell yet.", ""]
    block_name = short.get(block, block) if block else ""
    if result["status"] == "one run per cell":
        have = result["have"]
        return md + [f"One run per cell so far ({result['runs']} runs"
                     + (f": {block_name} {', '.join(have)}" if have else "")
                     + "): the model with interaction fits them exactly and leaves no residual to test "
                       "against. The table needs at least 2 runs per cell"
                     + (f" (2 {block_name}s that have every cell)." if block else "."), ""]
    table = result["json"]["table"]
    names = {"A": short.get(a, a), "B": short.get(b, b), "A:B": f"{short.get(a, a)} × {short.get(b, b)}",
             "Block": f"{block_name} (block)", "Residual": "residual"}
    body = [[names.get(name, name), _f(row["SS"], 6), f"{row['df']:.0f}", _f(row["MS"], 6), _f(row["F"], 3),
             _f(row["p"], 4)] for name, row in table.items()]
    how = (f"{block_name} as a block factor (randomised complete block: each {block_name} is shared by every "
           f"cell, so its effect leaves the residual)" if result["use_block"] else "no block factor")
    if result["incomplete"]:
        how += (f"; left out until they have every cell: {block_name} {', '.join(result['incomplete'])}")
    what = " (test macro F1 over the fixed class set)" if metric == "f1_macro" else ""
    md += [f"Type II sums of squares (`bertlab.stats.anova_two_way`) of {metric}{what}, {result['runs']} runs, "
           f"decode {decode}, {how}.", ""]
    md += _table(["source", "sum of squares", "df", "mean square", "F", "p"], body)
    total = sum(row["SS"] for row in table.values())
    md += ["Share of the total variation: " + ", ".join(
        f"{names[k]} {table[k]['SS'] / total:.0%}" for k in table if total > 0) + ".", ""]
    return md


def gradflow_section(flow: dict | None) -> list[str]:
    """Per trained variant and layer the gradient norm, the ratios against the baseline with Holm
    p (report.json's ``gradflow``), and each variant's first seed in detail."""
    from bertlab.gradflow import markdown_summary
    md = ["## Gradient flow", ""]
    if not flow:
        return md + ["No run has gradient-flow records.", ""]
    layers = flow["json"]["layers"]
    md += ["Gradient norm of each layer's parameters (attention and FFN together), averaged over the recorded "
           "steps of a run, then mean ± std over seeds. A resumed run's records are complete (the recorder "
           "saves them with every checkpoint).", ""]
    body = [[label, str(flow["seeds"][label])] + [f"{mean:.3g}" + ("" if math.isnan(sd) else f" ± {sd:.2g}")
                                                  for mean, sd in cells]
            for label, cells in flow["means"].items()]
    md += _table(["trained variant", "seeds"] + layers, body)
    if flow["baseline"] is not None:
        md += [f"Against `{flow['baseline']}`: the ratio of seed-mean gradient norms per layer, and the seed-paired "
               "t-test of the log norms (p Holm-adjusted over the layers of each row; seeds present in both).", ""]
        body = [[c["variant"], str(len(c["seeds"]))] + [
            "–" if math.isnan(r) else f"{r:.3g}×" + ("" if math.isnan(q) else f" (p {q:.2g})")
            for r, q in zip(c["ratio"].values(), c["p_holm"].values())] for c in flow["json"]["comparisons"]]
        md += _table(["trained variant", "paired seeds"] + layers, body)
    md += ["Each variant's first seed, in detail:", ""]
    for rid, rows in flow["first"]:
        md += [f"<details><summary>{rid}</summary>", "", markdown_summary(rows), "</details>", ""]
    return md


def figures_section(opts: dict, plotting: bool, scale: str) -> list[str]:
    """Links to the two summary figures, or why there are none, and what the time axis means."""
    md = ["## Figures", ""]
    if not opts.get("figures", True):
        return md + ["Figures are off (`[report] figures = false`).", ""]
    if not plotting:
        return md + ["matplotlib is not installed (`pip install bertlab[plot]`): tables only.", ""]
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
