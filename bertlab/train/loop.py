"""The training loop: one TOML config in, a trained model, its learning curves and scores out.

    bertlab.config             TrainConfig: the [data] [model] [loss] [sampler] [optim] [train] [eval] sections
    bertlab.train.setup        ``prepare``: resume or start, data, model, objective, optimizer, schedule
    bertlab.losses.objective   ``step_loss``: the loss of one micro-batch (the loop's one loss call)
    here                       ``train`` and ``_train``: the loop, top to bottom
    bertlab.train.scoring      the end of an epoch (dev scores, best models) and of training (metrics.json)
    bertlab.train.state        checkpoint.pt, log.jsonl, the step losses
    bertlab.train.runtime      processes, device, precision
    bertlab.callbacks          the hooks a study or an instrument (gradient flow) plugs in

The step: ``grad_accum`` micro-batches, each loss a *sum* over its labelled tokens divided by the
labelled-token count of the whole accumulated (global) batch (``Objective.normaliser``); backward;
clip; the learning rate from ``lr_factor`` (linear warmup/decay); AdamW/SGD. Batch order per epoch
comes from a seed derived from ``(seed, epoch)``, so a resumed run sees the same batches.

Multi-process data parallel: launched by ``torchrun`` (``WORLD_SIZE > 1``), every rank builds the
same global batches and takes its rows ``rank::world_size``; gradients (views of one flat buffer)
are summed across ranks with one all_reduce per step, and only rank 0 writes files. See
docs/training.md.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch

from bertlab.batching import collate, epoch_batches, shard
from bertlab.callbacks import CallbackList
from bertlab.config import TrainConfig, load_config
from bertlab.files import FolderBusy, folder_lock
from bertlab.losses.objective import step_loss
from bertlab.losses.token import TokenLoss
from bertlab.train.runtime import Dist, barrier, broadcast_value, setup_distributed, show_progress
from bertlab.train.scoring import end_of_epoch, finish
from bertlab.train.setup import Setup, lr_factor, prepare
from bertlab.train.state import (CHECKPOINT, JsonlLog, NonFiniteLossError, Progress, StepLosses, rng_state,
                                 save_checkpoint)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training, saying where it stood: ``step``, the optimisation steps
    completed (None while still setting up), of ``total_steps``, and ``checkpoint_step``, the step
    of the checkpoint a re-run resumes from (None when there is none). Still a KeyboardInterrupt,
    so whatever stops on Ctrl-C (a study, a notebook cell) stops."""

    def __init__(self, out_dir: Path, step: int | None = None, total_steps: int | None = None,
                 checkpoint_step: int | None = None):
        self.out_dir, self.step, self.total_steps, self.checkpoint_step = out_dir, step, total_steps, checkpoint_step
        if step is None:
            message = f"interrupted while setting up {out_dir}, before any step; re-run the same command"
        elif checkpoint_step is None:
            message = (f"interrupted after step {step} of {total_steps} in {out_dir}; no checkpoint was written "
                       f"yet, so re-running the same command starts over")
        else:
            message = (f"interrupted after step {step} of {total_steps}; checkpoint at step {checkpoint_step} "
                       f"({out_dir / CHECKPOINT}); re-run the same command to resume")
        super().__init__(message)


