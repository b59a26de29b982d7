"""The training loop: one TOML config in, a trained model, its learning curves and scores out.

    bertlab.config         TrainConfig: the [data] [model] [loss] [sampler] [optim] [train] [eval] sections
    bertlab.datasets       the splits and their windows (bertlab.datasets.prepare)
    here                   the model, the objective (one loss object for every sampler), the optimizer,
                           and ``_train``: the loop, top to bottom
    bertlab.selection      dev scores per epoch, the best checkpoint per decode, the final scores
    bertlab.resume         checkpoint.pt: exact resume
    bertlab.callbacks      the hooks a study or an instrument (gradient flow) plugs in

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

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertlab.callbacks import CallbackList
from bertlab.config import (ConfigError, ModelConfig, OptimConfig, TrainConfig, config_differences,
                            config_to_dict, has_crf, load_config, read_config_file)
from bertlab.datasets.prepare import (Splits, data_repairs, encode_corpus, load_splits, mention_counts, tag_counts,
                                      untrained_types)
from bertlab.errors import EXIT_INTERRUPTED, BertlabError, debug_requested, fail
from bertlab.files import FolderBusy, folder_lock, remove_path, write_json, write_text
from bertlab.inference import check_window
from bertlab.losses import TokenLoss, build_loss, label_counts
from bertlab.resume import (CHECKPOINT, Progress, load_checkpoint, rng_state, save_checkpoint, seed_everything,
                            set_rng_state)
from bertlab.sampling import (btl_fused_loss, btl_naive_loss, collate, length_bucketed_batches, pad_multiple,
                              resampling_scores, sentence_repeats)
from bertlab.selection import (clean_json, evaluate_dev, final_evaluation, save_best_folders, time_split,
                               update_best, write_metrics_csv)


class NonFiniteLossError(BertlabError, RuntimeError):
    """The loss (or the parameters) became NaN or infinite; the message names the step and epoch.
    The last good checkpoint and the best model so far are left untouched."""


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


# =============================================================================================
# 1. The model


def build_model_and_tokenizer(cfg: ModelConfig, labels: list[str], train_corpus):
    """``(model, tokenizer)`` for the ``[model]`` section; the model is in train mode, on the CPU.

    path / builtin: a Hugging Face folder (``load_pretrained``), with a new head for ``labels``.
    preset: random init (``build_model``, ``overrides`` set config fields), the tokenizer from
    ``tokenizer`` or else the builtin checkpoint. arch: a BiLSTM baseline (``bertlab.baselines``)
    with a word vocabulary built from the training corpus.
    """
    from bertlab import checkpoint
    from bertlab.models.heads import TokenClassifier
    from bertlab.tokenization import Tokenizer
    if cfg.arch:
        return build_bilstm(cfg, labels, train_corpus)
    # a damaged checkpoint (truncated safetensors, a vocab.txt without [CLS]) names its file in a
    # ValueError: a config problem, one line, not a traceback
    try:
        if cfg.preset:
            model = checkpoint.build_model(cfg.preset, labels, **cfg.overrides)
            tokenizer = Tokenizer.from_pretrained(cfg.tokenizer or checkpoint.builtin_path(cfg.builtin))
        else:  # the config checked that overrides are only given with preset or arch
            model, tokenizer = checkpoint.load_pretrained(cfg.path or checkpoint.builtin_path(cfg.builtin),
                                                          labels=labels)
            if cfg.num_layers:
                checkpoint.keep_first_layers(model, cfg.num_layers)
            if cfg.tokenizer:
                tokenizer = Tokenizer.from_pretrained(cfg.tokenizer)
    except ValueError as e:
        raise ConfigError(f"[model] {e}") from None
    if tokenizer is None:  # a pretrained folder without tokenizer files, and no [model] tokenizer
        raise ConfigError(f"[model] {cfg.path or cfg.builtin}: the checkpoint has no tokenizer files; "
                          f"set [model] tokenizer to a folder with vocab.txt or tokenizer.json")
    if cfg.head == "crf" and getattr(model, "head", "softmax") != "crf":
        crf_model = TokenClassifier(model.encoder, labels, head="crf")
        crf_model.classifier.load_state_dict(model.classifier.state_dict())
        model = crf_model
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"[model] the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                          f"{model.config.vocab_size}")
    model.train()
    return model, tokenizer


def build_bilstm(cfg: ModelConfig, labels: list[str], train_corpus):
    """A BiLSTM(-CRF) tagger over a word vocabulary of the training corpus; ``overrides`` may set
    embedding_dim, lstm_hidden_size, num_layers, dropout (BiLSTMTagger) and min_freq (vocabulary)."""
    from bertlab.baselines import BiLSTMTagger, WordTokenizer
    options = dict(cfg.overrides)
    tokenizer = WordTokenizer.build([s.tokens for s in train_corpus.sentences], min_freq=options.pop("min_freq", 1))
    head = "crf" if cfg.arch == "bilstm_crf" else cfg.head
    model = BiLSTMTagger(len(tokenizer), labels, head=head, **options)
    model.train()
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# =============================================================================================
# 2. Batches


def epoch_seed(seed: int, epoch: int) -> int:
    """The batch-order seed of one epoch, a hash of ``(seed, epoch)``: every epoch gets its own
    order, and a resumed run rebuilds exactly the order it was interrupted in."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global micro-batches of one epoch (window indices), shuffled and length-bucketed."""
    return length_bucketed_batches(lengths, batch_size, shuffle=True, seed=epoch_seed(seed, epoch))


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This process's rows of a global micro-batch: every ``world_size``-th row from ``rank``
    (rows are length-sorted inside a batch, so the shards get similar lengths)."""
    return batch[rank::world_size]


# =============================================================================================
# 3. The objective, the schedule, the optimizer


class Objective:
    """How one micro-batch is scored, and what the accumulated loss is divided by.

    ``objective(logits, labels)`` (``naive_btl(model, batch)`` for naive BTL, which runs its own
    forwards) is always a *sum* (token losses with reduction "sum", CRF NLL summed over
    sequences, BTL copies each summed then combined), so micro-batches and processes add up
    exactly; ``normaliser(window indices)`` is the divisor for the whole accumulated global batch,
    computed on the host from the labels (no device sync):

    =================  ===============================================================
    [loss] reduction   normaliser of the optimisation step
    =================  ===============================================================
    "mean" (default)   labelled tokens (label != -100) in all its micro-batches
    "weighted_mean"    Σ α_t over those tokens (ATL only)
    "sum"              1
    =================  ===============================================================
    """

    def __init__(self, cfg: TrainConfig, labels: list[str], train_windows: list, loss: TokenLoss | None = None):
        self.labels = labels
        self.kind = ("crf" if has_crf(cfg) else
                     f"btl_{cfg.sampler.btl_impl}" if cfg.sampler.name == "btl" else "token")
        self.sampler = cfg.sampler
        counts = label_counts([w.labels for w in train_windows], len(labels))
        self.label_counts = counts
        self.train_windows = train_windows
        # the [loss] section, when it is what the loss comes from (``start_epoch`` rebuilds it)
        self.loss_config = cfg.loss if loss is None else None
        # the one loss object of every path (ATL, naive and fused BTL): a user's own TokenLoss
        # subclass, or the [loss] section's; summed here, normalised by ``normaliser`` below
        self.use(build_loss(cfg.loss, counts, epoch=0) if loss is None else loss)

    def use(self, loss: TokenLoss) -> None:
        """Make ``loss`` the objective's loss (summed), with the normaliser of its reduction."""
        self.reduction = loss.reduction
        self.loss = dataclasses.replace(loss, reduction="sum")
        windows = self.train_windows
        if self.reduction == "mean":
            self.window_weight = np.array([sum(1 for l in w.labels if l != -100) for w in windows], dtype=np.float64)
        elif self.reduction == "sum":
            self.window_weight = None
        else:  # weighted_mean: Σ α_t per window
            alpha = getattr(self.loss, "alpha", None)
            if alpha is None:
                alpha = np.ones(len(self.labels))
            elif isinstance(alpha, (int, float)):
                alpha = np.full(len(self.labels), float(alpha))
            else:
                alpha = alpha.double().numpy()
            self.window_weight = np.array([sum(alpha[l] for l in w.labels if l != -100) for w in windows])

    def start_epoch(self, epoch: int) -> bool:
        """Deferred re-weighting (``[loss] drw_epoch``): at the start of every epoch the [loss]
        section's loss is the one ``build_loss`` gives for that epoch. True when it changed."""
        cfg = self.loss_config
        if cfg is None or cfg.drw_epoch is None:
            return False
        weighted = getattr(self.loss, "alpha", None) is not None
        if weighted == (epoch >= cfg.drw_epoch):
            return False
        self.use(build_loss(cfg, self.label_counts, epoch=epoch))
        return True

    def normaliser(self, windows: list[int]) -> float:
        if self.window_weight is None:
            return 1.0
        return max(float(self.window_weight[windows].sum()), 1e-12) if windows else 1.0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, model=None) -> torch.Tensor:
        """The loss *sum* of one micro-batch from its logits (``model`` only for a CRF head, whose
        NLL is its own). Every softmax path goes through ``self.loss.per_token``."""
        if self.kind == "token":
            # per_token, not __call__: the same sum without __call__'s label-range check, which
            # would sync with the device every step (labels were checked once, by label_counts)
            return self.loss.per_token(logits, labels)[0].sum()
        if self.kind == "crf":
            return model.crf_loss(logits, labels, reduction="sum")
        s = self.sampler
        return btl_fused_loss(logits, labels, self.labels, self.loss, s.btl_mode, s.btl_classes, s.btl_combine)[0]

    def naive_btl(self, model, batch: dict) -> torch.Tensor:
        """Naive BTL's loss sum: K forward passes, one per copy, each with its own dropout masks."""
        s = self.sampler
        return btl_naive_loss(model, batch, self.labels, self.loss, s.btl_mode, s.btl_classes, s.btl_combine)[0]

    def loss_sum(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(loss sum, logits)`` of one micro-batch: the forward pass and ``self(...)``, as the loop
        does them (logits None for naive BTL)."""
        if self.kind == "btl_naive":
            return self.naive_btl(model, batch), None
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return self(logits, batch["labels"], model), logits


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The learning-rate multiplier of optimisation step ``step`` (0-based), as transformers'
    ``get_linear_schedule_with_warmup``: rises linearly 0 -> 1 over ``warmup_steps``, then
    decays linearly to 0 at ``total_steps`` ("linear") or stays at 1 ("constant")."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (or SGD) with weight decay on weight matrices only: biases, LayerNorm weights and the
    CRF's transitions are not decayed, and the CRF gets its own learning rate (``optim.crf_lr``).
    Uses the fused kernel where the device has one, else foreach (one kernel per op for all
    parameters, no Python loop over them)."""
    decay, no_decay, crf = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if ".crf." in f".{name}":
            crf.append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    crf_lr = cfg.crf_lr or cfg.lr
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "initial_lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "initial_lr": cfg.lr},
              {"params": crf, "weight_decay": 0.0, "lr": crf_lr, "initial_lr": crf_lr}]
    groups = [g for g in groups if g["params"]]

    def make(**impl) -> torch.optim.Optimizer:
        if cfg.name == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **impl)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **impl)

    for impl in ({"fused": True}, {"foreach": True}):
        try:
            opt = make(**impl)
            break
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device/dtype
            continue
    else:
        opt = make()
    return opt


