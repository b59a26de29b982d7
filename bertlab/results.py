"""What a study's runs leave behind, and the one place their formats are defined.

- ``predictions_<split>_<decode>.jsonl`` in a run folder: one sentence a line (``prediction_rows``),
  written by ``bertlab.train`` (through ``bertlab.inference.evaluate``) and by the direct baselines;
- ``results.jsonl`` in a study folder: one line per finished (run, decode), ``result_row``: the axis
  values, test scores (micro/macro F1, unweighted accuracy in its four readings, per type), the
  dev learning curve of that decode and its best epoch, compute cost and environment. It is a pure
  function of the finished run folders (``result_rows``), rewritten atomically;
- ``config.toml`` in a run folder: the run's full config (``toml_dumps``, the inverse of
  ``tomllib.loads``).

``bertlab.study`` writes these, ``bertlab.report`` reads them; neither imports the other for it.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from bertlab.files import write_text


def prediction_rows(sentences, pred_tags) -> list[dict]:
    """The rows of ``predictions_<split>_<decode>.jsonl``: one sentence each, ``doc_id``,
    ``sentence`` (its index in its document), ``tokens``, ``tags`` (gold) and ``pred``. Reports
    bootstrap over documents from them."""
    rows, index, last = [], 0, None
    for s, p in zip(sentences, pred_tags):
        index = index + 1 if s.doc_id == last else 0
        last = s.doc_id
        rows.append({"doc_id": s.doc_id, "sentence": index, "tokens": list(s.tokens), "tags": list(s.tags),
                     "pred": list(p)})
    return rows


def write_predictions(path: Path, sentences, pred_tags) -> None:
    """``predictions_<split>_<decode>.jsonl`` (``prediction_rows``), written atomically."""
    write_text(path, "".join(json.dumps(row) + "\n" for row in prediction_rows(sentences, pred_tags)))


def result_rows(sdir: Path) -> list[dict]:
    """One row per finished (run, decode) of the study folder ``sdir``, runs in study order."""
    study = read_json(sdir / "study.json", {})
    order = {r: i for i, r in enumerate(study.get("runs", []))}
    rows = []
    run_dirs = sorted((p for p in sdir.iterdir() if (p / "metrics.json").exists() and (p / "run.json").exists()),
                      key=lambda p: (order.get(p.name, len(order)), p.name))
    for rdir in run_dirs:
        meta = read_json(rdir / "run.json")
        metrics = read_json(rdir / "metrics.json")
        timing = read_json(rdir / "timing.json", {})
        for decode, m in sorted(test_metrics(metrics).items(),
                                key=lambda kv: study.get("decodes", []).index(kv[0])
                                if kv[0] in study.get("decodes", []) else 99):
            rows.append(result_row(meta, metrics, timing, decode, m, rdir))
    return rows


def test_metrics(metrics: dict) -> dict[str, dict]:
    """``{decode: {...}}`` of the test split from a run's metrics.json."""
    test = metrics.get("test", {})
    if "entity" in test or "entity_report" in test:  # a single decode, not keyed by decode
        return {test.get("decode", "argmax"): test}
    return {d: m for d, m in test.items() if isinstance(m, dict)}


