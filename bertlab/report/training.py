"""The report's numbers about training itself: compute cost and where the time went, the learning
curves with the plateau rule's epoch budget, and the gradient flow per layer. Each function returns
numbers; ``bertlab.report.markdown`` and ``bertlab.report.figures`` render them."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bertlab import stats
from bertlab.report.comparisons import holm
from bertlab.report.rows import mean_std, median, variant_label

# the parts of ``row["time_split"]`` (bertlab.selection.TIME_PARTS, not imported: it pulls in torch),
# in the order a run spends them, with the names the report prints
TIME_PARTS = {"training": "training", "dev_forward": "dev forward", "knn_fit": "KNN fit",
              "calibration_fit": "calibration fit", "dev_decoding": "dev decoding",
              "best_model_saving": "best-model saving", "checkpoints": "checkpoints",
              "final_scoring": "final scoring"}
CURVE_COLUMNS = 13  # at most this many epoch columns in the learning-curve table


def compute_costs(variants: dict, labels: dict) -> dict:
    """Per variant the compute table's numbers (report.json's ``compute``): parameters and micro F1
    (means over seeds), seconds per epoch, training seconds and inference tokens/s (medians: a run
    that shared its cores runs slower without computing more), the lowest CPU share; with how many
    runs recorded a CPU share (``known``) of how many (``runs``), and whether any did (``shares``)."""
    out: dict = {"variants": {}, "known": {}, "runs": {},
                 "shares": any(r.get("cpu_share") is not None for group in variants.values() for r in group)}
    for key, group in variants.items():
        vals = {m: mean_std(r.get(m) for r in group)[0] for m in ("params", "f1_micro")}
        vals.update({m: median(r.get(m) for r in group)
                     for m in ("seconds_per_epoch", "train_seconds", "inference_tokens_per_s")})
        known = [r["cpu_share"] for r in group if r.get("cpu_share") is not None]
        vals["cpu_share_min"] = min(known) if known else None
        out["variants"][labels[key]] = vals
        out["known"][labels[key]], out["runs"][labels[key]] = len(known), len(group)
    return out


def time_split_runs(rows: list[dict]) -> dict[str, dict]:
    """``{run_id: time_split}`` of the rows that carry one. A trained run gives one row per decode,
    all with the run's split, so each run counts once. Old results and the HMM / CRF baselines have
    none."""
    out: dict[str, dict] = {}
    for r in rows:
        if isinstance(r.get("time_split"), dict):
            out.setdefault(r["run_id"], r["time_split"])
    return out


def time_split(variants: dict, short: dict) -> dict | None:
    """Where the seconds of each trained variant (the variant without its decode) went: the mean
    over its runs (seeds) of each part of ``time_split`` and its share of their sum, the same summed
    over the study, and the largest part besides training (``json``: report.json's ``time_split``);
    the parts that are 0 in every run (``zero``) and the number of runs (``runs``). ``None`` when no
    row has a split."""
    trained: dict[tuple, dict[str, dict]] = {}
    for key, group in variants.items():
        trained.setdefault(key[:-1], {}).update(time_split_runs(group))
    trained = {k: runs for k, runs in trained.items() if runs}
    if not trained:
        return None
    splits = [s for runs in trained.values() for s in runs.values()]
    seen = list(dict.fromkeys(list(TIME_PARTS) + [p for s in splits for p in s]))
    parts = [p for p in seen if any(s.get(p) for s in splits)]  # a part that is 0 everywhere is noise

    def seconds(runs) -> np.ndarray:  # [runs, parts]
        return np.array([[float(s.get(p) or 0.0) for p in parts] for s in runs], dtype=float).reshape(-1, len(parts))

    entry: dict = {"parts": parts, "variants": {}}
    for key, runs in trained.items():
        mean = seconds(runs.values()).mean(0)
        entry["variants"][variant_label(key, short) or "every run"] = {
            "runs": len(runs), "mean": dict(zip(parts, mean.tolist())),
            "share": dict(zip(parts, (mean / mean.sum()).tolist())) if mean.sum() > 0 else None}
    total = seconds(splits).sum(0)
    entry["total"] = dict(zip(parts, total.tolist()))
    others = [i for i, p in enumerate(parts) if p != "training"]
    if others and total.sum() > 0:
        entry["largest_non_training"] = parts[max(others, key=lambda j: total[j])]
    return {"json": entry, "zero": [TIME_PARTS.get(p, p) for p in seen if p not in parts and p in TIME_PARTS],
            "runs": len(splits)}


def curves_of(group: list[dict]) -> list[dict]:
    """The learning curves of a variant's runs (rows without one, e.g. old results, are skipped)."""
    return [r["curve"] for r in group if isinstance(r.get("curve"), dict) and r["curve"].get("epoch")]


def curve_matrix(curves: list[dict], key: str) -> tuple[list[int], np.ndarray]:
    """Epochs (union over runs) and ``[runs, epochs]`` values of ``key``, NaN where missing."""
    epochs = sorted({int(e) for c in curves for e in c["epoch"]})
    at = {e: i for i, e in enumerate(epochs)}
    out = np.full((len(curves), len(epochs)), np.nan)
    for i, c in enumerate(curves):
        for e, v in zip(c["epoch"], c.get(key) or []):
            if v is not None:
                out[i, at[int(e)]] = float(v)
    return epochs, out


def curve_key(opts: dict) -> str:
    """The dev curve the learning curves and the plateau rule read: the primary metric's, when the
    study declares one (it also selected the checkpoints), else micro F1."""
    return f"dev_{opts['primary']}" if opts.get("primary") else "dev_f1_micro"


def learning_curves(variants: dict, labels: dict, opts: dict) -> dict | None:
    """Dev scores per epoch, from the ``curve`` of each results row (absent for old results and for
    models fitted in one go), ``None`` when no row has one. ``epochs``: the table's columns (at most
    ``CURVE_COLUMNS``: with more epochs, every ``every``-th and the last); per variant its selection
    rule(s), best epoch per run, mean over seeds per epoch and, thinned, each run's last (epoch,
    value); ``lines``: ``{variant key: (epochs, values [runs, epochs])}`` for the figure, with the
    plateau rule's ``marks`` ``{key: (epoch, plateaued)}`` when the study declares one."""
    with_curves = {k: curves_of(g) for k, g in variants.items()}
    with_curves = {k: c for k, c in with_curves.items() if c}
    if not with_curves:
        return None
    key_ = curve_key(opts)
    lines = {key: curve_matrix(curves, key_) for key, curves in with_curves.items()}
    all_epochs = sorted({e for ep, _ in lines.values() for e in ep})
    epochs, every = all_epochs, None
    if len(epochs) > CURVE_COLUMNS:  # e.g. BiLSTMs trained for 50 epochs: a readable table, every epoch in the figure
        every = math.ceil((len(epochs) - 1) / (CURVE_COLUMNS - 1))
        epochs = sorted(set(epochs[::every]) | {epochs[-1]})
    table = {}
    for key, curves in with_curves.items():
        group = variants[key]
        ep, values = lines[key]
        with np.errstate(invalid="ignore"):
            mean = {e: (float(np.nanmean(values[:, i])) if not np.isnan(values[:, i]).all() else math.nan)
                    for i, e in enumerate(ep)}
        table[labels[key]] = {"select": sorted({str(r["select"]) for r in group if r.get("select")}),
                              "best": [r.get("best_epoch") for r in group], "mean": mean,
                              "last": [(c["epoch"][-1], c[key_][-1]) for c in curves] if every else None}
    marks = None
    if opts.get("plateau"):  # the plateau rule's epoch on each line (report section "Epoch budget")
        found = budgets(variants, opts["plateau"], key_)["variants"]
        marks = {k: (v["plateau_epoch"], v["plateaued"]) for k, v in found.items() if v["f1_max"] > 0}
    return {"key": key_, "epochs": epochs, "every": every, "variants": table, "lines": lines,
            "all_epochs": all_epochs, "marks": marks, "trained": list(dict.fromkeys(k[:-1] for k in variants))}


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
    epochs, values = curve_matrix(curves, key)
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
        curves = curves_of(group)
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


def budget(variants: dict, short: dict, spec: dict, dev_key: str = "dev_f1_micro") -> dict | None:
    """The epoch budget of ``[report] plateau``: ``budgets`` per variant (``rule``) and per arm the
    chosen value, its budget and whether it plateaued, and per decode the largest budget among the
    arms (``json``: report.json's ``budget``). ``None`` when no variant has a curve."""
    b = budgets(variants, spec, dev_key)
    if not b["variants"]:
        return None
    choose = b["choose"]
    arms, by_decode = [], {}
    for arm, key in b["arms"].items():
        v = b["variants"][key]
        chosen = dict(key).get(choose) if choose else None
        n = v["plateau_epoch"] + 1
        decode = dict(arm).get("decode")
        prev = by_decode.get(decode)
        by_decode[decode] = (max(prev[0], n), prev[1] and v["plateaued"]) if prev else (n, v["plateaued"])
        arms.append({"arm": dict(arm), "chosen": chosen, "budget_epochs": n,
                     "plateaued": v["plateaued"], "f1_at_plateau": v["f1_at_plateau"]})
    return {"rule": b, "key": dev_key, "json": {"delta": b["delta"], "window": b["window"], "choose": choose, "arms": arms,
                                "by_decode": {str(d): {"epochs": n, "plateaued": ok} for d, (n, ok) in by_decode.items()}}}


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


def gradflow(study_dir: Path, rows: list[dict], baseline: dict, short: dict) -> dict | None:
    """Per trained variant and layer, the gradient norm (mean over recorded steps, then mean ± std
    over seeds: ``means``) and, against the study's baseline variant, the ratio per layer with a
    seed-paired t-test on the log norms, Holm over the layers of one comparison (``json``:
    report.json's ``gradflow``); each variant's first seed's gradflow rows (``first``: ``[(run id,
    rows)]``). ``None`` when no run has gradient-flow records."""
    from bertlab.gradflow import layer_sort_key, read_rows
    by_variant = gradflow_by_variant(study_dir, rows)
    if not by_variant:
        return None
    layers = sorted({layer for seeds in by_variant.values() for m in seeds.values() for layer in m}, key=layer_sort_key)
    label = {key: variant_label(key, short) or "every run" for key in by_variant}
    means = {label[key]: [mean_std(m.get(layer) for m in seeds.values()) for layer in layers]
             for key, seeds in by_variant.items()}
    base_items = {k: v for k, v in baseline.items() if k != "decode"}
    base = next((k for k in by_variant if base_items and all(dict(k).get(a) == v for a, v in base_items.items())), None)
    entry = {"layers": layers, "variants": {label[k]: {str(s): m for s, m in v.items()} for k, v in by_variant.items()},
             "comparisons": []}
    if base is not None and len(by_variant) > 1:
        for key, seeds in by_variant.items():
            if key == base:
                continue
            common = sorted(set(seeds) & set(by_variant[base]))
            ratios, pvalues = [], []
            for layer in layers:
                a = np.array([seeds[s].get(layer, math.nan) for s in common], float)
                b = np.array([by_variant[base][s].get(layer, math.nan) for s in common], float)
                ok = ~(np.isnan(a) | np.isnan(b)) & (a > 0) & (b > 0)
                ratios.append(float(np.mean(a[ok]) / np.mean(b[ok])) if ok.any() else math.nan)
                pvalues.append(float(stats.ttest_rel(np.log(a[ok]), np.log(b[ok]))[1]) if ok.sum() >= 2 else math.nan)
            entry["comparisons"].append({"variant": label[key], "baseline": label[base], "seeds": common,
                                         "ratio": dict(zip(layers, ratios)), "p_holm": dict(zip(layers, holm(pvalues)))})
    first = []
    for key, seeds in by_variant.items():
        rid = next(r["run_id"] for r in rows if r["seed"] == min(seeds)
                   and tuple((k, v) for k, v in r["axes"].items() if k != "train.seed") == key)
        first.append((rid, read_rows(study_dir / rid / "gradflow" / "gradflow.csv")))
    return {"json": entry, "means": means, "seeds": {label[k]: len(v) for k, v in by_variant.items()},
            "baseline": label[base] if base is not None and len(by_variant) > 1 else None, "first": first}
