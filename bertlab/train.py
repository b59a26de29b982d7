"""The training loop: one TOML config in, a trained model, its metrics and predictions out.

Read top to bottom, the file is the loop in the order it runs:

1. **Config** -- ``TrainConfig``, nested dataclasses one per TOML section, read by ``load_config``
   (unknown or ill-typed fields are one error naming the file and ``[section] key``).
2. **Data** -- the three splits (a bundled corpus or CoNLL files), the label list
   ``label_list(entity_types(name))``, words -> subword windows with labels on first subwords.
3. **Model** -- a built-in / Hugging Face folder (``load_pretrained``), a random-init preset
   (``build_model``) or a BiLSTM baseline; ``head = "crf"`` adds a CRF.
4. **Batches** -- ATL: length-bucketed windows padded to the longest row; BTL: the same batches,
   the loss made per class by ``bertlab.sampling``. Batch order per epoch comes from a seed
   derived from ``(seed, epoch)``, so a resumed run sees the same batches.
5. **The step** (``optimisation_step``) -- ``grad_accum`` micro-batches, each loss a *sum* over
   its labelled tokens divided by the labelled-token count of the whole accumulated (global)
   batch; backward; clip; AdamW/SGD; the learning rate from ``lr_factor`` (linear warmup/decay).
6. **Checkpoints** -- model, optimizer, schedule position, RNG states, sampler position, best-so-far
   and early-stopping counters in one ``checkpoint.pt`` (plain tensors/numbers only, loadable with
   ``torch.load(weights_only=True)``), written to a temp file and renamed over the old one.
7. **Epoch end** -- dev entity micro F1 (strict IOB2); the best model is saved as a Hugging Face
   folder ``out_dir/best``; early stopping after ``patience`` epochs without improvement.
8. **The end** -- the best model scored on dev and test for every decode in ``[eval] decode``;
   ``metrics.json``, ``predictions_<split>_<decode>.jsonl`` and ``log.jsonl`` in ``out_dir``.

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
import random
import shutil
import sys
import time
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bertlab.files import write_json, write_jsonl, write_text
from bertlab.losses import LOSS_NAMES, REDUCTIONS, WEIGHT_SCHEMES, LossConfig, build_loss, label_counts, token_losses
from bertlab.sampling import btl_fused_loss, btl_naive_loss, collate, length_bucketed_batches

# =============================================================================================
# 1. Config


class ConfigError(ValueError):
    """A bad training config. The message names the file, ``[section] key`` and what was expected."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and epoch. The last good
    checkpoint (if any) is left untouched."""


@dataclass
class DataConfig:
    name: str = "maccrobat"      # bundled corpus (bertlab.datasets.load); ignored when train_file is set
    train_file: str = ""         # CoNLL files instead of a bundled corpus (dev/test optional)
    dev_file: str = ""
    test_file: str = ""
    scheme: str = "IOB2"         # tag scheme of the CoNLL files (converted to IOB2 on reading)
    max_documents: int = 0       # 0 = all; otherwise the first N documents of each split
    max_length: int = 128        # subwords per window, [CLS]/[SEP] included
    stride: int = 32             # overlap between consecutive windows of a long sentence


@dataclass
class ModelConfig:
    builtin: str = "minilm"      # used when path, preset and arch are all empty
    path: str = ""               # a Hugging Face folder (BERT / DistilBERT)
    preset: str = ""             # random init: "tinybert" | "minilm" | "bert-base" | "distilbert" ...
    arch: str = ""               # "bilstm" | "bilstm_crf": the baselines (bertlab.baselines)
    head: str = "softmax"        # "softmax" | "crf"
    tokenizer: str = ""          # tokenizer folder for presets; default: the builtin checkpoint's
    overrides: dict = field(default_factory=dict)  # config fields of a preset (tiny test models)


@dataclass
class SamplerConfig:
    name: str = "atl"            # "atl" (all token labels) | "btl" (binary token labels)
    btl_impl: str = "fused"      # "fused" | "naive"
    btl_mode: str = "other_to_o"  # "other_to_o" | "ignore" | "binary"
    btl_classes: str = "present"  # "present" | "all"
    btl_combine: str = "mean"    # "mean" | "sum"
    batch_size: int = 16         # windows per micro-batch, summed over all processes


@dataclass
class OptimConfig:
    name: str = "adamw"          # "adamw" | "sgd"
    lr: float = 5e-5
    weight_decay: float = 0.01   # not applied to biases and LayerNorm weights
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.0        # SGD only
    warmup_ratio: float = 0.1    # fraction of the total steps with a linearly rising lr
    schedule: str = "linear"     # "linear" (warmup, then decay to 0) | "constant" (warmup, then flat)
    clip_grad_norm: float = 1.0  # 0 = no clipping
    grad_accum: int = 1          # micro-batches per optimisation step
    crf_lr: float = 0.0          # lr of a CRF head's transitions; 0 = optim.lr. At an encoder's 2e-5..5e-5
                                 # the transitions barely leave 0, so BERT+CRF wants ~1e-3 here


@dataclass
class RunConfig:
    epochs: int = 3
    max_steps: int = 0           # 0 = no cap; otherwise stop after this many optimisation steps
    seed: int = 0
    device: str = "auto"         # "auto" (cuda when available) | "cpu" | "cuda" | "cuda:1" ...
    precision: str = "auto"      # "auto" (bf16 on CUDA, fp32 on CPU) | "fp32" | "bf16" (autocast)
    early_stopping_patience: int = 0  # epochs without dev F1 improvement before stopping; 0 = never
    checkpoint_every: int = 0    # optimisation steps; 0 = at the end of each epoch only
    log_every: int = 10          # optimisation steps between log.jsonl lines (and host syncs)
    progress: str = "auto"       # tqdm bars: "auto" (a TTY and no $CI) | "on" | "off"
    eval_batch_size: int = 64    # windows per batch at evaluation


@dataclass
class EvalConfig:
    # "argmax" | "viterbi" (CRF) | "knn" | "calibrated"; the first names the model saved in best/
    decode: list = field(default_factory=lambda: ["argmax"])
    knn_k: int = 17
    knn_metric: str = "euclidean"
    # how each decode's checkpoint is chosen on dev, every decode by its own scores:
    # "f1_micro" | "f1_macro" | "unweighted_accuracy" (higher wins, ties to the later epoch),
    # "loss" (lowest dev loss, shared by all decodes) | "last" (the last epoch)
    select: str = "f1_micro"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# allowed values of the enumerated fields, checked by load_config
CHOICES = {
    ("loss", "name"): LOSS_NAMES,
    ("loss", "weight_scheme"): WEIGHT_SCHEMES,
    ("loss", "normalize"): ("mean", "sum"),
    ("loss", "reduction"): tuple(r for r in REDUCTIONS if r != "none"),
    ("model", "head"): ("softmax", "crf"),
    ("model", "arch"): ("", "bilstm", "bilstm_crf"),
    ("sampler", "name"): ("atl", "btl"),
    ("sampler", "btl_impl"): ("fused", "naive"),
    ("sampler", "btl_mode"): ("other_to_o", "ignore", "binary"),
    ("sampler", "btl_classes"): ("present", "all"),
    ("sampler", "btl_combine"): ("mean", "sum"),
    ("optim", "name"): ("adamw", "sgd"),
    ("optim", "schedule"): ("linear", "constant"),
    ("train", "precision"): ("auto", "fp32", "bf16"),
    ("train", "progress"): ("auto", "on", "off"),
    ("eval", "knn_metric"): ("euclidean", "cosine"),
    ("eval", "select"): ("f1_micro", "f1_macro", "unweighted_accuracy", "loss", "last"),
}
DECODES = ("argmax", "viterbi", "knn", "calibrated")
# fields that must be >= the given minimum
MINIMUM = {
    ("data", "max_documents"): 0, ("data", "max_length"): 3, ("data", "stride"): 0,
    ("sampler", "batch_size"): 1, ("optim", "lr"): 0.0, ("optim", "weight_decay"): 0.0,
    ("optim", "eps"): 0.0, ("optim", "momentum"): 0.0, ("optim", "warmup_ratio"): 0.0,
    ("optim", "clip_grad_norm"): 0.0, ("optim", "grad_accum"): 1, ("optim", "crf_lr"): 0.0, ("train", "epochs"): 1,
    ("train", "max_steps"): 0, ("train", "early_stopping_patience"): 0, ("train", "checkpoint_every"): 0,
    ("train", "log_every"): 1, ("train", "eval_batch_size"): 1, ("eval", "knn_k"): 1,
}


def load_config(source: str | os.PathLike | dict | TrainConfig, overrides: list[str] | tuple = ()) -> TrainConfig:
    """A validated :class:`TrainConfig` from a TOML file, a dict of sections, or a TrainConfig.

    ``overrides`` are ``"section.key=value"`` strings; the value is parsed as TOML
    (``lr=1e-4``, ``decode=["argmax","knn"]``), a bare word is taken as a string
    (``model.builtin=minilm``). Any problem is a :class:`ConfigError` naming the file and
    ``[section] key``.
    """
    if isinstance(source, TrainConfig):
        raw, where = config_to_dict(source), "<TrainConfig>"
    elif isinstance(source, dict):
        raw, where = json.loads(json.dumps(source)), "<dict>"  # a deep copy
    else:
        raw, where = read_toml(source), str(source)
    for item in overrides:
        apply_override(raw, item, where)
    return config_from_dict(raw, where)


def read_toml(path: str | os.PathLike) -> dict:
    """The TOML file as a dict; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def apply_override(raw: dict, item: str, where: str) -> None:
    """Set ``raw[section][key]`` from one ``"section.key=value"`` string (value parsed as TOML)."""
    key, eq, text = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not eq or not dot or not section or not name or "." in name:
        raise ConfigError(f"{where}: --set {item!r}: expected section.key=value (e.g. optim.lr=1e-4)")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word: a string
    raw.setdefault(section, {})
    if not isinstance(raw[section], dict):
        raise ConfigError(f"{where}: [{section}] is not a table")
    raw[section][name] = value