# =============================================================================================
# 4. Processes, devices, logging


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``): NCCL on CUDA, gloo
    on CPU. A single process needs nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    import torch.distributed as dist
    here = False
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        here = True
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), here)


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"[train] device = {name!r} but CUDA is not available")
        if name == "cuda":  # set_device needs an index: a torchrun rank's own GPU, else the current one
            name = f"cuda:{d.local_rank if d.world_size > 1 else torch.cuda.current_device()}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses: "auto" is bf16 autocast on CUDA and on a CPU with bf16 arithmetic
    (``cpu_has_bf16``: AVX512-BF16 or AMX-BF16), fp32 on other CPUs. On CPUs this follows the
    committed comparison docs/results/precision_cpu (same runs in fp32 and bf16, 3 seeds)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "fp32"
    return precision


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU does bf16 arithmetic in hardware: the ``avx512_bf16`` or ``amx_bf16`` flag
    of /proc/cpuinfo (Linux; elsewhere False, so "auto" stays fp32). ``cpuinfo``: the file's text,
    for tests. Without these instructions oneDNN emulates bf16 and autocast is slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def autocast_for(precision: str, device: torch.device):
    """A factory of the forward pass's autocast context: bf16 or fp16 autocast, or nothing (fp32)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def show_progress(option: str) -> bool:
    """tqdm bars: on a terminal unless ``$CI`` is set; "on"/"off" force it."""
    if option != "auto":
        return option == "on"
    return sys.stderr.isatty() and not os.environ.get("CI")


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


def check_finite(params: list, where: str) -> None:
    """NonFiniteLossError if any parameter holds NaN/inf (checked before a model is saved as best)."""
    norm = torch.nn.utils.get_total_norm(params, foreach=True)
    if not math.isfinite(float(norm)):
        raise NonFiniteLossError(f"the parameters became non-finite {where}; training stopped, the best "
                                 f"model saved so far (if any) is kept")


def fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        torch.distributed.barrier()


def broadcast_value(value, d: Dist):
    """Rank 0's ``value`` on every process (any picklable object)."""
    if d.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def share_gradients(params: list, device: torch.device) -> torch.Tensor:
    """Make every parameter's ``.grad`` a view of one flat buffer, so summing gradients over
    processes is a single ``all_reduce`` per step (backward accumulates into the views in place)."""
    flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=device)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