def train(config: TrainConfig | str | os.PathLike | dict, out_dir: str | os.PathLike, callbacks=(),
          resume: bool = True, log=None, loss: TokenLoss | None = None) -> dict:
    """Train one model; returns the metrics written to ``out_dir/metrics.json``.

    ``config``: a TrainConfig (or anything ``load_config`` reads). ``callbacks``: objects with the
    hooks of ``bertlab.callbacks.Callback``. ``resume``: continue from ``out_dir/checkpoint.pt`` if
    there is one (a finished run just returns its metrics); False starts over. ``log``: a function
    taking one line of progress text (default: stderr, rank 0 only). ``loss``: a ``TokenLoss``
    (e.g. a subclass with its own ``per_token``) instead of the ``[loss]`` section's, used by every
    sampler; ``metrics.json`` records it (its class and fields) as ``config.loss``. From TOML the
    same is ``[loss] class = "package.module:ClassName"``. Raises ConfigError for a bad config and
    NonFiniteLossError if training diverges.
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    d = setup_distributed(cfg.train.device)
    reached: dict = {}  # where the loop stands, for the message of a Ctrl-C
    try:
        with run_folder_lock(Path(out_dir), d):
            return _train(cfg, Path(out_dir), CallbackList(callbacks), resume, log, d, loss, reached)
    except KeyboardInterrupt:
        if "progress" not in reached:  # still setting up
            raise TrainingInterrupted(Path(out_dir)) from None
        losses = reached["losses"]  # the checkpoint written last in this session, else the one resumed from
        checkpoint_step = losses.last_good_step if losses.last_good_step is not None else reached["resumed_at"]
        raise TrainingInterrupted(Path(out_dir), reached["progress"].step, reached["total_steps"],
                                  checkpoint_step) from None
    finally:
        if d.initialised_here:
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def run_folder_lock(out_dir: Path, d: Dist):
    """Hold ``out_dir``'s lock (``bertlab.files.folder_lock``) for the whole run, so that a second
    training into the same folder is refused (FolderBusy, naming the holder) instead of mixing
    two runs' checkpoints, logs and models. Rank 0 holds it for all the processes of a run; the
    others hear whether it got it."""
    with contextlib.ExitStack() as stack:
        busy = None
        if d.main:
            try:
                stack.enter_context(folder_lock(out_dir))
            except FolderBusy as e:
                busy = str(e)
        busy = broadcast_value(busy, d)
        if busy is not None:
            raise FolderBusy(busy)
        yield


# one function on purpose: the loop, read top to bottom, is what this module is for (a step's
# forward, loss, backward and update, then the epoch's end), as in nanoGPT's train.py
def _train(cfg: TrainConfig, out_dir: Path, callbacks: CallbackList, resume: bool, log, d: Dist,
           loss_fn: TokenLoss | None, reached: dict) -> dict:
    """The loop, top to bottom: per step the forward pass, the loss, backward, clipping, the
    learning rate and the optimizer step; per epoch dev scores, the best model per decode and a
    checkpoint; at the end the chosen models scored on dev and test. ``reached`` is filled with
    the loop's progress and step losses (``train`` reads them to say where a Ctrl-C stopped it)."""
    from tqdm import tqdm
    if log is None:
        log = (lambda line: tqdm.write(line, file=sys.stderr)) if d.main else (lambda line: None)
    s = prepare(cfg, out_dir, resume, log, d, loss_fn)
    if isinstance(s, dict):  # the run had finished: its metrics
        return s
    model, optimizer, objective, progress = s.model, s.optimizer, s.objective, s.progress
    if cfg.train.tensorboard and d.main:
        from bertlab.callbacks import TensorBoardLogger
        callbacks.callbacks.append(TensorBoardLogger(out_dir / "tensorboard", purge_step=progress.step + 1))
    accum = cfg.optim.grad_accum
    jlog = JsonlLog(out_dir / "log.jsonl", d.main, progress.log_bytes if s.resumed else None)
    jlog.write(event="resume" if s.resumed else "start", step=progress.step, epoch=progress.epoch,
               device=str(s.device), precision=s.precision, world_size=d.world_size, n_parameters=s.n_params,
               train_windows=len(s.windows), micro_batches_per_epoch=s.n_micro, steps_per_epoch=s.steps_per_epoch,
               total_steps=s.total_steps, warmup_steps=s.warmup_steps, time=time.time(),
               **({"epochs_from": s.epochs_from} if s.epochs_from is not None else {}))
    losses = StepLosses(progress, s.ckpt_path)
    reached.update(progress=progress, losses=losses, total_steps=s.total_steps,
                   resumed_at=progress.step if s.resumed else None)
    clock = _clocks()  # start of the stretch of training time not yet added to progress

    while not progress.training_done:
        epoch = progress.epoch
        batches = epoch_batches(s.lengths, cfg.sampler.batch_size, cfg.train.seed, epoch)
        steps = [batches[i:i + accum] for i in range(0, len(batches), accum)]
        bar = tqdm(total=len(steps), initial=progress.micro_batch // accum, desc=f"epoch {epoch}", unit="step",
                   disable=not (d.main and show_progress(cfg.train.progress)), file=sys.stderr, dynamic_ncols=True)
        if progress.micro_batch == 0:
            losses.since_log.clear()  # a log line's mean loss never mixes two epochs
        if objective.start_epoch(epoch):  # [loss] drw_epoch: the class weights switch on (or off)
            weights = objective.drw_weights
            jlog.write(event="reweight", epoch=epoch, step=progress.step, weights=weights)
            log(f"epoch {epoch}: deferred re-weighting ([loss] drw_epoch = {cfg.loss.drw_epoch}): class weights "
                f"{'on' if weights is not None else 'off'}")
        log_start, log_tokens = time.perf_counter(), 0
        for k in range(progress.micro_batch // accum, len(steps)):
            if cfg.train.max_steps and progress.step >= cfg.train.max_steps:
                break
            step, group = progress.step + 1, steps[k]
            # -- forward and loss of each micro-batch, backward into .grad
            normaliser = objective.normaliser([i for b in group for i in b])  # the whole global step's
            step_total = torch.zeros((), dtype=torch.float32, device=s.device)
            for batch in device_batches(group, s, d):
                with s.autocast():
                    loss_sum, logits = step_loss(model, batch, objective)  # logits None for naive BTL
                loss = loss_sum.float() / normaliser
                callbacks.on_batch(step, model, batch, logits, loss)
                s.scaler.scale(loss).backward()  # fp16: scaled; otherwise loss.backward()
                step_total += loss.detach()
            if s.flat_grad is not None:
                torch.distributed.all_reduce(s.flat_grad)  # sum over processes: one collective per step
            s.scaler.unscale_(optimizer)  # fp16: true gradients from here on
            callbacks.after_backward(step, model)
            grad_norm = optimizer_step(cfg, s, progress.step)  # clip, learning rate, AdamW/SGD
            callbacks.after_optimizer_step(step, model, optimizer)
            optimizer.zero_grad(set_to_none=s.flat_grad is None)  # multi-process: .grad stays a view of flat_grad
            # -- where we are; losses stay on the device until a log line or checkpoint reads them
            progress.step, progress.micro_batch = step, min((k + 1) * accum, len(batches))
            tokens = sum(s.lengths[i] for b in group for i in b)
            progress.epoch_tokens += tokens
            log_tokens += tokens
            losses.add(step, step_total, grad_norm)
            bar.update(1)
            if step % cfg.train.log_every == 0:
                row, log_start = log_line(cfg, losses, progress, d, optimizer, log_tokens, log_start)
                jlog.write(event="step", step=step, epoch=epoch, **row)
                callbacks.on_log(step, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:,.0f}", lr=f"{row['lr']:.2e}")
                log_tokens = 0
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                losses.read(progress, d)
                _charge_training_time(progress, clock)
                write_checkpoint(s, progress, losses, jlog, d)
                callbacks.on_checkpoint(progress.step)
                clock = _clocks()
        bar.close()
        losses.read(progress, d)
        _charge_training_time(progress, clock)

        # -- end of epoch: dev scores of every decode, each decode's best model, early stopping
        record = end_of_epoch(cfg, s, out_dir, log, d)
        jlog.write(event="epoch", **record, **{k: v for k, v in progress.timing[-1].items() if k != "epoch"})
        callbacks.on_epoch_end(epoch, dict(record))
        clock = _clocks()  # the next epoch's clock
        write_checkpoint(s, progress, losses, jlog, d)
        callbacks.on_checkpoint(progress.step)

    metrics = finish(cfg, s, out_dir, jlog, log, d)
    callbacks.on_train_end(metrics)
    return metrics


def optimizer_step(cfg: TrainConfig, s: Setup, step: int) -> torch.Tensor | None:
    """Clip the gradients, set the learning rate of (0-based) ``step``, step the optimizer (fp16:
    through the GradScaler, which skips a step with inf/NaN gradients). Returns the gradient norm
    before clipping (a device tensor; None without clipping)."""
    grad_norm = None
    if cfg.optim.clip_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(s.params, cfg.optim.clip_grad_norm, foreach=True)
        if s.scaler.is_enabled():  # an fp16 overflow skips the step (and lowers the scale): not divergence
            grad_norm = torch.nan_to_num(grad_norm, nan=0.0, posinf=0.0)
    lr_scale = lr_factor(step, s.total_steps, s.warmup_steps, cfg.optim.schedule)
    for g in s.optimizer.param_groups:
        g["lr"] = g["initial_lr"] * lr_scale
    s.scaler.step(s.optimizer)  # optimizer.step(), skipped by fp16 on inf/NaN gradients
    s.scaler.update()
    return grad_norm


def log_line(cfg: TrainConfig, losses: StepLosses, progress, d: Dist, optimizer, tokens: int,
             since: float) -> tuple[dict, float]:
    """``(row, now)``: a ``log.jsonl`` step line, the mean loss since the last line, the learning
    rate, the tokens per second since ``since`` (``time.perf_counter()``) and the last gradient
    norm. Reading the step losses is a host sync, so the clock is read after it."""
    norm = losses.read(progress, d)
    now = time.perf_counter()
    row = dict(loss=losses.log_mean(), lr=optimizer.param_groups[0]["lr"], tokens_per_s=tokens / max(now - since, 1e-9),
               grad_norm=norm if cfg.optim.clip_grad_norm > 0 else None)
    return row, now


def device_batches(group: list[list[int]], s: Setup, d: Dist) -> list[dict]:
    """This process's rows of each global micro-batch of a step, padded and on the device."""
    out = []
    for b in group:
        rows = shard(b, d.rank, d.world_size)
        if rows:  # a process with no rows only adds its zero gradient
            batch = collate([s.windows[i] for i in rows], pad_token_id=s.tokenizer.pad_token_id,
                            pad_to_multiple_of=s.pad_multiple)
            if s.device.type == "cuda":  # pinned host memory: the copy overlaps with compute
                batch = {key: v.pin_memory() for key, v in batch.items()}
            out.append({key: v.to(s.device, non_blocking=True) for key, v in batch.items()})
    return out


def write_checkpoint(s: Setup, progress: Progress, losses: StepLosses, jlog: JsonlLog, d: Dist) -> None:
    """checkpoint.pt (rank 0 writes it; every rank's RNG state goes in); refused if the parameters
    are no longer finite, so the last good checkpoint survives."""
    t0 = time.perf_counter()
    norm = torch.nn.utils.get_total_norm(s.params, foreach=True)
    if not math.isfinite(float(norm)):
        where = (f"{s.ckpt_path} left as it was (step {losses.last_good_step})" if losses.last_good_step is not None
                 else "no checkpoint was written in this session")
        raise NonFiniteLossError(f"the parameters became non-finite by step {progress.step} "
                                 f"(epoch {progress.epoch}); training stopped, {where}")
    rng = [rng_state()]
    if d.world_size > 1:
        rng = [None] * d.world_size
        torch.distributed.all_gather_object(rng, rng_state())
    if d.main:
        progress.log_bytes = jlog.size
        progress.unlogged_losses = list(losses.since_log)
        save_checkpoint(s.ckpt_path, s.model, s.optimizer, progress, s.config_dict, rng, s.inputs,
                        scaler=s.scaler.state_dict() if s.scaler.is_enabled() else None)
    losses.last_good_step = progress.step
    barrier(d)
    progress.checkpoint_seconds += time.perf_counter() - t0


def _clocks() -> tuple[float, float]:
    """Now, as (wall seconds, this process's CPU seconds over all its threads)."""
    return time.perf_counter(), time.process_time()


def _charge_training_time(progress, since: tuple[float, float]) -> None:
    """Adds the wall and CPU seconds since ``since`` (``_clocks()``) to the epoch's training time."""
    wall, cpu = _clocks()
    progress.epoch_train_seconds += wall - since[0]
    progress.epoch_cpu_seconds += cpu - since[1]