def _with_overrides(raw: dict, overrides, where: str) -> dict:
    for item in overrides:
        apply_override(raw, item, where)
    return raw


def config_from_dict(raw: dict, where: str = "<dict>") -> TrainConfig:
    """Build and validate a TrainConfig from ``{section: {key: value}}``."""
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    built = {}
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"{where}: unknown section [{section}]; expected one of "
                              f"{', '.join(f'[{s}]' for s in sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of key = value, got {values!r}")
        built[section] = build_section(hints[section], section, values, where)
    cfg = TrainConfig(**built)
    check_config(cfg, where)
    return cfg


def build_section(cls, section: str, values: dict, where: str):
    """One section dataclass from its dict: unknown keys, wrong types and bad choices are errors."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: [{section}] {key}: unknown key; expected one of {', '.join(sorted(names))}")
        try:
            value = coerce(value, hints[key])
        except TypeError as e:
            raise ConfigError(f"{where}: [{section}] {key}: expected {e}, got {value!r}") from None
        choices = CHOICES.get((section, key))
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{where}: [{section}] {key}: expected one of {list(choices)}, got {value!r}")
        minimum = MINIMUM.get((section, key))
        if minimum is not None and value < minimum:
            raise ConfigError(f"{where}: [{section}] {key}: expected a value >= {minimum}, got {value!r}")
        out[key] = value
    try:
        return cls(**out)
    except (ValueError, TypeError) as e:  # a section's own __post_init__ checks (e.g. LossConfig)
        raise ConfigError(f"{where}: [{section}] {e}") from None


def coerce(value, tp):
    """``value`` checked against the annotation ``tp`` (str, int, float, bool, list, dict, unions);
    ints are accepted for floats. Raises TypeError with a description of what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return coerce(value, a)
            except TypeError:
                pass
        raise TypeError(" or ".join(describe(a) for a in args))
    if tp is type(None):
        if value is None:
            return None
        raise TypeError("none")
    if tp is typing.Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list or origin is list or tp is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            item = args[0] if args else typing.Any
            try:
                out = [coerce(v, item) for v in value]
            except TypeError:
                raise TypeError(describe(tp)) from None
            return tuple(out) if (tp is tuple or origin is tuple) else out
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        raise TypeError(f"a value of type {tp!r} (unsupported in configs)")
    raise TypeError(describe(tp))


def describe(tp) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a table", list: "a list", type(None): "none"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple) and args:
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a table"
    return str(tp)


