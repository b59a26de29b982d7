"""The report's per-class numbers: F1 by frequency band, per-class scores with intervals, the
scoring conventions side by side, per-type confusion, and each type's share of the predictions
against its share of the training data (``type_shares``, ``type_probabilities``). Each function
returns numbers; ``bertlab.report.markdown`` prints them."""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bertlab import stats
from bertlab.metrics import strict_entities
from bertlab.report.counts import convention_scores, per_class_table, stack_counts
from bertlab.report.rows import band_of, format_value


def band_table(variants: dict, labels: dict, bands: dict) -> tuple[dict, dict]:
    """``({label: {band: {"f1", "classes"}}}, per-class table)``: a band's F1 is the mean over its
    classes (with test support) of the class F1 (mean over seeds), bands by training mentions
    (``band_of``). The per-class table: ``{"mentions": {class: training mentions}`` (from a variant
    that has the class: variants may be on different corpora), ``"types"`` (most mentions first),
    ``"f1": {label: {class: F1}}}``."""
    per_class, out = {}, {}
    for key, group in variants.items():
        mentions = group[0].get("train_mentions", {})
        types = sorted({t for r in group for t, v in r["per_type"].items() if v["support"] > 0})
        f1 = {t: float(np.mean([r["per_type"].get(t, {"f1": 0.0})["f1"] for r in group])) for t in types}
        per_class[key] = (mentions, f1)
        by_band = defaultdict(list)
        for t in types:
            by_band[band_of(mentions.get(t, 0), bands)].append(f1[t])
        out[labels[key]] = {b: {"f1": float(np.mean(by_band[b])) if by_band.get(b) else math.nan,
                                "classes": len(by_band.get(b, []))} for b in ("head", "middle", "tail")}
    mentions = {}
    for k in variants:
        for t, n in per_class[k][0].items():
            mentions.setdefault(t, n)
    types = sorted({t for k in variants for t in per_class[k][1]}, key=lambda t: (-mentions.get(t, 0), t))
    return out, {"mentions": mentions, "types": types, "f1": {labels[k]: per_class[k][1] for k in variants}}


def per_class_tables(variants: dict, runs: dict, labels: dict, min_support: int) -> dict:
    """``{label: per_class_table}`` of every variant with prediction files."""
    tables = {}
    for key in variants:
        v = runs[key]
        if v.counts is None:
            continue
        x, layout = stack_counts(v.counts)
        tables[labels[key]] = per_class_table(x, layout, min_support)
    return tables


def convention_table(variants: dict, runs: dict, labels: dict) -> dict:
    """``{label: seed means of convention_scores, and "runs"}`` of every variant whose prediction
    files were counted with every convention."""
    rows = {}
    for key in variants:
        v = runs[key]
        if v.counts is None or any("conventions" not in c for c in v.counts):
            continue
        per_run = [convention_scores(c) for c in v.counts]
        mean = {k: float(np.mean([r[k] for r in per_run])) for k in per_run[0]}
        rows[labels[key]] = {**mean, "runs": len(per_run)}
    return rows


def _predictions(study_dir: Path, row: dict) -> list[dict] | None:
    """The sentences of a row's prediction file, ``None`` when it has none."""
    path = study_dir / row["predictions"] if row.get("predictions") else None
    if path is None or not path.exists():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def confusion(study_dir: Path, variants: dict, labels: dict) -> dict:
    """Per variant: per type with test support its precision / recall / F1 (means over seeds) and
    support, and the entity-level confusion matrix summed over seeds (gold rows; "missed" and
    "spurious" for span errors; ``None`` without prediction files): ``{label: {"types": [(type, p,
    r, f1, support)], "rows", "cols", "counts": {(gold, pred): n}, "seeds"}}``."""
    from bertlab.metrics import confusion_matrix
    out = {}
    for key, group in variants.items():
        types = sorted({t for r in group for t, v in r["per_type"].items() if v["support"] > 0})
        scores = [(t, *(float(np.mean([r["per_type"].get(t, {m: 0.0})[m] for r in group]))
                        for m in ("precision", "recall", "f1")), group[0]["per_type"][t]["support"]) for t in types]
        total, rows, cols = None, [], []
        for r in group:
            sents = _predictions(study_dir, r)
            if sents is None:
                continue
            cm = confusion_matrix([s.get("tags", s.get("gold")) for s in sents], [s["pred"] for s in sents],
                                  level="entity")
            if total is None:
                total, rows, cols = {}, cm.rows, cm.cols
            rows = rows + [x for x in cm.rows if x not in rows]
            cols = cols + [x for x in cm.cols if x not in cols]
            for i, a in enumerate(cm.rows):
                for j, b in enumerate(cm.cols):
                    total[(a, b)] = total.get((a, b), 0) + int(cm.matrix[i, j])
        out[labels[key]] = {"types": scores, "rows": rows, "cols": cols, "counts": total, "seeds": len(group)}
    return out


