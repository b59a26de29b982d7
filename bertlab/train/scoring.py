"""The end of an epoch and the end of training: dev scores, each decode's best model, metrics.json.

``end_of_epoch`` scores the model on dev with every decode (``bertlab.selection``), saves the
best model of each decode that improved, decides early stopping and moves ``Progress`` to the next
epoch; ``finish`` scores each decode's chosen model on dev and test and writes ``metrics.json``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from bertlab.config import TrainConfig
from bertlab.datasets.prepare import data_repairs, mention_counts, tag_counts
from bertlab.files import write_json
from bertlab.selection import (clean_json, evaluate_dev, final_evaluation, save_best_folders, time_split,
                               update_best, write_metrics_csv)
from bertlab.train.runtime import Dist, broadcast_value
from bertlab.train.setup import Setup, training_done
from bertlab.train.state import JsonlLog, NonFiniteLossError


def fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def check_finite(params: list, where: str) -> None:
    """NonFiniteLossError if any parameter holds NaN/inf (checked before a model is saved as best)."""
    norm = torch.nn.utils.get_total_norm(params, foreach=True)
    if not math.isfinite(float(norm)):
        raise NonFiniteLossError(f"the parameters became non-finite {where}; training stopped, the best "
                                 f"model saved so far (if any) is kept")


def cpu_share(cpu_seconds: float, wall_seconds: float, threads: int) -> float | None:
    """The share of its cores a CPU run had: CPU seconds over wall seconds × intra-op threads. About 1
    when the run had its cores to itself (a little less with several threads, which wait on each
    other); about 1/2 when another busy process shared them, so its seconds overstate its cost."""
    share = cpu_seconds / (wall_seconds * threads) if wall_seconds > 0 and threads > 0 else math.nan
    return share if math.isfinite(share) else None  # NaN: an epoch resumed from a checkpoint without CPU seconds


def run_cpu_share(timing: list[dict]) -> float | None:
    """The run's CPU share over its epochs (``cpu_share`` of the summed seconds); None where an epoch
    has none (an accelerator, or a run resumed from a checkpoint written before it was measured)."""
    if not timing or any("cpu_seconds" not in t for t in timing):
        return None
    return cpu_share(sum(t["cpu_seconds"] for t in timing),
                     sum(t["train_seconds"] * t["threads"] for t in timing), 1)


def end_of_epoch(cfg: TrainConfig, s: Setup, out_dir: Path, log, d: Dist) -> dict:
    """Dev scores of every decode, the best model of each decode that improved, early stopping;
    appends the epoch's record to ``progress.history`` (and its seconds to ``progress.timing``)
    and moves ``progress`` to the next epoch. Returns the record."""
    progress, epoch, primary = s.progress, s.progress.epoch, cfg.eval.decode[0]
    t0 = time.perf_counter()
    check_finite(s.params, f"at the end of epoch {epoch} (step {progress.step})")  # never saved as best
    dev, fitted = (evaluate_dev(s.model, s.tokenizer, s.splits, cfg, s.eval_options, s.objective.label_counts,
                                s.objective.configured) if d.main else (None, {}))
    dev = broadcast_value(dev, d)
    improved, progressed = update_best(progress.best, cfg.eval, epoch, dev)
    t_save = time.perf_counter()
    if improved and d.main:
        save_best_folders(s.model, s.tokenizer, out_dir, improved, fitted, cfg, epoch, s.config_dict, s.precision)
    save_seconds = time.perf_counter() - t_save
    progress.epochs_without_improvement = 0 if progressed else progress.epochs_without_improvement + 1
    progress.best_epoch = progress.best[primary]["epoch"]
    if dev is not None and primary in improved:
        progress.best_dev_f1 = dev["decodes"][primary]["f1_micro"]
    n_steps, seconds = len(progress.epoch_losses), progress.epoch_train_seconds
    record = {"epoch": epoch, "step": progress.step,
              "train_loss": math.fsum(progress.epoch_losses) / n_steps if n_steps else None,
              "dev_loss": dev["loss"] if dev is not None else None,
              "dev_ce": dev["ce"] if dev is not None else None,
              "dev": dev["decodes"] if dev is not None else None,
              "dev_f1": dev["decodes"][primary]["f1_micro"] if dev is not None else None,
              "best_dev_f1": progress.best_dev_f1 if dev is not None else None,
              "best_epoch": progress.best_epoch, "best_epochs": {k: v["epoch"] for k, v in progress.best.items()}}
    timing = {"epoch": epoch, "train_seconds": seconds, "eval_seconds": time.perf_counter() - t0,
              "dev_seconds": (dev or {}).get("seconds"), "save_seconds": save_seconds,
              "train_tokens": progress.epoch_tokens, "tokens_per_s": progress.epoch_tokens / max(seconds, 1e-9)}
    if s.device.type == "cpu":  # on an accelerator the CPU waits on the device: no share to read
        threads = torch.get_num_threads()
        timing.update(cpu_seconds=progress.epoch_cpu_seconds, threads=threads,
                      cpu_share=cpu_share(progress.epoch_cpu_seconds, seconds, threads))
    progress.history.append(record)
    progress.timing.append(timing)
    if d.main:
        write_metrics_csv(out_dir / "metrics.csv", progress.history, progress.timing, cfg.eval.decode)
    scores = ", ".join(f"{k} {fmt(v['f1_micro'])}" for k, v in (record["dev"] or {}).items())
    log(f"epoch {epoch}: train loss {fmt(record['train_loss'])}, dev loss {fmt(record['dev_loss'])}, "
        f"dev micro F1 {scores or '-'} (best epoch {record['best_epochs']}), "
        f"{seconds:.1f}s + {timing['eval_seconds']:.1f}s eval, {timing['tokens_per_s']:,.0f} tokens/s")
    patience = cfg.train.early_stopping_patience
    progress.stopped_early = bool(patience and progress.epochs_without_improvement >= patience)
    if progress.stopped_early:
        log(f"early stopping: no decode's dev {cfg.eval.select} improved for {patience} epoch(s)")
    progress.epoch += 1
    progress.micro_batch = 0
    progress.epoch_losses, progress.epoch_tokens = [], 0
    progress.epoch_train_seconds = progress.epoch_cpu_seconds = 0.0
    progress.training_done = training_done(cfg, progress)
    return record


def finish(cfg: TrainConfig, s: Setup, out_dir: Path, jlog: JsonlLog, log, d: Dist) -> dict:
    """Each decode's best model scored on dev and test; ``metrics.json`` (rank 0), every rank's result."""
    metrics = None
    progress = s.progress
    if d.main:
        best_epochs = {k: v["epoch"] for k, v in progress.best.items()}
        t0 = time.perf_counter()
        metrics = final_evaluation(cfg, s.model, s.tokenizer, s.splits, out_dir, s.eval_options, log, best_epochs,
                                   s.objective.label_counts)
        final_seconds = time.perf_counter() - t0
        metrics.update(config=s.config_dict, labels=s.splits.labels, params=s.n_params, device=str(s.device),
                       precision=s.precision, world_size=d.world_size, steps=progress.step,
                       epochs=len(progress.history), best_epoch=progress.best_epoch,
                       best_epochs=best_epochs, select=cfg.eval.select,
                       best_dev_f1=progress.best_dev_f1 if s.splits.dev is not None else None,
                       stopped_early=progress.stopped_early, history=progress.history,
                       train_mentions=mention_counts(s.splits.train.sentences),
                       train_tags=tag_counts(s.splits.train.sentences),
                       train_seconds=sum(t["train_seconds"] for t in progress.timing),
                       cpu_share=run_cpu_share(progress.timing),
                       time_split=time_split(progress.timing, progress.checkpoint_seconds, final_seconds),
                       timing=progress.timing)
        if cfg.data.repair:  # every tag the forgiving read changed ([data] repair = true), file:line
            metrics["data_repairs"] = data_repairs(s.splits)
        if cfg.data.folds:  # which cross-validation fold, and its document counts (the report's n_test / n_train)
            metrics["fold"] = s.splits.test.notes["fold"]
        write_json(out_dir / "metrics.json", clean_json(metrics))
        if not cfg.train.keep_checkpoint:  # finished: resume reads metrics.json, only more epochs needed it
            s.ckpt_path.unlink(missing_ok=True)
            log(f"deleted {s.ckpt_path} ([train] keep_checkpoint = false)")
        jlog.write(event="end", step=progress.step, best_epoch=progress.best_epoch,
                   best_dev_f1=metrics["best_dev_f1"], time=time.time())
        for split in ("dev", "test"):
            for decode, m in metrics.get(split, {}).items():
                log(f"{split} {decode}: entity micro F1 {m['micro_f1']:.4f}")
    return broadcast_value(metrics, d)