def check_config(cfg: TrainConfig, where: str) -> None:
    """Checks across fields (the per-field ones are in build_section)."""
    m = cfg.model
    sources = [k for k in ("path", "preset", "arch") if getattr(m, k)]
    if len(sources) > 1:
        raise ConfigError(f"{where}: [model] {' and '.join(sources)} are both set; give at most one of "
                          f"path, preset, arch (builtin is used when none is)")
    if m.arch and m.head == "crf" and m.arch != "bilstm_crf":
        raise ConfigError(f"{where}: [model] head: 'crf' with arch = {m.arch!r}; use arch = \"bilstm_crf\"")
    for d in cfg.eval.decode:
        if d not in DECODES:
            raise ConfigError(f"{where}: [eval] decode: expected entries from {list(DECODES)}, got {d!r}")
    if not cfg.eval.decode:
        raise ConfigError(f"{where}: [eval] decode: expected at least one of {list(DECODES)}")
    if "viterbi" in cfg.eval.decode and not has_crf(cfg):
        raise ConfigError(f"{where}: [eval] decode: 'viterbi' needs a CRF ([model] head = \"crf\" "
                          f"or arch = \"bilstm_crf\")")
    if cfg.sampler.name == "btl" and has_crf(cfg):
        raise ConfigError(f"{where}: [sampler] name: 'btl' cannot train a CRF head (a CRF scores "
                          f"whole tag sequences, not one binary label per token); use 'atl'")
    try:  # the loss's own cross-field checks (e.g. gamma only for focal)
        build_loss(cfg.loss, label_counts=torch.ones(3))
    except ValueError as e:
        raise ConfigError(f"{where}: [loss] {e}") from None
    if has_crf(cfg) and (cfg.loss.name != "ce" or cfg.loss.reduction == "weighted_mean"):
        raise ConfigError(f"{where}: [loss] name/reduction: a CRF head trains on its own sequence NLL; "
                          f"use name = \"ce\" with reduction \"mean\" or \"sum\"")
    if cfg.sampler.name == "btl" and cfg.loss.reduction == "weighted_mean":
        raise ConfigError(f"{where}: [loss] reduction: 'weighted_mean' is for ATL only; BTL copies are "
                          f"normalised by the labelled-token count (\"mean\") or not at all (\"sum\")")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"{where}: [optim] betas: expected two numbers, got {cfg.optim.betas!r}")
    if cfg.data.stride >= cfg.data.max_length - 2:
        raise ConfigError(f"{where}: [data] stride: expected < max_length - 2 = {cfg.data.max_length - 2}, "
                          f"got {cfg.data.stride}")
    if (cfg.data.dev_file or cfg.data.test_file) and not cfg.data.train_file:
        raise ConfigError(f"{where}: [data] dev_file/test_file need train_file as well")
    if cfg.data.train_file and not cfg.data.dev_file and cfg.train.early_stopping_patience:
        raise ConfigError(f"{where}: [train] early_stopping_patience: needs a dev set ([data] dev_file)")
    if cfg.data.train_file and not cfg.data.dev_file and "calibrated" in cfg.eval.decode:
        raise ConfigError(f"{where}: [eval] decode: 'calibrated' is fitted on dev and needs a dev set "
                          f"([data] dev_file)")
    if cfg.eval.select == "last" and cfg.train.early_stopping_patience:
        raise ConfigError(f"{where}: [train] early_stopping_patience: with [eval] select = \"last\" nothing "
                          f"is compared across epochs; set patience to 0 or select by a dev score")
    if len(set(cfg.eval.decode)) != len(cfg.eval.decode):
        raise ConfigError(f"{where}: [eval] decode: {cfg.eval.decode} names a decode twice")
    if cfg.train.device != "auto" and not (cfg.train.device == "cpu" or cfg.train.device.startswith("cuda")):
        raise ConfigError(f"{where}: [train] device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', "
                          f"got {cfg.train.device!r}")


def has_crf(cfg: TrainConfig) -> bool:
    return cfg.model.head == "crf" or cfg.model.arch == "bilstm_crf"


