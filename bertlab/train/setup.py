"""Setting a run up: resume or start over, then data, model, objective, optimizer and schedule.

``prepare`` returns a ``Setup``, everything the loop reads (or, for a run that had finished, its
metrics). The model comes from the ``[model]`` section (``build_model_and_tokenizer``), the
objective from ``[loss]`` and ``[sampler]`` (``bertlab.losses.objective.build_objective``), the
optimizer and learning-rate schedule from ``[optim]`` (``make_optimizer``, ``lr_factor``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from bertlab.batching import epoch_batches, epoch_seed, pad_multiple
from bertlab.config import ConfigError, ModelConfig, OptimConfig, TrainConfig, config_differences, config_to_dict
from bertlab.datasets.prepare import Splits, data_repairs, encode_corpus, load_splits, untrained_types
from bertlab.files import remove_path, write_text
from bertlab.inference import check_window
from bertlab.losses.config import loss_table
from bertlab.losses.objective import Objective, build_objective
from bertlab.losses.token import TokenLoss
from bertlab.models import ops
from bertlab.sampling import RESAMPLING_FILE, format_resampling_table, resampling_table
from bertlab.train.runtime import (Dist, autocast_for, barrier, cpu_has_bf16, pick_device, resolve_precision,
                                   share_gradients)
from bertlab.train.state import CHECKPOINT, Progress, load_checkpoint, seed_everything, set_rng_state


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


RUN_FILES = ("checkpoint.pt", "metrics.json", "metrics.csv", "log.jsonl", "predictions_*.jsonl", "best", "best-*",
             RESAMPLING_FILE,
             "tensorboard")


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


def resume_point(cfg: TrainConfig, out_dir: Path, resume: bool, config_dict: dict, log):
    """Where this run starts: ``(checkpoint or None, Progress, the checkpoint's train.epochs where
    this config changes it, else None)``, or the metrics dict of a run that had already finished.
    A checkpoint of another config is a ConfigError."""
    ckpt_path, metrics_path = out_dir / CHECKPOINT, out_dir / "metrics.json"
    ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if ckpt is None:
        finished = finished_without_checkpoint(metrics_path, config_dict) if resume else None
        if finished is not None:
            log(f"{out_dir}: already finished, metrics.json kept (its checkpoint was dropped: "
                f"[train] keep_checkpoint = false)")
            return finished
        return None, Progress(), None
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
        return ckpt, progress, trained_for
    if progress.training_done and metrics_path.exists():
        log(f"{out_dir}: already finished, metrics.json kept")
        return json.loads(metrics_path.read_text(encoding="utf-8"))
    return ckpt, progress, None


# one function on purpose: the order of these steps is the contract (everything that can fail on
# bad input before any file of an old run is touched; seeding before the model is built), and
# reads best top to bottom
def prepare(cfg: TrainConfig, out_dir: Path, resume: bool, log, d: Dist, loss_fn: TokenLoss | None):
    """Resume or start over, then data, model, objective, optimizer and schedule: a ``Setup``, or
    the metrics of a run that had already finished. ``loss_fn``: a loss object instead of the
    ``[loss]`` section's (``train(loss=...)``); the run's config records it (``loss_table``)."""
    device = pick_device(cfg.train.device, d)
    config_dict = config_to_dict(cfg)
    if loss_fn is not None:  # what trains is this object, not the [loss] section: record it
        config_dict["loss"] = loss_table(loss_fn)
    ckpt_path, metrics_path = out_dir / CHECKPOINT, out_dir / "metrics.json"
    start = resume_point(cfg, out_dir, resume, config_dict, log)
    if isinstance(start, dict):  # the run had finished: its metrics
        return start
    ckpt, progress, old_epochs = start

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
    objective = build_objective(cfg, splits.labels, windows, loss=loss_fn)
    optimizer = make_optimizer(model, cfg.optim, device)
    params = [p for p in model.parameters() if p.requires_grad]
    flat_grad = share_gradients(params, device) if d.world_size > 1 else None

    total_steps, warmup_steps = schedule_steps(cfg, steps_per_epoch)

    restore(ckpt, ckpt_path, model, optimizer, d, seed, log)
    if ckpt is not None:
        log(f"resuming {out_dir} at step {progress.step} (epoch {progress.epoch}, "
            f"micro-batch {progress.micro_batch}/{n_micro})")

    precision = resolve_precision(cfg.train.precision, device)
    if ckpt is None and precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        by = "oneDNN" if ops.onednn_bf16() else "bertlab.models.ops"
        log("warning: [train] precision = 'bf16' on a CPU without bf16 arithmetic (no avx512_bf16 or amx_bf16 "
            f"flag): bf16 is emulated in float32 (by {by}), no faster than fp32; precision = 'auto' picks fp32 here")
    # fp16 only: scale the loss so small gradients survive the half-precision backward (a no-op otherwise)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if ckpt is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    n_params = count_parameters(model)
    if ckpt is None:
        log(f"training {type(getattr(model, 'encoder', model)).__name__} "
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


def restore(ckpt: dict | None, ckpt_path: Path, model, optimizer, d: Dist, seed: int, log) -> None:
    """The model, optimizer and RNG state of the checkpoint; or, starting over, every process's own
    dropout stream and (several processes) rank 0's initial weights everywhere."""
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if len(ckpt["rng"]) == d.world_size:
            set_rng_state(ckpt["rng"][d.rank])
        else:
            log(f"warning: {ckpt_path} holds RNG states of {len(ckpt['rng'])} processes, this run has "
                f"{d.world_size}: dropout will not repeat the interrupted run exactly")
            torch.manual_seed(epoch_seed(seed, 10_000 + d.rank))
        return
    # same init everywhere (seeded above); each process gets its own dropout stream
    torch.manual_seed(epoch_seed(seed, 10_000 + d.rank))
    if d.world_size > 1:
        for p in model.state_dict().values():
            torch.distributed.broadcast(p, 0)


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