# =============================================================================================
# 5. The loop


def train(config: TrainConfig | str | os.PathLike | dict, out_dir: str | os.PathLike, callbacks=(),
          resume: bool = True, log=None, loss: TokenLoss | None = None) -> dict:
    """Train one model; returns the metrics written to ``out_dir/metrics.json``.

    ``config``: a TrainConfig (or anything ``load_config`` reads). ``callbacks``: objects with the
    hooks of ``bertlab.callbacks.Callback``. ``resume``: continue from ``out_dir/checkpoint.pt`` if
    there is one (a finished run just returns its metrics); False starts over. ``log``: a function
    taking one line of progress text (default: stderr, rank 0 only). ``loss``: a ``TokenLoss``
    (e.g. a subclass with its own ``per_token``) instead of the ``[loss]`` section's, used by every
    sampler. Raises ConfigError for a bad config and NonFiniteLossError if training diverges.
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
            weights = getattr(objective.loss, "alpha", None)
            weights = None if weights is None else [round(float(w), 6) for w in weights]
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
            step_loss = torch.zeros((), dtype=torch.float32, device=s.device)
            for batch in device_batches(group, s, d):
                with s.autocast():
                    if objective.kind == "btl_naive":  # the paper's BTL: one forward per copy
                        logits, loss_sum = None, objective.naive_btl(model, batch)
                    else:
                        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                        loss_sum = objective(logits, batch["labels"], model)
                loss = loss_sum.float() / normaliser
                callbacks.on_batch(step, model, batch, logits, loss)
                s.scaler.scale(loss).backward()  # fp16: scaled; otherwise loss.backward()
                step_loss += loss.detach()
            if s.flat_grad is not None:
                torch.distributed.all_reduce(s.flat_grad)  # sum over processes: one collective per step
            s.scaler.unscale_(optimizer)  # fp16: true gradients from here on
            callbacks.after_backward(step, model)
            # -- clip, learning rate, optimizer step
            grad_norm = None
            if cfg.optim.clip_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(s.params, cfg.optim.clip_grad_norm, foreach=True)
                if s.scaler.is_enabled():  # an fp16 overflow skips the step (and lowers the scale): not divergence
                    grad_norm = torch.nan_to_num(grad_norm, nan=0.0, posinf=0.0)
            lr_scale = lr_factor(progress.step, s.total_steps, s.warmup_steps, cfg.optim.schedule)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * lr_scale
            s.scaler.step(optimizer)  # optimizer.step(), skipped by fp16 on inf/NaN gradients
            s.scaler.update()
            callbacks.after_optimizer_step(step, model, optimizer)
            optimizer.zero_grad(set_to_none=s.flat_grad is None)  # multi-process: .grad stays a view of flat_grad
            # -- where we are; losses stay on the device until a log line or checkpoint reads them
            progress.step, progress.micro_batch = step, min((k + 1) * accum, len(batches))
            tokens = sum(s.lengths[i] for b in group for i in b)
            progress.epoch_tokens += tokens
            log_tokens += tokens
            losses.add(step, step_loss, grad_norm)
            bar.update(1)
            if step % cfg.train.log_every == 0:
                norm = losses.read(progress, d)
                now = time.perf_counter()
                mean_loss, tokens_per_s = losses.log_mean(), log_tokens / max(now - log_start, 1e-9)
                lr = optimizer.param_groups[0]["lr"]
                row = dict(loss=mean_loss, lr=lr, tokens_per_s=tokens_per_s,
                           grad_norm=norm if cfg.optim.clip_grad_norm > 0 else None)
                jlog.write(event="step", step=step, epoch=epoch, **row)
                callbacks.on_log(step, row)
                bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{lr:.2e}")
                log_start, log_tokens = now, 0
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


# =============================================================================================
# 6. Around the loop: setting up, the end of an epoch, checkpoints, the end


@dataclass
class Setup:
    """Everything the loop reads, built once by ``prepare``."""
    model: torch.nn.Module
    tokenizer: object
    splits: Splits
    windows: list
    lengths: list
    objective: Objective
    optimizer: torch.optim.Optimizer
    params: list
    device: torch.device
    autocast: object           # a callable returning the autocast context
    precision: str
    progress: Progress
    n_micro: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    n_params: int
    config_dict: dict
    eval_options: dict
    pad_multiple: int                      # training batches' widths are padded to a multiple of this
    ckpt_path: Path
    resumed: bool
    flat_grad: torch.Tensor | None = None  # multi-process: all gradients as views of one buffer
    inputs: dict | None = None             # fingerprints of the data, tokenizer and labels (resume checks)
    scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling (disabled: a pass-through)
    epochs_from: int | None = None         # the checkpoint's train.epochs, where this config changed it


RESAMPLING_FILE = "resampling.tsv"  # [sampler] name = "resample": how often each training sentence is used
RUN_FILES = ("checkpoint.pt", "metrics.json", "metrics.csv", "log.jsonl", "predictions_*.jsonl", "best", "best-*",
             RESAMPLING_FILE,
             "tensorboard")


def resampling_table(sentences: list, method: str) -> list[dict]:
    """One row per training sentence: ``doc_id``, ``sentence`` (its index in the document),
    ``words``, ``entity_tokens`` (per type), ``score`` (``resampling_scores``) and ``repeats``
    (``sentence_repeats``: the copies of it in every epoch)."""
    tags = [list(s.tags) for s in sentences]
    scores, repeats = resampling_scores(tags, method), sentence_repeats(tags, method)
    rows, position = [], {}
    for s, t, score, r in zip(sentences, tags, scores, repeats):
        position[s.doc_id] = position.get(s.doc_id, -1) + 1
        entity_tokens: dict[str, int] = {}
        for tag in t:
            if tag != "O":
                entity_tokens[tag.split("-", 1)[1]] = entity_tokens.get(tag.split("-", 1)[1], 0) + 1
        rows.append({"doc_id": s.doc_id, "sentence": position[s.doc_id], "words": len(t),
                     "entity_tokens": entity_tokens, "score": score, "repeats": r})
    return rows


def format_resampling_table(rows: list[dict], method: str) -> str:
    """``resampling.tsv``: a comment line naming the method and the totals, a header, one line per
    training sentence (``entity_tokens`` as ``Type=count`` pairs joined by ``;``)."""
    lines = [f"# sentence-level resampling, method {method} (Wang & Wang 2022): {len(rows)} sentences -> "
             f"{sum(r['repeats'] for r in rows)} per epoch",
             "doc_id\tsentence\twords\tentity_tokens\tscore\trepeats"]
    for r in rows:
        tokens = ";".join(f"{k}={v}" for k, v in r["entity_tokens"].items())
        lines.append(f"{r['doc_id']}\t{r['sentence']}\t{r['words']}\t{tokens}\t{r['score']:.6f}\t{r['repeats']}")
    return "\n".join(lines) + "\n"


def remove_run_files(out_dir: Path) -> None:
    """Delete what a previous run wrote in ``out_dir`` (``RUN_FILES``): called only once a new run
    has loaded its data and model, so a failed start leaves the old run whole. A symbolic link
    (``best`` pointing at a model kept elsewhere) is removed as a link: what it points at is not
    this run's to delete."""
    for pattern in RUN_FILES:
        for path in out_dir.glob(pattern):
            remove_path(path)  # a linked best/ loses the link, not what it points to


