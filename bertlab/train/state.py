"""What a training run records as it goes, and what it needs to stop and go on.

``checkpoint.pt``: one file, written atomically at every checkpoint: model and optimizer state,
the RNG states of every process, ``Progress`` (step, epoch, position in the epoch, best-so-far
per decode, history) and the config. ``torch.load(weights_only=True)`` reads it: nothing is
unpickled. A resumed run rebuilds the epoch's batch order from ``(seed, epoch)`` and continues
bit-identically. ``log.jsonl`` (``JsonlLog``) is truncated back to the checkpoint on resume.
``StepLosses`` keeps the step losses on the device until a log line or checkpoint reads them;
a non-finite one stops training (``NonFiniteLossError``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bertlab.errors import BertlabError
from bertlab.files import write_with
from bertlab.selection import clean_json
from bertlab.train.runtime import Dist

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "bertlab-train-checkpoint/1"


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint (as JSON)."""
    step: int = 0                  # optimisation steps done
    epoch: int = 0                 # the epoch in progress
    micro_batch: int = 0           # next global micro-batch of that epoch
    best_dev_f1: float = -1.0      # the first decode's dev micro F1 at its best epoch
    best_epoch: int = -1           # the first decode's best epoch
    best: dict = field(default_factory=dict)  # decode -> {"score": selection score, "epoch": its best epoch}
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    training_done: bool = False
    epoch_losses: list = field(default_factory=list)   # the epoch's step losses so far (global)
    unlogged_losses: list = field(default_factory=list)  # step losses read since the last log line
    epoch_train_seconds: float = 0.0
    epoch_cpu_seconds: float = 0.0  # the process's CPU seconds (all threads) over the same stretches
    epoch_tokens: int = 0
    history: list = field(default_factory=list)        # one dict per finished epoch
    timing: list = field(default_factory=list)         # its seconds and tokens/s
    log_bytes: int = 0             # size of log.jsonl when the checkpoint was written
    checkpoint_seconds: float = 0.0  # time spent writing checkpoints (the report's time split)


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch CPU, CUDA) as tensors and plain numbers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"python": [version, list(internal), gauss_next],
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """One seed for python ``random``, numpy and torch (CPU and CUDA): init, dropout and any
    callback's randomness. Batch order has its own per-epoch seed (``epoch_seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, model, optimizer, progress: Progress, config: dict, rng: list,
                    inputs: dict | None = None, scaler: dict | None = None) -> None:
    """Write the checkpoint atomically (``bertlab.files.write_with``: temp file, fsync, rename).
    Only tensors, strings and numbers are stored, so ``torch.load(weights_only=True)`` reads it
    back (nothing is unpickled)."""
    obj = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
           "rng": rng, "progress": json.dumps(dataclasses.asdict(progress)), "config": json.dumps(config),
           "inputs": json.dumps(inputs or {})}
    if scaler is not None:  # fp16's GradScaler: its scale and growth tracker (plain numbers)
        obj["scaler"] = scaler
    try:
        write_with(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as e:
        # torch reports a failed write (a full disk) as "[enforce fail at inline_container.cc:672]
        # unexpected pos", raised while handling the OSError, whose file name is None: say what
        # failed and name the checkpoint
        x, seen = e, []
        while x is not None and x not in seen and not (isinstance(x, OSError) and x.errno):
            seen.append(x)
            x = x.__cause__ or x.__context__
        if x is None or x in seen:
            raise
        raise OSError(x.errno, x.strerror or os.strerror(x.errno), str(path)) from e


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}); delete it "
                           f"or train with --no-resume") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path}: not a bertlab training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


class NonFiniteLossError(BertlabError, RuntimeError):
    """The loss (or the parameters) became NaN or infinite; the message names the step and epoch.
    The last good checkpoint and the best model so far are left untouched."""


class JsonlLog:
    """``log.jsonl``: one JSON object a line, appended and flushed as it happens (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool, keep_bytes: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if keep_bytes is None:  # a fresh run
            path.write_text("", encoding="utf-8")
        elif path.exists() and path.stat().st_size > keep_bytes:
            with open(path, "r+b") as f:  # drop what was logged after the checkpoint we resume from
                f.truncate(keep_bytes)

    def write(self, **row) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(clean_json(row)) + "\n")

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.enabled and self.path.exists() else 0


class StepLosses:
    """Step losses (and gradient norms) stay on the device until a log line or a checkpoint reads
    them, all at once, so reading them costs one host sync per log line, not one per step. (Not
    the loop's only syncs: a BTL step asks which types the batch holds, ``torch.unique(...).cpu()``
    in ``bertlab.losses.btl``, and the BERT encoder checks whether a batch has padding,
    ``attention_mask.all()`` in ``bertlab.models.bert``, once per micro-batch.) A non-finite value
    stops training when it is read."""

    def __init__(self, progress: Progress, ckpt_path: Path):
        self.pending: list = []  # (step, loss tensor, grad-norm tensor or None) not yet read
        self.since_log: list = list(progress.unlogged_losses)  # read since the last log line
        self.ckpt_path = ckpt_path
        self.last_good_step = None  # of the last checkpoint written in this session

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        self.pending.append((step, loss, grad_norm))

    def read(self, progress: Progress, d: Dist) -> float | None:
        """Read the pending values into ``progress.epoch_losses``; returns the last gradient norm."""
        if not self.pending:
            return None
        values = torch.stack([l for _, l, _ in self.pending])
        if d.world_size > 1:
            torch.distributed.all_reduce(values)
        values = values.tolist()
        norms = ([g.item() for _, _, g in self.pending] if self.pending[0][2] is not None
                 else [0.0] * len(self.pending))
        for (step, _, _), value, norm in zip(self.pending, values, norms):
            if not (math.isfinite(value) and math.isfinite(norm)):
                what = f"loss {value}" if not math.isfinite(value) else f"gradient norm {norm} (loss {value})"
                raise NonFiniteLossError(
                    f"non-finite {what} at step {step} (epoch {progress.epoch}); training stopped. "
                    + (f"The last good checkpoint is {self.ckpt_path} (step {self.last_good_step})."
                       if self.last_good_step is not None else "No checkpoint was written in this session."))
        progress.epoch_losses.extend(values)
        self.since_log.extend(values)
        self.pending.clear()
        return norms[-1]

    def log_mean(self) -> float:
        """The mean loss since the last log line (and forget it)."""
        mean = math.fsum(self.since_log) / max(len(self.since_log), 1)
        self.since_log.clear()
        return mean