def config_to_dict(cfg: TrainConfig) -> dict:
    """The config as plain ``{section: {key: value}}``: JSON/TOML-ready, and ``load_config`` reads it back."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# =============================================================================================
# 2. Data


@dataclass
class Splits:
    """The corpora of one run and the label list (``labels[0] == "O"``); dev/test may be None
    for CoNLL-file runs without them."""
    train: object
    dev: object | None
    test: object | None
    labels: list[str]


def load_splits(cfg: DataConfig) -> Splits:
    """Read the three splits (a bundled corpus, or CoNLL files) and build the label list.

    A bundled corpus takes its label list from all of its splits (``entity_types(name)``), so a
    type that is rare in train still gets a label; CoNLL files from the union of the given files.
    ``max_documents`` keeps the first N documents of each split (after the labels are fixed).
    """
    from bertlab.datasets import entity_types, label_list, load, read_conll
    if cfg.train_file:
        def read(path, split):
            return read_conll(path, split=split, name=Path(cfg.train_file).stem, scheme=cfg.scheme) if path else None
        train, dev, test = read(cfg.train_file, "train"), read(cfg.dev_file, "dev"), read(cfg.test_file, "test")
        types = set().union(*(c.entity_types for c in (train, dev, test) if c is not None))
    else:
        train, dev, test = (load(cfg.name, split) for split in ("train", "dev", "test"))
        types = entity_types(cfg.name)
    if cfg.max_documents:
        train, dev, test = (c.subset(cfg.max_documents) if c is not None else None for c in (train, dev, test))
    return Splits(train, dev, test, label_list(types))


def encode_corpus(tokenizer, corpus, labels: list[str], max_length: int, stride: int) -> list:
    """All training windows of a corpus: ``Window`` objects with label ids on first subwords."""
    label2id = {l: i for i, l in enumerate(labels)}
    sentences = [s for s in corpus.sentences if s.tokens]
    ids = [[label2id[t] for t in s.tags] for s in sentences]
    per_sentence = tokenizer.batch_encode([s.tokens for s in sentences], ids, max_length, stride)
    return [w for ws in per_sentence for w in ws]


def mention_counts(sentences) -> dict[str, int]:
    """Gold entity mentions per type (strict IOB2): how frequent each class is in training."""
    from bertlab.metrics import strict_entities
    counts: dict[str, int] = {}
    for s in sentences:
        for typ, _, _ in strict_entities(s.tags):
            counts[typ] = counts.get(typ, 0) + 1
    return dict(sorted(counts.items()))


# =============================================================================================
# 3. Model


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
    if cfg.preset:
        model = checkpoint.build_model(cfg.preset, labels, **cfg.overrides)
        tokenizer = Tokenizer.from_pretrained(cfg.tokenizer or checkpoint.builtin_path(cfg.builtin))
    else:
        if cfg.overrides:
            raise ConfigError("[model] overrides: only used with preset (a pretrained model keeps its config)")
        model, tokenizer = checkpoint.load_pretrained(cfg.path or checkpoint.builtin_path(cfg.builtin),
                                                      labels=labels)
        if cfg.tokenizer:
            tokenizer = Tokenizer.from_pretrained(cfg.tokenizer)
        if tokenizer is None:
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


BILSTM_OPTIONS = ("embedding_dim", "lstm_hidden_size", "num_layers", "dropout", "min_freq")


def build_bilstm(cfg: ModelConfig, labels: list[str], train_corpus):
    """A BiLSTM(-CRF) tagger over a word vocabulary of the training corpus; ``overrides`` may set
    embedding_dim, lstm_hidden_size, num_layers, dropout (BiLSTMTagger) and min_freq (vocabulary)."""
    from bertlab.baselines import BiLSTMTagger, WordTokenizer
    unknown = sorted(set(cfg.overrides) - set(BILSTM_OPTIONS))
    if unknown:
        raise ConfigError(f"[model] overrides: {unknown} not BiLSTM options; expected some of {list(BILSTM_OPTIONS)}")
    options = dict(cfg.overrides)
    tokenizer = WordTokenizer.build([s.tokens for s in train_corpus.sentences], min_freq=options.pop("min_freq", 1))
    head = "crf" if cfg.arch == "bilstm_crf" else cfg.head
    model = BiLSTMTagger(len(tokenizer), labels, head=head, **options)
    model.train()
    return model, tokenizer


def is_bilstm(model) -> bool:
    return getattr(model.config, "model_type", "") == "bilstm"


def save_best(model, tokenizer, folder: Path) -> None:
    """The best model so far, atomically: a Hugging Face folder (``save_pretrained``) for BERT /
    DistilBERT; for a BiLSTM, ``model.safetensors`` + ``bilstm.json`` + the word vocabulary."""
    from bertlab.checkpoint import save_pretrained
    if not is_bilstm(model):
        save_pretrained(model, tokenizer, folder)
        return
    from safetensors.torch import save_file
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    (tmp / "bilstm.json").write_text(json.dumps({"labels": model.labels, "head": model.head,
                                                 "config": model.config.to_dict()}, indent=2) + "\n")
    tokenizer.save(tmp)
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_best_into(model, folder: Path) -> None:
    """Copy the weights saved by ``save_best`` back into ``model``."""
    if is_bilstm(model):
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
        return
    from bertlab.checkpoint import load_pretrained
    best, _ = load_pretrained(folder, labels=model.labels)
    model.load_state_dict(best.state_dict())


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# =============================================================================================
# 4. Batches


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
# 5. The objective and the optimisation step


class Objective:
    """How one micro-batch is scored, and what the accumulated loss is divided by.

    ``loss_sum(model, batch) -> (sum over the micro-batch, logits)``: always a *sum* (token losses
    with reduction "sum", CRF NLL summed over sequences, BTL copies each summed then combined), so
    micro-batches and processes add up exactly; ``normaliser(window indices)`` is the divisor for
    the whole accumulated global batch, computed on the host from the labels (no device sync):

    =================  ===============================================================
    [loss] reduction   normaliser of the optimisation step
    =================  ===============================================================
    "mean" (default)   labelled tokens (label != -100) in all its micro-batches
    "weighted_mean"    Σ α_t over those tokens (ATL only)
    "sum"              1
    =================  ===============================================================
    """

    def __init__(self, cfg: TrainConfig, labels: list[str], train_windows: list):
        self.labels = labels
        self.kind = ("crf" if has_crf(cfg) else
                     f"btl_{cfg.sampler.btl_impl}" if cfg.sampler.name == "btl" else "token")
        self.sampler = cfg.sampler
        counts = label_counts([w.labels for w in train_windows], len(labels))
        self.label_counts = counts
        self.token_loss = dataclasses.replace(build_loss(cfg.loss, counts), reduction="sum")
        self.reduction = cfg.loss.reduction
        labelled = np.array([sum(1 for l in w.labels if l != -100) for w in train_windows], dtype=np.float64)
        if self.reduction == "mean":
            self.window_weight = labelled
        elif self.reduction == "sum":
            self.window_weight = None
        else:  # weighted_mean: Σ α_t per window
            alpha = self.token_loss.alpha
            if alpha is None:
                alpha = np.ones(len(labels))
            elif isinstance(alpha, (int, float)):
                alpha = np.full(len(labels), float(alpha))
            else:
                alpha = alpha.double().numpy()
            self.window_weight = np.array([sum(alpha[l] for l in w.labels if l != -100) for w in train_windows])

    def normaliser(self, windows: list[int]) -> float:
        if self.window_weight is None:
            return 1.0
        return max(float(self.window_weight[windows].sum()), 1e-12) if windows else 1.0

    def loss_sum(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.sampler
        if self.kind == "btl_naive":  # K forward passes, one per copy; no single logits tensor
            loss, _ = btl_naive_loss(model, batch, self.labels, self.token_loss,
                                     s.btl_mode, s.btl_classes, s.btl_combine)
            return loss, None
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if self.kind == "token":
            # the per-token kernel directly: the same sum as token_loss(..., reduction="sum") without
            # its label-range check, which would sync with the device every step (labels were
            # checked once, by label_counts, when the data was built)
            t = self.token_loss
            per_token, _ = token_losses(logits, batch["labels"], t.gamma, t.alpha, t.ignore_index)
            return per_token.sum(), logits
        if self.kind == "crf":
            return model.crf_loss(logits, batch["labels"], reduction="sum"), logits
        loss, _ = btl_fused_loss(logits, batch["labels"], self.labels, self.token_loss,
                                 s.btl_mode, s.btl_classes, s.btl_combine)
        return loss, logits


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
class Run:
    """Everything the step needs, built once by ``train``."""
    model: torch.nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    params: list
    device: torch.device
    autocast: object           # a callable returning the autocast context
    clip_grad_norm: float
    callbacks: list
    world_size: int = 1
    flat_grad: torch.Tensor | None = None  # multi-process: all gradients as views of one buffer


def optimisation_step(run: Run, step: int, micro_batches: list[dict], normaliser: float,
                      lr_scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimisation step over ``micro_batches`` (this process's shards, already on the device).

    Each micro-batch's loss *sum* is divided by ``normaliser`` (the labelled tokens of the whole
    accumulated global batch, see ``Objective``) before backward, so the accumulated gradient is
    the gradient of Σ_all tokens l_i / N_total whatever the micro-batch split; processes then *sum*
    their gradients. Returns ``(loss, grad_norm)`` as device tensors (no host sync here): this
    process's share of the step loss, and the pre-clipping gradient norm (None without clipping).
    """
    model = run.model
    total = torch.zeros((), dtype=torch.float32, device=run.device)
    for batch in micro_batches:
        with run.autocast():
            loss_sum, logits = run.objective.loss_sum(model, batch)
        loss = loss_sum.float() / normaliser
        for cb in run.callbacks:
            if hasattr(cb, "on_batch"):
                cb.on_batch(step, model, batch, logits, loss)
        loss.backward()
        total += loss.detach()
    if run.flat_grad is not None:
        torch.distributed.all_reduce(run.flat_grad)  # sum over processes: one collective per step
    for cb in run.callbacks:
        if hasattr(cb, "after_backward"):
            cb.after_backward(step, model)
    grad_norm = None
    if run.clip_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, run.clip_grad_norm, foreach=True)
    for g in run.optimizer.param_groups:
        g["lr"] = g["initial_lr"] * lr_scale
    run.optimizer.step()
    for cb in run.callbacks:
        if hasattr(cb, "after_optimizer_step"):
            cb.after_optimizer_step(step, model, run.optimizer)
    # multi-process: keep the gradients as views of flat_grad (zeroed in place, never freed)
    run.optimizer.zero_grad(set_to_none=run.flat_grad is None)
    return total, grad_norm