def input_fingerprint(splits: Splits, windows: list) -> dict:
    """SHA-256 fingerprints of what a run reads besides its config: the label list, the training
    windows (token ids and labels: the corpus *and* the tokenizer) and the dev and test sentences.
    Stored in checkpoint.pt; a resume with other inputs is refused."""
    import hashlib

    def digest(items) -> str:
        h = hashlib.sha256()
        for item in items:
            h.update(json.dumps(item).encode())
        return h.hexdigest()[:16]
    out = {"label list": digest(splits.labels),
           "training data": digest([list(w.input_ids), list(w.labels)] for w in windows)}
    for split in ("dev", "test"):
        corpus = getattr(splits, split)
        if corpus is not None:
            out[f"{split} data"] = digest([s.tokens, s.tags] for s in corpus.sentences)
    return out


def finished_without_checkpoint(metrics_path: Path, config_dict: dict) -> dict | None:
    """The metrics of a run that finished and deleted its checkpoint (``[train] keep_checkpoint =
    false``), where ``config_dict`` asks for that same run; ``None`` where there is no such run. Asked
    for more epochs, it is a ConfigError: continuing needs the optimizer state the checkpoint held."""
    if not metrics_path.exists():
        return None
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    old = metrics.get("config") or {}
    if old.get("train", {}).get("keep_checkpoint", True):
        return None  # a checkpoint removed by hand: no promise was made, the run starts over as before
    diffs = config_differences(old, config_dict)
    if diffs:
        epochs = [f for f in diffs if f.startswith("[train] epochs ")]
        why = (" More epochs continue a run from its checkpoint.pt, which this run deleted when it finished "
               "([train] keep_checkpoint = false)." if epochs else "")
        raise ConfigError(f"{metrics_path}: written by a finished run with a different config: {'; '.join(diffs)}."
                          f"{why} Train it again (--no-resume) or use another --out")
    return metrics