def type_shares(predicted: list[list[str]], train_mentions: dict[str, int], bands: dict) -> dict:
    """Each type's share of the predicted mentions (strict IOB2 entities of ``predicted``, one tag
    list per sentence) against its share of the training mentions, and both summed per frequency
    band: ``{"types": {t: (train share, predicted share)}, "bands": {band: (train share,
    predicted share)}, "predicted": number of predicted mentions}``. A model that learned only the
    type prior predicts each type at its training share; a band predicted below its share is
    under-predicted (imbalance amplified, for the tail)."""
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


def type_share_table(study_dir: Path, variants: dict, labels: dict, bands: dict) -> dict:
    """``[report] type_shares = true`` (random_labels): per variant with prediction files, each
    band's training share, predicted share (mean over seeds) and their ratio (report.json's
    ``type_shares``), and the mean number of predicted mentions: ``{"variants": {label: {band:
    ...}}, "predicted": {label: n}}``."""
    out: dict = {"variants": {}, "predicted": {}}
    for key, group in variants.items():
        shares = []
        for r in group:
            sents = _predictions(study_dir, r)
            if sents is not None:
                shares.append(type_shares([s["pred"] for s in sents], r.get("train_mentions", {}), bands))
        if not shares:
            continue
        entry = {}
        for b in ("head", "middle", "tail"):
            train = float(np.mean([sh["bands"].get(b, (0.0, 0.0))[0] for sh in shares]))
            seen = [x for x in (sh["bands"].get(b, (0.0, 0.0))[1] for sh in shares) if not math.isnan(x)]
            pred = float(np.mean(seen)) if seen else math.nan  # nan: no run predicted a mention
            entry[b] = {"train_share": train, "predicted_share": pred, "ratio": pred / train if train else math.nan}
        out["variants"][labels[key]] = entry
        out["predicted"][labels[key]] = int(np.mean([sh["predicted"] for sh in shares]))
    return out


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


def type_probability_table(variants: dict, labels: dict, bands: dict) -> dict:
    """Per trained checkpoint (decodes read from one checkpoint share a row, named by the variant
    without its decode and the decodes in brackets): each band's share of the mean entity
    probability on test against its share of the training entity words, over seeds, with a paired
    t-test of log(predicted share) against log(training share) per band, Holm-adjusted over the
    table (``p_holm``); and the shares per type. ``{}`` when no run recorded its probabilities."""
    groups: dict = {}  # identical (run, probabilities) rows: decodes sharing a checkpoint
    for key, group in variants.items():
        rows = [r for r in group if r.get("mean_probability") and r.get("train_tags")]
        if not rows:
            continue
        ident = json.dumps(sorted((r["run_id"], r["mean_probability"]) for r in rows), sort_keys=True)
        groups.setdefault(ident, ([], rows))[0].append(key)
    tests, out = [], {}
    for names, rows in groups.values():
        shares = [type_probabilities(r["mean_probability"], r["train_tags"], r.get("train_mentions", {}), bands)
                  for r in rows]
        # the checkpoint's label: the variant without its decode axis, then the decodes read from it
        rest = [(k, v) for k, v in names[0] if k != "decode"]
        decodes = [v for key in names for k, v in key if k == "decode"]
        name = (", ".join(f"{k}={format_value(v)}" for k, v in rest) or labels[names[0]]) + (
            f" ({', '.join(decodes)})" if decodes else "")
        entry = {}
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
        entry["entity_probability"] = float(np.mean([sh["entity_probability"] for sh in shares]))
        mentions = rows[0].get("train_mentions", {})
        entry["types"] = {t: {"train_mentions": mentions.get(t, 0),
                              "train_share": float(np.mean([sh["types"].get(t, (0.0, 0.0))[0] for sh in shares])),
                              "predicted_share": float(np.mean([sh["types"].get(t, (0.0, 0.0))[1] for sh in shares]))}
                          for t in sorted(shares[0]["types"], key=lambda t: (-mentions.get(t, 0), t))}
        out[name] = entry
    ps = [out[n][b]["p"] for n, b in tests]
    finite = [i for i, p in enumerate(ps) if not math.isnan(p)]
    if finite:
        _, adjusted = stats.holm([ps[i] for i in finite])
        for i, a in zip(finite, adjusted):
            out[tests[i][0]][tests[i][1]]["p_holm"] = float(a)
    return out