# =============================================================================================
# 6. Checkpoints

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "bertlab-train-checkpoint/1"
# config fields a resumed run may change: they do not change what is computed
RESUMABLE_CHANGES = {("train", "progress"), ("train", "log_every"), ("train", "checkpoint_every"),
                     ("train", "eval_batch_size")}


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
    epoch_tokens: int = 0
    history: list = field(default_factory=list)        # one dict per finished epoch
    timing: list = field(default_factory=list)         # its seconds and tokens/s
    log_bytes: int = 0             # size of log.jsonl when the checkpoint was written


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


def save_checkpoint(path: Path, model, optimizer, progress: Progress, config: dict, rng: list) -> None:
    """Write the checkpoint atomically: a temp file in the same folder, fsync, then rename over
    ``path``. Only tensors, strings and numbers are stored, so ``torch.load(weights_only=True)``
    reads it back (nothing is unpickled)."""
    obj = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
           "rng": rng, "progress": json.dumps(dataclasses.asdict(progress)), "config": json.dumps(config)}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}); delete it "
                           f"or train with --no-resume") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path}: not a bertlab training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def config_differences(old: dict, new: dict) -> list[str]:
    """``[section] key`` of every field that differs (except RESUMABLE_CHANGES)."""
    out = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if (section, key) not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
                out.append(f"[{section}] {key} ({a.get(key)!r} -> {b.get(key)!r})")
    return out


def write_json_atomic(path: Path, obj) -> None:
    write_json(path, clean_json(obj))


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_jsonl(path, (clean_json(row) for row in rows))


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