def report_data_changes(cfg: TrainConfig, splits: Splits, log) -> None:
    """Say what the data will not show in the scores: each tag ``[data] repair = true`` changed (all
    of them also go to metrics.json's ``data_repairs``), and the types of dev or test that training
    never sees."""
    repairs = data_repairs(splits)
    if repairs:
        log(f"[data] repair = true: {len(repairs)} tag(s) changed (listed in metrics.json's data_repairs):")
        for line in repairs[:20]:
            log(f"  {line}")
        if len(repairs) > 20:
            log(f"  ... and {len(repairs) - 20} more")
    for split, missing in untrained_types(splits).items():
        log(f"warning: {len(missing)} entity type(s) of the {split} split have no training mention, so the model "
            f"never learns them and scores 0 on them: "
            + ", ".join(f"{t} ({n} mention{'s' * (n != 1)})" for t, n in missing.items()))


def prepare(cfg: TrainConfig, out_dir: Path, resume: bool, log, d: Dist, loss_fn: TokenLoss | None):
    """Resume or start over, then data, model, objective, optimizer and schedule: a ``Setup``, or
    the metrics of a run that had already finished."""
    device = pick_device(cfg.train.device, d)
    config_dict = config_to_dict(cfg)
    ckpt_path, metrics_path = out_dir / CHECKPOINT, out_dir / "metrics.json"
    ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    old_epochs = None  # the checkpoint's train.epochs where the new config changes it
    if ckpt is not None:
        old_config = json.loads(ckpt["config"])
        diffs = config_differences(old_config, config_dict, also_allowed={("train", "epochs")})
        if diffs:
            raise ConfigError(f"{ckpt_path}: written by a run with a different config: {'; '.join(diffs)}. "
                              f"Resume with the same config, or start over (--no-resume) or use another --out")
        saved = json.loads(ckpt["progress"])
        progress = Progress(**saved)
        if "epoch_cpu_seconds" not in saved and progress.epoch_train_seconds:  # written before CPU time was kept
            progress.epoch_cpu_seconds = math.nan  # this epoch's CPU share is unknown, not small
        trained_for = old_config.get("train", {}).get("epochs", TrainConfig().train.epochs)
        if trained_for != cfg.train.epochs:
            old_epochs = trained_for
        elif progress.training_done and metrics_path.exists():
            log(f"{out_dir}: already finished, metrics.json kept")
            return json.loads(metrics_path.read_text(encoding="utf-8"))
    else:
        progress = Progress()
        finished = finished_without_checkpoint(metrics_path, config_dict) if resume else None
        if finished is not None:
            log(f"{out_dir}: already finished, metrics.json kept (its checkpoint was dropped: "
                f"[train] keep_checkpoint = false)")
            return finished

    # everything that can fail on bad input comes before anything of an old run is touched
    seed = cfg.train.seed
    seed_everything(seed)
    splits = load_splits(cfg.data)
    report_data_changes(cfg, splits, log)
    model, tokenizer = build_model_and_tokenizer(cfg.model, splits.labels, splits.train)
    model.to(device)
    multiple = pad_multiple(device, cfg.train.pad_to_multiple_of)
    try:
        check_window(model, cfg.data.max_length, multiple, names=("[data] max_length", "[train] pad_to_multiple_of"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    training_sentences, resampling = splits.train, None
    if cfg.sampler.name == "resample":  # each sentence as often as its rarity score says
        resampling = resampling_table(splits.train.sentences, cfg.sampler.method)
        training_sentences = types.SimpleNamespace(sentences=[
            s for s, row in zip(splits.train.sentences, resampling) for _ in range(row["repeats"])])
    windows = encode_corpus(tokenizer, training_sentences, splits.labels, cfg.data.max_length, cfg.data.stride)
    if not windows:
        raise ConfigError("[data] the training split has no sentences")
    lengths = [len(w) for w in windows]
    inputs = input_fingerprint(splits, windows)
    if ckpt is not None:
        changed = [k for k, v in json.loads(ckpt.get("inputs", "{}")).items() if inputs.get(k) != v]
        if changed:
            raise ConfigError(f"{ckpt_path}: the {', '.join(changed)} changed since this run was checkpointed "
                              f"(same config, different data); resuming would mix two runs. Restore the "
                              f"inputs, or start over (--no-resume) or use another --out")
    n_micro = len(epoch_batches(lengths, cfg.sampler.batch_size, seed, 0))
    steps_per_epoch = math.ceil(n_micro / cfg.optim.grad_accum)
    if old_epochs is not None:
        change_epochs(cfg, progress, old_epochs, steps_per_epoch, ckpt_path, log)
    if d.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None:  # starting over: no file of a previous run may survive beside the new one
            remove_run_files(out_dir)
        if old_epochs is not None:  # the run is no longer finished: metrics.json comes again at its end
            metrics_path.unlink(missing_ok=True)
        if resampling is not None:
            write_text(out_dir / RESAMPLING_FILE, format_resampling_table(resampling, cfg.sampler.method))
        for tmp in out_dir.glob(f".{CHECKPOINT}.*.tmp"):  # left by a process killed while writing
            tmp.unlink(missing_ok=True)
    barrier(d)
    objective = Objective(cfg, splits.labels, windows, loss=loss_fn)
    optimizer = make_optimizer(model, cfg.optim, device)
    params = [p for p in model.parameters() if p.requires_grad]
    flat_grad = share_gradients(params, device) if d.world_size > 1 else None

    total_steps, warmup_steps = schedule_steps(cfg, steps_per_epoch)

    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if len(ckpt["rng"]) == d.world_size:
            set_rng_state(ckpt["rng"][d.rank])
        else:
            log(f"warning: {ckpt_path} holds RNG states of {len(ckpt['rng'])} processes, this run has "
                f"{d.world_size}: dropout will not repeat the interrupted run exactly")
            torch.manual_seed(epoch_seed(seed, 10_000 + d.rank))
        log(f"resuming {out_dir} at step {progress.step} (epoch {progress.epoch}, "
            f"micro-batch {progress.micro_batch}/{n_micro})")
    else:
        # same init everywhere (seeded above); each process gets its own dropout stream
        torch.manual_seed(epoch_seed(seed, 10_000 + d.rank))
        if d.world_size > 1:
            for p in model.state_dict().values():
                torch.distributed.broadcast(p, 0)

    precision = resolve_precision(cfg.train.precision, device)
    # fp16 only: scale the loss so small gradients survive the half-precision backward (a no-op otherwise)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if ckpt is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    n_params = count_parameters(model)
    if ckpt is None:
        log(f"training {type(model.encoder).__name__ if hasattr(model, 'encoder') else type(model).__name__} "
            f"({n_params / 1e6:.2f}M parameters) on {device} ({precision}, {d.world_size} process(es)): "
            f"{len(windows)} windows, {steps_per_epoch} steps/epoch, {total_steps} steps")
    return Setup(model=model, tokenizer=tokenizer, splits=splits, windows=windows, lengths=lengths,
                 objective=objective, optimizer=optimizer, params=params, device=device,
                 autocast=autocast_for(cfg.train.precision, device), precision=precision, progress=progress,
                 n_micro=n_micro, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                 warmup_steps=warmup_steps, n_params=n_params, config_dict=config_dict,
                 eval_options=dict(max_length=cfg.data.max_length, stride=cfg.data.stride,
                                   batch_size=cfg.train.eval_batch_size, precision=precision,
                                   pad_to_multiple_of=multiple),
                 pad_multiple=multiple,
                 ckpt_path=ckpt_path, resumed=ckpt is not None, flat_grad=flat_grad, inputs=inputs, scaler=scaler,
                 epochs_from=old_epochs)


def schedule_steps(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """The learning-rate schedule's total and warmup steps."""
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    return total_steps, math.ceil(cfg.optim.warmup_ratio * total_steps)


def training_done(cfg: TrainConfig, progress: Progress) -> bool:
    """At the end of an epoch: stopped early, or the epochs or steps are used up."""
    return (progress.stopped_early or progress.epoch >= cfg.train.epochs
            or bool(cfg.train.max_steps and progress.step >= cfg.train.max_steps))


def change_epochs(cfg: TrainConfig, progress: Progress, old_epochs: int, steps_per_epoch: int,
                  ckpt_path: Path, log) -> None:
    """Resume a run under a larger (or smaller) ``train.epochs``, finished or not, where that gives
    exactly the run the new config trains from scratch: every step already taken had the learning
    rate the new config gives it (a constant schedule without warmup: yes; a linear decay or a
    warmup_ratio: no, they stretch with the number of epochs), and no more epochs were trained than
    the new config allows. Raises ConfigError otherwise; updates ``progress.training_done``."""
    where = f"{ckpt_path}: [train] epochs {old_epochs} -> {cfg.train.epochs}"
    trained = progress.epoch + (progress.micro_batch > 0)  # epochs begun
    if trained > cfg.train.epochs:
        raise ConfigError(f"{where}: the run has already trained {trained} epoch(s); start over "
                          f"(--no-resume) or use another --out")
    old_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=old_epochs))
    old_steps, new_steps = schedule_steps(old_cfg, steps_per_epoch), schedule_steps(cfg, steps_per_epoch)
    schedule = cfg.optim.schedule
    moved = next((k for k in range(progress.step)
                  if lr_factor(k, *old_steps, schedule) != lr_factor(k, *new_steps, schedule)), None)
    if moved is not None:
        raise ConfigError(f"{where}: the {schedule} schedule (warmup_ratio {cfg.optim.warmup_ratio}) "
                          f"stretches with the number of epochs, so step {moved + 1} of the "
                          f"{progress.step} already taken had another learning rate than this config "
                          f"gives it; only a constant schedule without warmup continues exactly. Start "
                          f"over (--no-resume) or use another --out")
    if progress.micro_batch == 0:  # at an epoch boundary: the new cap decides whether training goes on
        progress.training_done = training_done(cfg, progress)
    if progress.stopped_early:
        log(f"[train] epochs {old_epochs} -> {cfg.train.epochs}: the run stopped early after epoch "
            f"{progress.epoch}, as it does under the new cap; scored again under the new config")
    else:
        log(f"[train] epochs {old_epochs} -> {cfg.train.epochs}: continuing at epoch {progress.epoch} "
            f"(the learning rates of the {progress.step} steps taken are the new config's, so this is "
            f"the run it trains from scratch)")


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


class StepLosses:
    """Step losses (and gradient norms) stay on the device until a log line or a checkpoint reads
    them, all at once: the loop's only host syncs. A non-finite value stops training there."""

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


def _clocks() -> tuple[float, float]:
    """Now, as (wall seconds, this process's CPU seconds over all its threads)."""
    return time.perf_counter(), time.process_time()


def _charge_training_time(progress, since: tuple[float, float]) -> None:
    """Adds the wall and CPU seconds since ``since`` (``_clocks()``) to the epoch's training time."""
    wall, cpu = _clocks()
    progress.epoch_train_seconds += wall - since[0]
    progress.epoch_cpu_seconds += cpu - since[1]


def cpu_share(cpu_seconds: float, wall_seconds: float, threads: int) -> float | None:
    """The share of its cores a CPU run had: CPU seconds over wall seconds × intra-op threads. About 1
    when the run had its cores to itself (a little less with several threads, which wait on each
    other); about 1/2 when another busy process shared them, so its seconds overstate its cost."""
    share = cpu_seconds / (wall_seconds * threads) if wall_seconds > 0 and threads > 0 else math.nan
    return share if math.isfinite(share) else None  # NaN: an epoch resumed from a checkpoint without CPU seconds


def end_of_epoch(cfg: TrainConfig, s: Setup, out_dir: Path, log, d: Dist) -> dict:
    """Dev scores of every decode, the best model of each decode that improved, early stopping;
    appends the epoch's record to ``progress.history`` (and its seconds to ``progress.timing``)
    and moves ``progress`` to the next epoch. Returns the record."""
    progress, epoch, primary = s.progress, s.progress.epoch, cfg.eval.decode[0]
    t0 = time.perf_counter()
    check_finite(s.params, f"at the end of epoch {epoch} (step {progress.step})")  # never saved as best
    dev, fitted = (evaluate_dev(s.model, s.tokenizer, s.splits, cfg, s.eval_options, s.objective.label_counts)
                   if d.main else (None, {}))
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


def run_cpu_share(timing: list[dict]) -> float | None:
    """The run's CPU share over its epochs (``cpu_share`` of the summed seconds); None where an epoch
    has none (an accelerator, or a run resumed from a checkpoint written before it was measured)."""
    if not timing or any("cpu_seconds" not in t for t in timing):
        return None
    return cpu_share(sum(t["cpu_seconds"] for t in timing),
                     sum(t["train_seconds"] * t["threads"] for t in timing), 1)


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


# =============================================================================================
# 7. Command line


def main(argv: list[str] | None = None) -> int:
    """``bertlab train --config FILE.toml [--set section.key=value ...] [--out DIR] [--no-resume]``."""
    ap = argparse.ArgumentParser(prog="bertlab train", description="Train one model from a TOML config "
                                 "(docs/training.md); under torchrun, data-parallel. Paths in the config "
                                 "are relative to the config file.")
    ap.add_argument("--config", required=True, help="a training config TOML file, e.g. experiments/train_example.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config field, value parsed as TOML (repeatable), e.g. optim.lr=1e-4")
    ap.add_argument("--out", help="the run folder (default: runs/train/<config file name>, with --set "
                                  "runs/train/<config file name>-<a hash of the overrides>); one training "
                                  "at a time: a second one into a busy folder is refused")
    ap.add_argument("--no-resume", action="store_true", help="start over even if OUT has a checkpoint")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error (also: BERTLAB_DEBUG=1)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else default_out_dir(args.config, args.overrides)
    try:
        raw = read_config_file(args.config)
        # a [gradflow] section turns the gradient-flow instruments on (bertlab.gradflow)
        gradflow = raw.pop("gradflow", None)
        cfg = load_config(raw, args.overrides, where=args.config)
        callbacks = []
        if gradflow is not None:
            from bertlab.gradflow import GradFlowConfig, GradFlowRecorder
            try:
                gcfg = GradFlowConfig.from_dict(gradflow, source=args.config)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            callbacks.append(GradFlowRecorder.from_config(gcfg, out))
        metrics = train(cfg, out, callbacks=callbacks, resume=not args.no_resume)
        if callbacks and int(os.environ.get("RANK", "0")) == 0:
            from bertlab.gradflow import read_rows, write_figures
            folder = callbacks[0].out_dir
            written = write_figures(read_rows(folder / "gradflow.csv"), folder)
            print(f"gradient flow: {folder / 'gradflow.csv'}" + (f" and {len(written)} figures" if written else ""))
    except KeyboardInterrupt as e:  # Ctrl-C: where training stood and how to go on, not a traceback
        if args.debug or debug_requested():
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"bertlab train: {e if isinstance(e, TrainingInterrupted) else 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # one line naming the file/key (bertlab.errors); --debug shows the traceback
        return fail("train", e, args.debug)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {out / 'metrics.json'} (best model: {out / 'best'})")
    return 0 if metrics is not None else 1


def default_out_dir(config: str | os.PathLike, overrides: list[str] = ()) -> Path:
    """The run folder when ``--out`` is not given: ``runs/train/<config file name>``, and with
    ``--set`` overrides ``runs/train/<config file name>-<8 hex digits>``, a hash of the overrides as
    parsed (their order, spacing and spelling of a number aside; a key set twice counts once, as
    its last value). So each variant of a config gets a folder of its own, and running the same
    command again finds its folder to resume."""
    import hashlib

    from bertlab.config import parse_override
    name = Path(config).stem
    if not overrides:
        return Path("runs") / "train" / name
    parsed = {}
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ValueError:  # load_config says what is wrong with it
            key, value = item, None
        parsed[key] = value
    text = json.dumps(sorted(parsed.items()), default=str)
    return Path("runs") / "train" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