def result_row(meta: dict, metrics: dict, timing: dict, decode: str, m: dict, rdir: Path) -> dict:
    """One results.jsonl line: axis values, test scores, per-type scores and compute cost."""
    report = m["entity_report"] if "entity_report" in m else m["entity"]
    per_type = {t: {"precision": r["precision"], "recall": r["recall"], "f1": r["f1-score"],
                    "support": r["support"]}
                for t, r in report.items() if t not in ("micro avg", "macro avg", "weighted avg")}
    epochs = metrics.get("epochs") or 1
    train_seconds = metrics.get("train_seconds", timing.get("wall_seconds"))
    # dev F1 of the best model with this decode (the ANOVA's response), else the loop's best dev F1
    dev = metrics.get("dev", {}).get(decode, {})
    dev_f1 = dev.get("micro_f1", metrics.get("best_dev_f1"))
    pred_file = f"predictions_test_{decode}.jsonl"
    # this decode's learning curve, so a report can draw curves without the run folders
    history = metrics.get("history") or []
    curve = None
    if any(h.get("dev") for h in history):
        def dev_of(h, key):
            return ((h.get("dev") or {}).get(decode) or {}).get(key)
        curve = {"epoch": [h["epoch"] for h in history],
                 "train_loss": [h.get("train_loss") for h in history],
                 "dev_loss": [h.get("dev_loss") for h in history],
                 "dev_f1_micro": [dev_of(h, "f1_micro") for h in history],
                 "dev_f1_macro": [dev_of(h, "f1_macro") for h in history],
                 "dev_unweighted_accuracy": [dev_of(h, "unweighted_accuracy") for h in history]}
    return {
        "study": meta["study"], "scale": meta["scale"], "run_id": meta["run_id"],
        "axes": meta["axes"], "seed": meta["axes"].get("train.seed", 0), "decode": decode,
        "f1_micro": report["micro avg"]["f1-score"], "f1_macro": report["macro avg"]["f1-score"],
        "precision_micro": report["micro avg"]["precision"], "recall_micro": report["micro avg"]["recall"],
        "unweighted_accuracy": m.get("unweighted_accuracy"),
        "unweighted_accuracy_variants": m.get("unweighted_accuracy_variants"),
        "per_type": per_type, "dev_f1_micro": dev_f1,
        "train_seconds": train_seconds, "epochs": epochs,
        "best_epoch": m.get("best_epoch"), "select": metrics.get("select"), "curve": curve,
        "seconds_per_epoch": None if train_seconds is None else train_seconds / epochs,
        # CPU seconds over wall seconds x threads of the training loop (CPU runs): < ~0.9, it shared its cores
        "cpu_share": metrics.get("cpu_share"),
        "inference_tokens_per_s": m.get("tokens_per_second"),  # words of the split per second
        "params": metrics.get("params"), "train_mentions": metrics.get("train_mentions", {}),
        # decoder-free: each label's mean softmax probability on test, and the training words per tag
        "mean_probability": m.get("mean_probability"), "train_tags": metrics.get("train_tags"),
        "calibration": m.get("calibration"),  # the softmax's ECE and reliability bins on test
        "wall_seconds": timing.get("wall_seconds"), "resumed": timing.get("resumed", False),
        "reused_from": meta.get("reused_from"),  # copied from a finished run of the same config (--reuse)
        "time_split": metrics.get("time_split"),  # where the run's seconds went (selection.TIME_PARTS)
        "predictions": f"{meta['run_id']}/{pred_file}" if (rdir / pred_file).exists() else None,
        # the precision the run trained in (fp32 / bf16 / fp16) is part of its environment line
        "env": {**meta.get("env", {}), **({"precision": metrics["precision"]} if metrics.get("precision") else {})},
        "precision": metrics.get("precision"), "deterministic": bool(metrics.get("deterministic", False)),
        # a cross-validation fold: folds, fold, fold_seed and its train / dev / test document counts
        **({"fold": metrics["fold"]} if metrics.get("fold") else {}),
    }


def write_results(sdir: Path, rows: list[dict] | None = None) -> Path:
    """Rewrite ``sdir/results.jsonl`` from the finished run folders (temp file + os.replace);
    ``rows``: ``result_rows(sdir)`` when the caller has them already."""
    rows = result_rows(sdir) if rows is None else rows
    path = sdir / "results.jsonl"
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path


def complete_results(sdir: Path) -> list[str]:
    """Rewrite ``sdir/results.jsonl`` from the run folders (``write_results``) if a finished run
    has no row in it, e.g. a worker killed between writing a run's metrics.json and the results;
    returns the run ids that had none. A complete file is left as it is, byte for byte (a committed
    folder's results.jsonl keeps the rows it was published with)."""
    path = sdir / "results.jsonl"
    have = {row["run_id"] for row in read_results(path)} if path.exists() else set()
    rows = result_rows(sdir)
    missing = list(dict.fromkeys(row["run_id"] for row in rows if row["run_id"] not in have))
    if missing:
        write_results(sdir, rows)
    return missing


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a results.jsonl; a line for the same (run, decode) twice keeps the last."""
    rows = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            rows[(row["run_id"], row["decode"])] = row
    return list(rows.values())



def read_json(path: str | os.PathLike, default=None):
    """A JSON file of a study or run folder; ``default`` when it does not exist (else an error
    naming it), and a damaged file is one error naming it and what to do."""
    if not Path(path).exists():
        if default is not None:
            return default
        raise FileNotFoundError(f"{path}: not found")
    damaged = ("the file is damaged: delete it and re-run the study (a run whose metrics.json is deleted is "
               "trained or scored again)")
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {damaged}") from None
    except UnicodeDecodeError as e:  # binary garbage, e.g. a disk error or another program's file
        raise ValueError(f"{path}: not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is not "
                         f"UTF-8); {damaged}") from None
    if not isinstance(obj, dict):  # every JSON file of a study or run folder is one object
        raise ValueError(f"{path}: expected a JSON object, found {type(obj).__name__}; {damaged}")
    return obj


# ---- config.toml: each run's config as TOML (the inverse of tomllib.loads) -------------------------

def toml_dumps(d: dict) -> str:
    """A nested dict of plain values as TOML (tables for dicts, inline values otherwise);
    ``tomllib.loads(toml_dumps(d)) == d``."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        out += _toml_table(_toml_key(k), v)
    return out


def _toml_table(name: str, d: dict) -> str:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
    subs = {k: v for k, v in d.items() if isinstance(v, dict)}
    out = f"\n[{name}]\n" + "".join(f"{_toml_key(k)} = {toml_value(v)}\n" for k, v in scalars.items())
    for k, v in subs.items():
        out += _toml_table(f"{name}.{_toml_key(k)}", v)
    return out


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def toml_value(v) -> str:
    """One TOML value: a bool, number (nan and inf too), string, array or inline table."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) as TOML")