# =============================================================================================
# 7. Processes, devices, logging


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
        if d.world_size > 1 and name == "cuda":
            name = f"cuda:{d.local_rank}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def autocast_for(precision: str, device: torch.device):
    """A factory of the forward pass's autocast context: bf16 autocast, or nothing (fp32)."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


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


# =============================================================================================
# 8. The loop


def train(config: TrainConfig | str | os.PathLike | dict, out_dir: str | os.PathLike, callbacks=(),
          resume: bool = True, log=None) -> dict:
    """Train one model; returns the metrics written to ``out_dir/metrics.json``.

    ``config``: a TrainConfig (or anything ``load_config`` reads). ``callbacks``: objects with any
    of ``on_batch(step, model, batch, logits, loss)``, ``after_backward(step, model)``,
    ``after_optimizer_step(step, model, optimizer)``, ``on_epoch_end(epoch, metrics)``,
    ``on_train_end(metrics)`` (steps count from 1; ``logits`` is None for naive BTL, which runs
    one forward per copy). ``resume``: continue from ``out_dir/checkpoint.pt`` if there is one
    (a finished run just returns its metrics); False starts over. ``log``: a function taking one
    line of text for progress messages (default: stderr, rank 0 only).
    Raises ConfigError for a bad config and NonFiniteLossError if the loss becomes NaN/inf.
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    d = setup_distributed(cfg.train.device)
    try:
        return _train(cfg, Path(out_dir), list(callbacks), resume, log, d)
    finally:
        if d.initialised_here:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, out_dir: Path, callbacks: list, resume: bool, log, d: Dist) -> dict:
    from tqdm import tqdm
    if log is None:
        log = (lambda line: tqdm.write(line, file=sys.stderr)) if d.main else (lambda line: None)
    device = pick_device(cfg.train.device, d)
    config_dict = config_to_dict(cfg)
    ckpt_path = out_dir / CHECKPOINT
    metrics_path = out_dir / "metrics.json"

    # -- resume or start over ---------------------------------------------------------------
    ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if ckpt is not None:
        diffs = config_differences(json.loads(ckpt["config"]), config_dict)
        if diffs:
            raise ConfigError(f"{ckpt_path}: written by a run with a different config: {'; '.join(diffs)}. "
                              f"Resume with the same config, or start over (--no-resume) or use another --out")
        progress = Progress(**json.loads(ckpt["progress"]))
        if progress.training_done and metrics_path.exists():
            log(f"{out_dir}: already finished, metrics.json kept")
            return json.loads(metrics_path.read_text(encoding="utf-8"))
    else:
        progress = Progress()
        if d.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            for stale in (ckpt_path, metrics_path):  # a previous run's results must not survive
                stale.unlink(missing_ok=True)
            for folder in out_dir.glob("best*"):
                shutil.rmtree(folder, ignore_errors=True)
    if d.main:
        for tmp in out_dir.glob(f".{CHECKPOINT}.tmp-*"):  # left by a process killed while writing
            tmp.unlink(missing_ok=True)
    barrier(d)

    # -- data, model, objective, optimizer ---------------------------------------------------
    seed = cfg.train.seed
    seed_everything(seed)
    splits = load_splits(cfg.data)
    model, tokenizer = build_model_and_tokenizer(cfg.model, splits.labels, splits.train)
    model.to(device)
    windows = encode_corpus(tokenizer, splits.train, splits.labels, cfg.data.max_length, cfg.data.stride)
    if not windows:
        raise ConfigError("[data] the training split has no sentences")
    lengths = [len(w) for w in windows]
    objective = Objective(cfg, splits.labels, windows)
    optimizer = make_optimizer(model, cfg.optim, device)
    params = [p for p in model.parameters() if p.requires_grad]

    flat_grad = None
    if d.world_size > 1:
        flat_grad = share_gradients(params, device)

    batch_size, accum = cfg.sampler.batch_size, cfg.optim.grad_accum
    n_micro = len(epoch_batches(lengths, batch_size, seed, 0))
    steps_per_epoch = math.ceil(n_micro / accum)
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    warmup_steps = math.ceil(cfg.optim.warmup_ratio * total_steps)

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
    resumed = ckpt is not None
    ckpt = None  # free the host copy

    run = Run(model=model, objective=objective, optimizer=optimizer, params=params, device=device,
              autocast=autocast_for(cfg.train.precision, device), clip_grad_norm=cfg.optim.clip_grad_norm,
              callbacks=callbacks, world_size=d.world_size, flat_grad=flat_grad)
    precision = "bf16" if cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda") \
        else "fp32"
    eval_options = dict(max_length=cfg.data.max_length, stride=cfg.data.stride,
                        batch_size=cfg.train.eval_batch_size, precision=precision)
    primary = cfg.eval.decode[0]
    n_params = count_parameters(model)
    jlog = JsonlLog(out_dir / "log.jsonl", d.main, progress.log_bytes if resumed else None)
    jlog.write(event="resume" if resumed else "start", step=progress.step, epoch=progress.epoch,
               device=str(device), precision=precision, world_size=d.world_size, n_parameters=n_params,
               train_windows=len(windows), micro_batches_per_epoch=n_micro, steps_per_epoch=steps_per_epoch,
               total_steps=total_steps, warmup_steps=warmup_steps, time=time.time())
    if not resumed:
        log(f"training {type(model.encoder).__name__ if hasattr(model, 'encoder') else type(model).__name__} "
            f"({n_params / 1e6:.2f}M parameters) on {device} ({precision}, {d.world_size} process(es)): "
            f"{len(windows)} windows, {steps_per_epoch} steps/epoch, {total_steps} steps")

    # -- bookkeeping shared by the steps: sync points, checkpoints ---------------------------
    pending: list = []       # (step, loss tensor, grad-norm tensor) not yet read on the host
    since_log: list = list(progress.unlogged_losses)  # losses read since the last log line
    last_good = {"step": None}
    segment_start = [time.perf_counter()]

    def read_pending() -> None:
        """The one host sync: losses (and grad norms) of the steps since the last sync."""
        if not pending:
            return
        losses = torch.stack([l for _, l, _ in pending])
        if d.world_size > 1:
            torch.distributed.all_reduce(losses)
        values = losses.tolist()
        norms = (torch.stack([g for _, _, g in pending]).tolist() if pending[0][2] is not None
                 else [0.0] * len(pending))
        for (step, _, _), value, norm in zip(pending, values, norms):
            if not (math.isfinite(value) and math.isfinite(norm)):
                what = f"loss {value}" if not math.isfinite(value) else f"gradient norm {norm} (loss {value})"
                raise NonFiniteLossError(
                    f"non-finite {what} at step {step} (epoch {progress.epoch}); training stopped. "
                    + (f"The last good checkpoint is {ckpt_path} (step {last_good['step']})."
                       if last_good["step"] is not None else "No checkpoint was written in this session."))
        progress.epoch_losses.extend(values)
        since_log.extend(values)
        pending.clear()
        return norms[-1]

    def checkpoint() -> None:
        now = time.perf_counter()
        progress.epoch_train_seconds += now - segment_start[0]
        segment_start[0] = now
        norm = torch.nn.utils.get_total_norm(params, foreach=True)
        if not math.isfinite(float(norm)):
            raise NonFiniteLossError(
                f"the parameters became non-finite by step {progress.step} (epoch {progress.epoch}); "
                f"training stopped, {ckpt_path} left as it was (step {last_good['step']})")
        rng = [rng_state()]
        if d.world_size > 1:
            rng = [None] * d.world_size
            torch.distributed.all_gather_object(rng, rng_state())
        if d.main:
            progress.log_bytes = jlog.size
            progress.unlogged_losses = list(since_log)
            save_checkpoint(ckpt_path, model, optimizer, progress, config_dict, rng)
        last_good["step"] = progress.step
        barrier(d)

    # -- epochs ------------------------------------------------------------------------------
    while not progress.training_done:
        epoch = progress.epoch
        batches = epoch_batches(lengths, batch_size, seed, epoch)
        steps = [batches[i:i + accum] for i in range(0, len(batches), accum)]
        bar = tqdm(total=len(steps), initial=progress.micro_batch // accum, desc=f"epoch {epoch}",
                   unit="step", disable=not (d.main and show_progress(cfg.train.progress)),
                   file=sys.stderr, dynamic_ncols=True)
        segment_start[0] = time.perf_counter()
        log_start, log_tokens = time.perf_counter(), 0
        if progress.micro_batch == 0:
            since_log.clear()  # a log line's mean loss never mixes two epochs
        hit_max_steps = False
        for k in range(progress.micro_batch // accum, len(steps)):
            if cfg.train.max_steps and progress.step >= cfg.train.max_steps:
                hit_max_steps = True
                break
            group = steps[k]
            micro = []
            for b in group:
                rows = shard(b, d.rank, d.world_size)
                if rows:  # a process with no rows only adds its zero gradient
                    batch = collate([windows[i] for i in rows], pad_token_id=tokenizer.pad_token_id)
                    if device.type == "cuda":  # pinned host memory: the copy overlaps with compute
                        batch = {key: v.pin_memory() for key, v in batch.items()}
                    micro.append({key: v.to(device, non_blocking=True) for key, v in batch.items()})
            normaliser = objective.normaliser([i for b in group for i in b])
            loss, grad_norm = optimisation_step(
                run, progress.step + 1, micro, normaliser,
                lr_factor(progress.step, total_steps, warmup_steps, cfg.optim.schedule))
            progress.step += 1
            progress.micro_batch = min((k + 1) * accum, len(batches))
            tokens = sum(lengths[i] for b in group for i in b)
            progress.epoch_tokens += tokens
            log_tokens += tokens
            pending.append((progress.step, loss, grad_norm))
            bar.update(1)
            if progress.step % cfg.train.log_every == 0:
                norm = read_pending()
                now = time.perf_counter()
                mean_loss = math.fsum(since_log) / max(len(since_log), 1)
                tokens_per_s = log_tokens / max(now - log_start, 1e-9)
                lr = optimizer.param_groups[0]["lr"]
                jlog.write(event="step", step=progress.step, epoch=epoch, loss=mean_loss, lr=lr,
                           grad_norm=norm if cfg.optim.clip_grad_norm > 0 else None, tokens_per_s=tokens_per_s)
                bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{lr:.2e}")
                since_log.clear()
                log_start, log_tokens = now, 0
            if cfg.train.checkpoint_every and progress.step % cfg.train.checkpoint_every == 0:
                read_pending()
                checkpoint()
        bar.close()
        read_pending()
        progress.epoch_train_seconds += time.perf_counter() - segment_start[0]

        # -- end of epoch: dev scores of every decode, each decode's best model, early stopping --
        t0 = time.perf_counter()
        check_finite(params, f"at the end of epoch {epoch} (step {progress.step})")  # never saved as best
        dev, fitted = (evaluate_dev(model, tokenizer, splits, cfg, eval_options) if d.main else (None, {}))
        dev = broadcast_value(dev, d)
        improved, progressed = update_best(progress.best, cfg.eval, epoch, dev)
        if improved and d.main:
            save_best_folders(model, tokenizer, out_dir, improved, fitted, cfg, epoch, config_dict)
        progress.epochs_without_improvement = 0 if progressed else progress.epochs_without_improvement + 1
        progress.best_epoch = progress.best[primary]["epoch"]
        if dev is not None and primary in improved:
            progress.best_dev_f1 = dev["decodes"][primary]["f1_micro"]
        eval_seconds = time.perf_counter() - t0
        n_steps = len(progress.epoch_losses)
        dev_f1 = dev["decodes"][primary]["f1_micro"] if dev is not None else None
        record = {"epoch": epoch, "step": progress.step,
                  "train_loss": math.fsum(progress.epoch_losses) / n_steps if n_steps else None,
                  "dev_loss": dev["loss"] if dev is not None else None,
                  "dev": dev["decodes"] if dev is not None else None,
                  "dev_f1": dev_f1, "best_dev_f1": progress.best_dev_f1 if dev is not None else None,
                  "best_epoch": progress.best_epoch,
                  "best_epochs": {k: v["epoch"] for k, v in progress.best.items()}}
        seconds = progress.epoch_train_seconds
        timing = {"epoch": epoch, "train_seconds": seconds, "eval_seconds": eval_seconds,
                  "train_tokens": progress.epoch_tokens, "tokens_per_s": progress.epoch_tokens / max(seconds, 1e-9)}
        progress.history.append(record)
        progress.timing.append(timing)
        jlog.write(event="epoch", **record, **{k: v for k, v in timing.items() if k != "epoch"})
        if d.main:
            write_metrics_csv(out_dir / "metrics.csv", progress.history, progress.timing, cfg.eval.decode)
        scores = ", ".join(f"{k} {fmt(v['f1_micro'])}" for k, v in (record["dev"] or {}).items())
        log(f"epoch {epoch}: train loss {fmt(record['train_loss'])}, dev loss {fmt(record['dev_loss'])}, "
            f"dev micro F1 {scores or '-'} (best epoch {record['best_epochs']}), "
            f"{seconds:.1f}s + {eval_seconds:.1f}s eval, {timing['tokens_per_s']:,.0f} tokens/s")
        for cb in callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(epoch, dict(record))
        patience = cfg.train.early_stopping_patience
        progress.stopped_early = bool(patience and progress.epochs_without_improvement >= patience)
        progress.epoch += 1
        progress.micro_batch = 0
        progress.epoch_losses, progress.epoch_train_seconds, progress.epoch_tokens = [], 0.0, 0
        progress.training_done = (progress.stopped_early or hit_max_steps or progress.epoch >= cfg.train.epochs
                                  or bool(cfg.train.max_steps and progress.step >= cfg.train.max_steps))
        if progress.stopped_early:
            log(f"early stopping: no decode's dev {cfg.eval.select} improved for {patience} epoch(s)")
        segment_start[0] = time.perf_counter()  # the new epoch's clock starts now
        checkpoint()

    # -- the end: the best model on dev and test, every decode -------------------------------
    metrics = None
    if d.main:
        best_epochs = {k: v["epoch"] for k, v in progress.best.items()}
        metrics = final_evaluation(cfg, model, tokenizer, splits, out_dir, eval_options, log, best_epochs)
        metrics.update(config=config_dict, labels=splits.labels, params=n_params, device=str(device),
                       precision=precision, world_size=d.world_size, steps=progress.step,
                       epochs=len(progress.history), best_epoch=progress.best_epoch,
                       best_epochs=best_epochs, select=cfg.eval.select,
                       best_dev_f1=progress.best_dev_f1 if splits.dev is not None else None,
                       stopped_early=progress.stopped_early, history=progress.history,
                       train_mentions=mention_counts(splits.train.sentences),
                       train_seconds=sum(t["train_seconds"] for t in progress.timing),
                       timing=progress.timing)
        write_json_atomic(metrics_path, metrics)
        jlog.write(event="end", step=progress.step, best_epoch=progress.best_epoch,
                   best_dev_f1=metrics["best_dev_f1"], time=time.time())
        for split in ("dev", "test"):
            for decode, m in metrics.get(split, {}).items():
                log(f"{split} {decode}: entity micro F1 {m['micro_f1']:.4f}")
    metrics = broadcast_value(metrics, d)
    for cb in callbacks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end(metrics)
    return metrics


def evaluate_split(model, tokenizer, corpus, decode: str, knn, options: dict, logits=None, calibrator=None) -> dict:
    from bertlab.inference import evaluate
    return evaluate(model, tokenizer, corpus, decode=decode, knn=knn, logits=logits, calibrator=calibrator, **options)


def final_evaluation(cfg: TrainConfig, model, tokenizer, splits: Splits, out_dir: Path, options: dict, log,
                     best_epochs: dict | None = None) -> dict:
    """Score dev and test with every decode of ``[eval] decode``, each on the checkpoint chosen
    for it (``best_folder``), with the KNN reference / calibration saved beside that checkpoint;
    decodes that share a checkpoint share its forward pass. Writes
    ``predictions_<split>_<decode>.jsonl``; returns ``{"dev": {decode: ...}, "test": {...}}``."""
    from bertlab.calibration import CALIBRATION_FILE, BiasCalibrator
    from bertlab.inference import fit_knn_on_train, word_logits
    from bertlab.knn import KNN_FILE, KNNClassifier
    best_epochs = best_epochs or {}
    groups: dict[Path, list[str]] = {}
    for decode in cfg.eval.decode:
        groups.setdefault(best_folder(out_dir, decode, cfg.eval.decode), []).append(decode)
    out: dict = {}
    for folder, decodes in groups.items():
        if folder.exists():
            load_best_into(model, folder)
        knn = calibrator = None
        if "knn" in decodes:
            if (folder / KNN_FILE).exists():
                knn = KNNClassifier.load(folder / KNN_FILE)
            else:  # no dev set at epoch end: fit it now, and keep it for `bertlab predict --knn`
                knn = fit_knn_on_train(model, tokenizer, splits.train.sentences, k=cfg.eval.knn_k,
                                       metric=cfg.eval.knn_metric, **options)
                if folder.exists():
                    knn.save(folder / KNN_FILE)
        if "calibrated" in decodes and (folder / CALIBRATION_FILE).exists():
            calibrator = BiasCalibrator.load(folder / CALIBRATION_FILE)
        for split in ("dev", "test"):
            corpus = getattr(splits, split)
            if corpus is None:
                continue
            t0 = time.perf_counter()
            logits = word_logits(model, tokenizer, corpus.sentences, **options)
            forward_seconds = time.perf_counter() - t0
            if "calibrated" in decodes and calibrator is None and split == "dev":
                calibrator = BiasCalibrator(model.labels).fit(logits, [s.tags for s in corpus.sentences])
                if folder.exists():
                    calibrator.save(folder / CALIBRATION_FILE)
            n_words = sum(len(s.tokens) for s in corpus.sentences)
            for decode in decodes:
                t0 = time.perf_counter()
                result = evaluate_split(model, tokenizer, corpus, decode, knn, options, logits=logits,
                                        calibrator=calibrator)
                seconds = forward_seconds + time.perf_counter() - t0
                write_jsonl_atomic(out_dir / f"predictions_{split}_{decode}.jsonl", result.pop("predictions"))
                result["tokens_per_second"] = n_words / max(seconds, 1e-9)
                result["best_epoch"] = best_epochs.get(decode)
                out.setdefault(split, {})[decode] = result
    # the order of [eval] decode, whatever order the checkpoints were visited in
    return {split: {d: v[d] for d in cfg.eval.decode if d in v} for split, v in out.items()}


# ---- the end of an epoch: dev scores, selection per decode, best folders -------------------------

def evaluate_dev(model, tokenizer, splits: Splits, cfg: TrainConfig, options: dict) -> tuple[dict | None, dict]:
    """Dev scores of the model as it is now, for every decode of ``[eval] decode``, from one
    forward pass over dev (and one over train for ``knn``, whose reference is the training words).

    Returns ``({"loss": dev loss, "decodes": {decode: {"f1_micro", "f1_macro",
    "unweighted_accuracy"}}}, fitted)``; ``fitted`` holds the KNN reference and the calibration
    made for this epoch, saved beside the checkpoint if this epoch becomes that decode's best.
    The dev loss is plain cross entropy at each word's first subword, averaged over dev words
    (the same for every loss and sampler, so curves compare across them). No dev set: ``(None, {})``.
    """
    from bertlab.calibration import BiasCalibrator
    from bertlab.inference import decode_tags, fit_knn_on_train, word_logits
    from bertlab.metrics import entity_report, unweighted_accuracy
    if splits.dev is None:
        return None, {}
    sentences = splits.dev.sentences
    logits = word_logits(model, tokenizer, sentences, **options)
    gold = [list(s.tags) for s in sentences]
    fitted = {}
    if "knn" in cfg.eval.decode:
        fitted["knn"] = fit_knn_on_train(model, tokenizer, splits.train.sentences, k=cfg.eval.knn_k,
                                         metric=cfg.eval.knn_metric, **options)
    if "calibrated" in cfg.eval.decode:
        fitted["calibrated"] = BiasCalibrator(model.labels).fit(logits, gold)
    scores = {}
    for decode in cfg.eval.decode:
        pred = decode_tags(decode, logits, model, fitted.get("knn"), fitted.get("calibrated"))
        report = entity_report(gold, pred, scheme="IOB2", mode="strict", zero_division=0)
        scores[decode] = {"f1_micro": report["micro avg"]["f1-score"], "f1_macro": report["macro avg"]["f1-score"],
                          "unweighted_accuracy": unweighted_accuracy(gold, pred)}
    return {"loss": word_cross_entropy(logits, gold, model.labels), "decodes": scores}, fitted


def word_cross_entropy(logits: list[np.ndarray], tags: list[list[str]], labels: list[str]) -> float:
    """Mean over words of -log softmax(z)[gold] (float64): the dev loss of the learning curves."""
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


def best_folder(out_dir: Path, decode: str, decodes: list[str]) -> Path:
    """Where ``decode``'s checkpoint lives: ``best/`` for the first decode of ``[eval] decode``,
    ``best-<decode>/`` for the others (hard links to the same files when the epochs agree)."""
    return Path(out_dir) / ("best" if decode == decodes[0] else f"best-{decode}")


BEST_META = "bertlab_train.json"  # in every best folder: the run's config and which epoch/decode it is


def save_best_folders(model, tokenizer, out_dir: Path, decodes: list[str], fitted: dict, cfg: TrainConfig,
                      epoch: int, config_dict: dict) -> None:
    """Save the model as the best checkpoint of each of ``decodes`` (once on disk: the other
    folders are hard links), with the decode's KNN reference or calibration beside it."""
    from bertlab.calibration import CALIBRATION_FILE
    from bertlab.knn import KNN_FILE
    folders = [best_folder(out_dir, dec, cfg.eval.decode) for dec in decodes]
    save_best(model, tokenizer, folders[0])
    for folder in folders[1:]:
        link_folder(folders[0], folder)
    for decode, folder in zip(decodes, folders):
        write_json_atomic(folder / BEST_META, {"config": config_dict, "decode": decode, "epoch": epoch,
                                               "select": cfg.eval.select, "labels": list(model.labels)})
        if decode == "knn" and "knn" in fitted:
            fitted["knn"].save(folder / KNN_FILE)
        if decode == "calibrated" and "calibrated" in fitted:
            fitted["calibrated"].save(folder / CALIBRATION_FILE)


def link_folder(src: Path, dst: Path) -> None:
    """Replace folder ``dst`` by hard links to the files of ``src`` (copies where links are not
    possible), atomically: built beside it, then renamed over it."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def check_finite(params: list, where: str) -> None:
    """NonFiniteLossError if any parameter holds NaN/inf (checked before a model is saved as best)."""
    norm = torch.nn.utils.get_total_norm(params, foreach=True)
    if not math.isfinite(float(norm)):
        raise NonFiniteLossError(f"the parameters became non-finite {where}; training stopped, the best "
                                 f"model saved so far (if any) is kept")


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
# 9. Command line


def main(argv: list[str] | None = None) -> int:
    """``bertlab train --config FILE.toml [--set section.key=value ...] [--out DIR] [--no-resume]``."""
    ap = argparse.ArgumentParser(prog="bertlab train", description="Train one model from a TOML config "
                                 "(docs/training.md). Under torchrun, trains data-parallel.")
    ap.add_argument("--config", required=True, help="a TrainConfig TOML file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config field, value parsed as TOML (repeatable), e.g. optim.lr=1e-4")
    ap.add_argument("--out", help="output folder (default: runs/train/<config file name>)")
    ap.add_argument("--no-resume", action="store_true", help="start over even if OUT has a checkpoint")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path("runs") / "train" / Path(args.config).stem
    try:
        raw = read_toml(args.config)
        # a [gradflow] section turns the gradient-flow instruments on (bertlab.gradflow)
        gradflow = raw.pop("gradflow", None)
        cfg = config_from_dict(_with_overrides(raw, args.overrides, args.config), args.config)
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
    except ConfigError as e:
        print(f"bertlab train: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"bertlab train: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {out / 'metrics.json'} (best model: {out / 'best'})")
    return 0 if metrics is not None else 1
