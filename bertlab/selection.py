"""Dev scores per epoch and checkpoint selection per decode; the final scoring of the chosen models.

At the end of every epoch ``evaluate_dev`` scores the model as it is on dev with every decode of
``[eval] decode`` (argmax, viterbi, knn, calibrated, and the ``+bio`` forms) from one forward
pass, plus the dev loss;
``update_best`` keeps, per decode, the epoch with the best ``[eval] select`` score (ties go to the
later epoch), and ``save_best_folders`` saves the model for each decode whose best it became
(``best/`` for the first decode, ``best-<decode>/`` for the others, hard links when they agree),
with the KNN reference or calibration made from that very epoch. At the end of training
``final_evaluation`` scores dev and test with each decode on its own checkpoint.

Why per decode: under BTL the argmax dev F1 can be 0 at every epoch while KNN's or the calibrated
decoder's rises; selecting every row by argmax would report first-epoch models for them.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from bertlab.checkpoint import BEST_META, WEIGHTS, best_folder, link_folder, load_best_into, save_best
from bertlab.config import EvalConfig, TrainConfig
from bertlab.constrained import base_decode
from bertlab.datasets.prepare import Splits
from bertlab.errors import fail
from bertlab.files import write_json, write_jsonl, write_text


def evaluate_split(model, tokenizer, corpus, decode: str, knn, options: dict, logits=None, calibrator=None) -> dict:
    from bertlab.inference import evaluate
    return evaluate(model, tokenizer, corpus, decode=decode, knn=knn, logits=logits, calibrator=calibrator, **options)


def final_evaluation(cfg: TrainConfig, model, tokenizer, splits: Splits, out_dir: Path, options: dict, log,
                     best_epochs: dict | None = None, priors=None) -> dict:
    """Score dev and test with every decode of ``[eval] decode``, each on the checkpoint chosen
    for it (``best_folder``), with the KNN reference / calibration saved beside that checkpoint;
    decodes that share a checkpoint share its forward pass, as do folders saved at one epoch (hard
    links of one weights file, ``save_best_folders``). With ``[eval] calibration_fit =
    "crossfit"`` the calibrated decodes score dev out of sample (``CrossFitCalibrator``, as at
    selection) and test with the offsets fitted on all of dev. Writes
    ``predictions_<split>_<decode>.jsonl``; returns ``{"dev": {decode: ...}, "test": {...}}``.
    ``priors``: the training label counts, for "logit_adjusted" when no decoder was saved."""
    from bertlab.calibration import CALIBRATION_FILE, BiasCalibrator, CrossFitCalibrator
    from bertlab.inference import fit_knn_on_train, word_logits
    from bertlab.knn import KNN_FILE, KNNClassifier
    from bertlab.logit_adjustment import LOGIT_ADJUSTMENT_FILE, LogitAdjustedDecoder
    best_epochs = best_epochs or {}
    groups: dict[Path, list[str]] = {}
    for decode in cfg.eval.decode:
        groups.setdefault(best_folder(out_dir, decode, cfg.eval.decode), []).append(decode)
    out: dict = {}
    forwards: dict = {}  # (weights file, split) -> (word logits, seconds the forward pass took)
    loaded = None
    for folder, decodes in groups.items():
        weights = _weights_file_identity(folder)
        if folder.exists() and (weights is None or weights != loaded):
            load_best_into(model, folder)
        loaded = weights
        knn = calibrator = None
        bases = {base_decode(d) for d in decodes}
        if "knn" in bases:
            if (folder / KNN_FILE).exists():
                knn = KNNClassifier.load(folder / KNN_FILE)
            else:  # no dev set at epoch end: fit it now, and keep it for `bertlab predict --knn`
                knn = fit_knn_on_train(model, tokenizer, splits.train.sentences, k=cfg.eval.knn_k,
                                       metric=cfg.eval.knn_metric, **options)
                if folder.exists():
                    knn.save(folder / KNN_FILE)
        if "calibrated" in bases and (folder / CALIBRATION_FILE).exists():
            calibrator = BiasCalibrator.load(folder / CALIBRATION_FILE)
        adjuster = None
        if "logit_adjusted" in decodes and (folder / LOGIT_ADJUSTMENT_FILE).exists():
            adjuster = LogitAdjustedDecoder.load(folder / LOGIT_ADJUSTMENT_FILE)
        for split in ("dev", "test"):
            corpus = getattr(splits, split)
            if corpus is None:
                continue
            if weights is not None and (weights, split) in forwards:
                logits, forward_seconds = forwards[weights, split]
            else:
                t0 = time.perf_counter()
                logits = word_logits(model, tokenizer, corpus.sentences, **options)
                forward_seconds = time.perf_counter() - t0
                if weights is not None:
                    forwards[weights, split] = logits, forward_seconds
            if "calibrated" in bases and calibrator is None and split == "dev":
                calibrator = BiasCalibrator(model.labels).fit(logits, [s.tags for s in corpus.sentences])
                if folder.exists():
                    calibrator.save(folder / CALIBRATION_FILE)
            split_calibrator = calibrator
            if "calibrated" in bases and split == "dev" and cfg.eval.calibration_fit == "crossfit":
                split_calibrator = CrossFitCalibrator(model.labels).fit(
                    logits, [s.tags for s in corpus.sentences], [s.doc_id for s in corpus.sentences])
            if "logit_adjusted" in decodes and adjuster is None and split == "dev":
                adjuster = LogitAdjustedDecoder(model.labels, priors).fit(logits, [s.tags for s in corpus.sentences])
                if folder.exists():
                    adjuster.save(folder / LOGIT_ADJUSTMENT_FILE)
            n_words = sum(len(s.tokens) for s in corpus.sentences)
            for decode in decodes:
                t0 = time.perf_counter()
                result = evaluate_split(model, tokenizer, corpus, decode, knn, options, logits=logits,
                                        calibrator=adjuster if decode == "logit_adjusted" else split_calibrator)
                seconds = forward_seconds + time.perf_counter() - t0
                write_jsonl(out_dir / f"predictions_{split}_{decode}.jsonl", clean_json(result.pop("predictions")))
                result["tokens_per_second"] = n_words / max(seconds, 1e-9)
                result["best_epoch"] = best_epochs.get(decode)
                out.setdefault(split, {})[decode] = result
    # the order of [eval] decode, whatever order the checkpoints were visited in
    return {split: {d: v[d] for d in cfg.eval.decode if d in v} for split, v in out.items()}


def _weights_file_identity(folder: Path) -> tuple[int, int] | None:
    """The (device, inode) of a best folder's weights file: equal for folders that hard-link one
    file, which hold the same model (None where there is no single weights file)."""
    try:
        st = os.stat(folder / WEIGHTS)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def evaluate_dev(model, tokenizer, splits: Splits, cfg: TrainConfig, options: dict,
                 priors=None, loss=None) -> tuple[dict | None, dict]:
    """Dev scores of the model as it is now, for every decode of ``[eval] decode``, from one
    forward pass over dev (and one over train for ``knn``, whose reference is the training words).

    Returns ``({"loss": dev loss, "ce": dev cross entropy, "decodes": {decode: {"f1_micro",
    "f1_macro", "unweighted_accuracy"}}, "seconds": {"dev_forward", "knn_fit",
    "calibration_fit", "dev_decoding"}}, fitted)``; ``fitted`` holds the KNN reference and the
    calibration made for this epoch, saved beside the checkpoint if this epoch becomes that
    decode's best. The dev loss is the configured loss ``loss`` (a ``TokenLoss``, with its own
    reduction; ``bertlab.losses.objective.evaluation_loss``) of each dev word's logits (its first
    subword's) against its tag; without ``loss``, plain cross entropy. The dev cross entropy is
    plain cross entropy averaged over dev words, the same for every loss and sampler, so curves
    compare across them (``word_cross_entropy``). No dev set: ``(None, {})``.

    The calibrated decodes are scored with offsets fitted on all of dev (``[eval] calibration_fit
    = "dev"``), or out of sample (``"crossfit"``: each half of the dev documents with offsets
    fitted on the other, ``CrossFitCalibrator``); ``fitted["calibrated"]``, what test will use,
    is fitted on all of dev either way.
    ``priors``: the training label counts, which the "logit_adjusted" decode divides out.
    """
    from bertlab.calibration import BiasCalibrator, CrossFitCalibrator
    from bertlab.inference import decode_tags, fit_knn_on_train, word_logits
    from bertlab.losses.objective import evaluation_loss
    from bertlab.metrics import entity_report, unweighted_accuracy
    if splits.dev is None:
        return None, {}
    seconds, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - clock
        clock = now
    sentences = splits.dev.sentences
    logits = word_logits(model, tokenizer, sentences, **options)
    gold = [list(s.tags) for s in sentences]
    lap("dev_forward")
    fitted, bases = {}, {base_decode(d) for d in cfg.eval.decode}
    dev_calibrator = None
    if "knn" in bases:  # a forward pass over the whole training split, then the index
        fitted["knn"] = fit_knn_on_train(model, tokenizer, splits.train.sentences, k=cfg.eval.knn_k,
                                         metric=cfg.eval.knn_metric, **options)
        lap("knn_fit")
    if "calibrated" in bases:
        fitted["calibrated"] = dev_calibrator = BiasCalibrator(model.labels).fit(logits, gold)
        if cfg.eval.calibration_fit == "crossfit":
            dev_calibrator = CrossFitCalibrator(model.labels).fit(logits, gold, [s.doc_id for s in sentences])
        lap("calibration_fit")
    if "logit_adjusted" in cfg.eval.decode:  # τ of z - τ log π chosen on dev, like the calibration
        from bertlab.logit_adjustment import LogitAdjustedDecoder
        fitted["logit_adjusted"] = LogitAdjustedDecoder(model.labels, priors).fit(logits, gold)
        lap("calibration_fit")
    scores = {}
    for decode in cfg.eval.decode:
        pred = decode_tags(decode, logits, model, fitted.get("knn"),
                           fitted.get("logit_adjusted") if decode == "logit_adjusted" else dev_calibrator)
        report = entity_report(gold, pred, scheme="IOB2", mode="strict", zero_division=0)
        scores[decode] = {"f1_micro": report["micro avg"]["f1-score"], "f1_macro": report["macro avg"]["f1-score"],
                          "unweighted_accuracy": unweighted_accuracy(gold, pred)}
    lap("dev_decoding")
    ce = word_cross_entropy(logits, gold, model.labels)
    dev_loss = ce if loss is None else evaluation_loss(loss, logits, gold, model.labels)
    return {"loss": dev_loss, "ce": ce, "decodes": scores, "seconds": seconds}, fitted


def word_cross_entropy(logits: list[np.ndarray], tags: list[list[str]], labels: list[str]) -> float:
    """Mean over words of -log softmax(z)[gold] (float64): the dev cross entropy of the learning
    curves (``dev_ce``), whatever the loss trained with."""
    z = np.concatenate([l for l in logits if len(l)], axis=0).astype(np.float64) if logits else np.zeros((0, 1))
    if len(z) == 0:
        return float("nan")
    index = {l: i for i, l in enumerate(labels)}
    y = np.array([index[t] for s in tags for t in s])
    m = z.max(1)
    log_z = m + np.log(np.exp(z - m[:, None]).sum(1))
    return float(np.mean(log_z - z[np.arange(len(y)), y]))


def selection_score(select: str, dev: dict | None, decode: str, epoch: int) -> float:
    """Higher is better: the dev score ``select`` of ``decode``, minus the dev loss for "loss",
    the epoch itself for "last" and when there is no dev set. NaN counts as -inf."""
    if dev is None or select == "last":
        return float(epoch)
    value = -dev["loss"] if select == "loss" else dev["decodes"][decode][select]
    return value if value is not None and math.isfinite(value) else -math.inf


def update_best(best: dict, ev: EvalConfig, epoch: int, dev: dict | None) -> tuple[list[str], bool]:
    """Record ``epoch`` as the best of every decode whose selection score did not get worse
    (ties go to the later epoch, so a flat metric keeps the latest model, not the first).
    Returns ``(decodes whose best is now this epoch, whether any score strictly improved)``; the
    second drives early stopping, so a flat metric does not keep a run going."""
    improved, progressed = [], False
    for decode in ev.decode:
        score = selection_score(ev.select, dev, decode, epoch)
        old = best.get(decode)
        if old is None or score >= old["score"]:
            progressed = progressed or old is None or score > old["score"]
            best[decode] = {"score": score, "epoch": epoch}
            improved.append(decode)
    return improved, progressed


def save_best_folders(model, tokenizer, out_dir: Path, decodes: list[str], fitted: dict, cfg: TrainConfig,
                      epoch: int, config_dict: dict, precision: str = "fp32") -> None:
    """Save the model as the best checkpoint of each of ``decodes`` (once on disk: the other
    folders are hard links), with the decode's KNN reference or calibration beside it, and the
    precision it was scored in (``bertlab evaluate`` / ``predict`` use it, so they reproduce the
    run's own scores)."""
    from bertlab.calibration import CALIBRATION_FILE
    from bertlab.knn import KNN_FILE
    folders = [best_folder(out_dir, dec, cfg.eval.decode) for dec in decodes]
    save_best(model, tokenizer, folders[0])
    for folder in folders[1:]:
        link_folder(folders[0], folder)
    for decode, folder in zip(decodes, folders):
        write_json(folder / BEST_META, {"config": config_dict, "decode": decode, "epoch": epoch,
                                        "select": cfg.eval.select, "labels": list(model.labels),
                                        "precision": precision})
        if base_decode(decode) == "knn" and "knn" in fitted:
            fitted["knn"].save(folder / KNN_FILE)
        if base_decode(decode) == "calibrated" and "calibrated" in fitted:
            fitted["calibrated"].save(folder / CALIBRATION_FILE)
        if decode == "logit_adjusted" and "logit_adjusted" in fitted:
            from bertlab.logit_adjustment import LOGIT_ADJUSTMENT_FILE
            fitted["logit_adjusted"].save(folder / LOGIT_ADJUSTMENT_FILE)


TIME_PARTS = ("training", "dev_forward", "knn_fit", "calibration_fit", "dev_decoding", "best_model_saving",
              "checkpoints", "final_scoring")


def time_split(timing: list[dict], checkpoint_seconds: float, final_seconds: float) -> dict:
    """Where a run's seconds went (``TIME_PARTS``), from its per-epoch timing records: training
    steps, the per-epoch dev evaluation (dev forward pass, the KNN reference's forward pass over
    the training split and index, the calibration fit, decoding and scoring), saving best models,
    checkpoints, and the final scoring of every decode on dev and test."""
    out = dict.fromkeys(TIME_PARTS, 0.0)
    for t in timing:
        out["training"] += t.get("train_seconds", 0.0)
        for part, value in (t.get("dev_seconds") or {}).items():
            out[part] = out.get(part, 0.0) + value
        out["best_model_saving"] += t.get("save_seconds", 0.0)
    out["checkpoints"], out["final_scoring"] = checkpoint_seconds, final_seconds
    return out


def write_metrics_csv(path: Path, history: list[dict], timing: list[dict], decodes: list[str]) -> None:
    """``metrics.csv``: one row per finished epoch (train/dev loss, every decode's dev scores, seconds)."""
    columns = ["epoch", "step", "train_loss", "dev_loss"]
    columns += [f"dev_{m}_{d}" for d in decodes for m in ("f1_micro", "f1_macro", "unweighted_accuracy")]
    columns += [f"best_epoch_{d}" for d in decodes] + ["train_seconds", "eval_seconds"]
    lines = [",".join(columns)]
    for h, t in zip(history, timing):
        dev = h.get("dev") or {}
        row = [h["epoch"], h["step"], h.get("train_loss"), h.get("dev_loss")]
        row += [dev.get(d, {}).get(m) for d in decodes for m in ("f1_micro", "f1_macro", "unweighted_accuracy")]
        row += [(h.get("best_epochs") or {}).get(d) for d in decodes] + [t.get("train_seconds"), t.get("eval_seconds")]
        lines.append(",".join("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in row))
    write_text(path, "\n".join(lines) + "\n")


def clean_json(obj):
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python numbers, recursively."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ---- filling in what an older run did not record ---------------------------------------------------

def rescore_run(run_dir: str | os.PathLike, log=print, force: bool = False) -> bool:
    """Add the decoder-free test measurements (``mean_probability`` and ``calibration`` per decode,
    ``train_tags``) to a finished run's ``metrics.json`` from its saved best checkpoints, for runs
    trained by code that did not record them yet. The same data, windows, batch size and precision as the run's own final
    scoring; nothing else in metrics.json changes (written atomically). Returns whether it wrote."""
    import json

    from bertlab.config import config_from_dict
    from bertlab.datasets.prepare import load_splits, tag_counts
    from bertlab.checkpoint import load_pretrained
    from bertlab.inference import calibration_error, mean_probabilities, word_logits
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    test = metrics.get("test") or {}
    if not force and "train_tags" in metrics and all("mean_probability" in m and "calibration" in m
                                                      for m in test.values()):
        return False
    cfg = config_from_dict(metrics["config"], where=f"{path}: config")
    splits = load_splits(cfg.data)
    groups: dict[Path, list[str]] = {}
    for decode in test:
        groups.setdefault(best_folder(run_dir, decode, cfg.eval.decode), []).append(decode)
    for folder, decodes in groups.items():
        if not (folder / "config.json").exists():  # HMM / feature-CRF runs, BiLSTMs: no softmax checkpoint
            log(f"{run_dir.name}: {folder.name}/ holds no saved encoder; {', '.join(decodes)} left as they were")
            continue
        model, tokenizer = load_pretrained(folder)
        model.eval()
        logits = word_logits(model, tokenizer, splits.test.sentences, cfg.data.max_length, cfg.data.stride,
                             cfg.train.eval_batch_size, metrics.get("precision") or "fp32",
                             pad_to_multiple_of=cfg.train.pad_to_multiple_of)
        probabilities = mean_probabilities(logits, model.labels)
        calibration = calibration_error(logits, [list(s.tags) for s in splits.test.sentences], model.labels)
        for decode in decodes:
            test[decode]["mean_probability"] = probabilities
            test[decode]["calibration"] = calibration
    metrics["train_tags"] = tag_counts(splits.train.sentences)
    write_json(path, clean_json(metrics))
    log(f"{run_dir.name}: mean test probabilities and calibration of {', '.join(test)} recorded")
    return True


def rescore_main(argv: list[str] | None = None) -> int:
    """``bertlab rescore STUDY_DIR [--force]``: fill in the decoder-free test measurements (each label's
    mean predicted probability, the training words per tag) that the code a study's runs were
    trained with did not record, from each finished run's best checkpoints; then rewrite
    results.jsonl. Runs that already have them are skipped."""
    import argparse
    import sys

    from bertlab.results import write_results
    ap = argparse.ArgumentParser(prog="bertlab rescore", description=(
        "Fill in the decoder-free test measurements (each label's mean predicted probability, the "
        "training words per tag) that older code did not record, from each finished run's best "
        "checkpoints, then rewrite results.jsonl. Runs that have them are skipped."))
    ap.add_argument("study", metavar="STUDY_DIR", help="a study folder of run folders, e.g. runs/random_labels")
    ap.add_argument("--force", action="store_true", help="measure again even where metrics.json has the values")
    args = ap.parse_args(argv)
    sdir = Path(args.study)
    runs = sorted(p.parent for p in sdir.glob("*/metrics.json"))
    if not runs:
        print(f"bertlab rescore: {sdir}: no finished run folders (*/metrics.json)", file=sys.stderr)
        return 2
    try:
        wrote = sum(rescore_run(r, force=args.force) for r in runs)
    except Exception as e:
        return fail("rescore", e, also=(ValueError, KeyError))
    print(f"{wrote} of {len(runs)} runs rescored; wrote {write_results(sdir)}")
    return 0
