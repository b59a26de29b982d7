"""Training configs: one dataclass per TOML section, read and validated in one place.

``load_config`` turns a TOML file (or a dict of sections, or a TrainConfig) plus ``--set
section.key=value`` overrides into a :class:`TrainConfig`; any problem is one
:class:`ConfigError` naming the file and ``[section] key`` and what was expected. ``bertlab
train`` and ``bertlab experiment`` both validate with ``config_from_dict``, so a study accepts
exactly what a single run does. docs/training.md has the field reference.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bertlab.constrained import BIO, CONSTRAINABLE, base_decode
from bertlab.errors import BertlabError
from bertlab.losses.config import LOSS_NAMES, LossConfig, build_loss
from bertlab.losses.functional import REDUCTIONS, WEIGHT_SCHEMES
from bertlab.sampling import RESAMPLING_METHODS

class ConfigError(BertlabError, ValueError):
    """A bad training config. The message names the file, ``[section] key`` and what was expected."""


@dataclass
class DataConfig:
    name: str = "maccrobat"      # bundled corpus (bertlab.datasets.load); ignored when train_file is set
    train_file: str = ""         # one's own data instead of a bundled corpus, each a CoNLL file or a brat
    dev_file: str = ""           # folder (<id>.txt + <id>.ann pairs, read as MACCROBAT is:
    test_file: str = ""          # bertlab.datasets.read_corpus); dev/test optional
    scheme: str = "IOB2"         # tag scheme of the CoNLL files (converted to IOB2 on reading)
    repair: bool = False         # CoNLL files: read invalid tag sequences (an orphan I-X) the forgiving
                                 # way, listing each change, instead of refusing the file
    max_documents: int = 0       # 0 = all; otherwise the first N documents of each split
    random_labels: bool = False  # shuffle the training mentions' entity types among them (spans and type
                                 # frequencies kept; dev/test untouched): the random-label experiment
    random_labels_seed: int = 0
    max_length: int = 128        # subwords per window, [CLS]/[SEP] included
    stride: int = 32             # overlap between consecutive windows of a long sentence
    folds: int = 0               # K >= 2: K-fold cross-validation over all the corpus's documents (its
                                 # splits pooled; bertlab.datasets.cross_validation_split): test = fold
                                 # `fold`, dev = a stratified tenth of the rest, train = the others;
                                 # max_documents then keeps the first N documents of the pooled corpus
    fold: int = 0                # which fold is the test set, 0 <= fold < folds
    fold_seed: int = 0           # the partition's seed (a study uses [study] fold_seed + train.seed)


@dataclass
class ModelConfig:
    builtin: str = "minilm"      # used when path, preset and arch are all empty
    path: str = ""               # a Hugging Face folder (BERT / DistilBERT)
    preset: str = ""             # random init: "tinybert" | "minilm" | "bert-base" | "distilbert" ...
    arch: str = ""               # "bilstm" | "bilstm_crf": the baselines (bertlab.baselines)
    head: str = "softmax"        # "softmax" | "crf"
    tokenizer: str = ""          # tokenizer folder for presets; default: the builtin checkpoint's
    overrides: dict = field(default_factory=dict)  # config fields of a preset (tiny test models)
    num_layers: int = 0          # keep only the first N encoder layers of a pretrained checkpoint
                                 # (layer dropping: a smaller real model); 0 = all


@dataclass
class SamplerConfig:
    name: str = "atl"            # "atl" (all token labels) | "btl" (binary token labels) | "resample"
                                 # (ATL, each training sentence repeated by its rarity score)
    method: str = ""             # resample only: "sC" | "sCR" | "sCRD" | "nsCRD" (Wang & Wang 2022)
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
    precision: str = "auto"      # "auto" (bf16 on CUDA and on CPUs with AVX512-BF16/AMX, else fp32) |
                                 # "fp32" | "bf16" (autocast) | "fp16" (autocast + GradScaler, for GPUs
                                 # without bf16: V100, T4)
    early_stopping_patience: int = 0  # epochs without dev F1 improvement before stopping; 0 = never
    checkpoint_every: int = 0    # optimisation steps; 0 = at the end of each epoch only
    keep_checkpoint: bool = True  # false: delete checkpoint.pt (weights + optimizer state, 170-270 MB for
                                 # MiniLM) once metrics.json is written; the finished run then cannot be
                                 # continued to more epochs, only retrained
    log_every: int = 10          # optimisation steps between log.jsonl lines (and host syncs)
    progress: str = "auto"       # tqdm bars: "auto" (a TTY and no $CI) | "on" | "off"
    eval_batch_size: int = 64    # windows per batch at evaluation
    pad_to_multiple_of: int = 0  # batch widths (training and evaluation) rounded up to a multiple of
                                 # this; 0 = the device's choice: 8 on CUDA (docs/performance.md,
                                 # "bf16 and CUDA"), 1 (the longest row) on a CPU
    tensorboard: bool = False    # also log to OUT/tensorboard (torch.utils.tensorboard; pip install bertlab[tensorboard])


@dataclass
class EvalConfig:
    # "argmax" | "viterbi" (CRF) | "knn" | "calibrated" | "logit_adjusted" (argmax of z - τ log π, τ
    # chosen on dev), or "argmax+bio" | "knn+bio" | "calibrated+bio" (IOB2-constrained,
    # bertlab.constrained); the first names the model in best/
    decode: list = field(default_factory=lambda: ["argmax"])
    knn_k: int = 17
    knn_metric: str = "euclidean"
    # how each decode's checkpoint is chosen on dev, every decode by its own scores:
    # "f1_micro" | "f1_macro" | "unweighted_accuracy" (higher wins, ties to the later epoch),
    # "loss" (lowest dev loss, shared by all decodes) | "last" (the last epoch)
    select: str = "f1_micro"
    # where the calibrated decoder's dev score (which selects its epoch) comes from: "dev" (offsets
    # fitted on all of dev, scored in-sample: the committed studies) | "crossfit" (dev documents in
    # two halves, each scored with the other half's offsets); test always uses offsets fitted on dev
    calibration_fit: str = "dev"


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
    ("sampler", "name"): ("atl", "btl", "resample"),
    ("sampler", "method"): ("",) + RESAMPLING_METHODS,
    ("sampler", "btl_impl"): ("fused", "naive"),
    ("sampler", "btl_mode"): ("other_to_o", "ignore", "binary"),
    ("sampler", "btl_classes"): ("present", "all"),
    ("sampler", "btl_combine"): ("mean", "sum"),
    ("optim", "name"): ("adamw", "sgd"),
    ("optim", "schedule"): ("linear", "constant"),
    ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
    ("train", "progress"): ("auto", "on", "off"),
    ("eval", "knn_metric"): ("euclidean", "cosine"),
    ("eval", "select"): ("f1_micro", "f1_macro", "unweighted_accuracy", "loss", "last"),
    ("eval", "calibration_fit"): ("dev", "crossfit"),
}
# every decode name, the one list ([eval] decode, bertlab predict/evaluate --decode, inference)
DECODES = ("argmax", "viterbi", "knn", "calibrated", "logit_adjusted") + tuple(d + BIO for d in CONSTRAINABLE)
# fields that must be >= the given minimum
MINIMUM = {
    ("model", "num_layers"): 0, ("data", "max_documents"): 0, ("data", "folds"): 0, ("data", "fold"): 0, ("data", "max_length"): 3, ("data", "stride"): 0,
    ("sampler", "batch_size"): 1, ("optim", "lr"): 0.0, ("optim", "weight_decay"): 0.0,
    ("optim", "eps"): 0.0, ("optim", "momentum"): 0.0, ("optim", "warmup_ratio"): 0.0,
    ("optim", "clip_grad_norm"): 0.0, ("optim", "grad_accum"): 1, ("optim", "crf_lr"): 0.0, ("train", "epochs"): 1,
    ("train", "max_steps"): 0, ("train", "early_stopping_patience"): 0, ("train", "checkpoint_every"): 0,
    ("train", "log_every"): 1, ("train", "eval_batch_size"): 1, ("train", "pad_to_multiple_of"): 0, ("eval", "knn_k"): 1,
    ("train", "seed"): 0,
}
# fields that must be <= the given maximum: a seed seeds numpy's legacy generator and torch, which
# take 0 .. 2**32 - 1 (numpy) and refuse larger or negative numbers with a traceback
MAXIMUM = {("train", "seed"): 2**32 - 1}


def _betas_problem(betas: list) -> str | None:
    """What is wrong with ``[optim] betas`` (AdamW's decay rates), or None."""
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        return "two numbers in [0, 1), e.g. [0.9, 0.999]"
    return None


# per-field checks beyond type, choices and range: (section, key) -> a function returning what
# was expected, or None when the value is fine
FIELD_CHECKS = {("optim", "betas"): _betas_problem}


def load_config(source: str | os.PathLike | dict | TrainConfig, overrides: list[str] | tuple = (),
                where: str | None = None) -> TrainConfig:
    """A validated :class:`TrainConfig` from a TOML file, a dict of sections, or a TrainConfig.

    ``overrides`` are ``"section.key=value"`` strings; the value is parsed as TOML
    (``lr=1e-4``, ``decode=["argmax","knn"]``), a bare word is taken as a string
    (``model.builtin=minilm``). Any problem is a :class:`ConfigError` naming the file and
    ``[section] key`` (``where`` names the source in messages, e.g. the file a dict was read from).
    """
    if isinstance(source, TrainConfig):
        raw, default_where = config_to_dict(source), "<TrainConfig>"
    elif isinstance(source, dict):
        raw, default_where = json.loads(json.dumps(source)), "<dict>"  # a deep copy
    else:
        raw, default_where = read_config_file(source), str(source)
    where = where or default_where
    for item in overrides:
        apply_override(raw, item, where)
    return config_from_dict(raw, where)


def is_folder_name(name) -> bool:
    """Whether ``name`` is one folder name, so ``parent / name`` stays inside ``parent``: a
    non-empty string without ``/`` or ``\\``, not ``.`` or ``..`` (an absolute path has a ``/``).
    Names from a config (a study's name, a sweep axis, ``[gradflow] out``) become folders under
    the folder the user chose with ``--out`` / ``--runs``; a path there would write elsewhere."""
    return isinstance(name, str) and name.strip() != "" and not any(c in name for c in "/\\") \
        and name not in (".", "..")


# fields that name files or folders: in a config file they are relative to the file's folder
PATH_FIELDS = (("data", "train_file"), ("data", "dev_file"), ("data", "test_file"), ("model", "path"),
               ("model", "tokenizer"))


def read_config_file(path: str | os.PathLike) -> dict:
    """``read_toml``, with the file and folder fields (``PATH_FIELDS``) made relative to the config
    file's folder, so a config means the same thing from any working directory (``--set`` values
    stay relative to where the command runs)."""
    raw = read_toml(path)
    base = Path(path).resolve().parent
    for section, key in PATH_FIELDS:
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str) and value and not Path(os.path.expanduser(value)).is_absolute():
            raw[section][key] = os.path.normpath(base / value)
    return raw


def read_toml(path: str | os.PathLike) -> dict:
    """The TOML file as a dict; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is "
                          f"not UTF-8); expected a TOML config") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def parse_override(item: str) -> tuple[str, object]:
    """``"key=value"`` -> ``(key, value)``, the value parsed as TOML (``1e-4``, ``true``,
    ``["argmax","knn"]``); a bare word is a string. The one ``--set`` parser of ``bertlab train``
    and ``bertlab experiment``. A ValueError names the item when there is no ``=`` or no key."""
    key, eq, text = item.partition("=")
    if not eq or not key.strip():
        raise ValueError(f"--set {item!r}: expected key=value (e.g. optim.lr=1e-4)")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word: a string
    return key.strip(), value


def apply_override(raw: dict, item: str, where: str) -> None:
    """Set ``raw[section][key]`` from one ``"section.key=value"`` string (value parsed as TOML).
    The error names the item, not the config file: a bad ``--set`` is the command line's fault."""
    try:
        key, value = parse_override(item)
    except ValueError:
        key, value = "", None
    section, dot, name = key.partition(".")
    if not dot or not section or not name or "." in name:
        raise ConfigError(f"--set {item!r}: expected section.key=value (e.g. optim.lr=1e-4)")
    raw.setdefault(section, {})
    if not isinstance(raw[section], dict):
        raise ConfigError(f"{where}: [{section}] is not a table")
    raw[section][name] = value
    raw.setdefault(SET_KEY, {})[key] = item  # so a bad value is blamed on --set, not on the file


SET_KEY = "--set"  # where apply_override notes which fields came from the command line


def config_from_dict(raw: dict, where: str = "<dict>") -> TrainConfig:
    """Build and validate a TrainConfig from ``{section: {key: value}}``."""
    raw = dict(raw)
    from_set = raw.pop(SET_KEY, {})
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    built = {}
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"{where}: unknown section [{section}]; expected one of "
                              f"{', '.join(f'[{s}]' for s in sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of key = value, got {values!r}")
        if section == "loss":
            values = loss_fields(values, where)
        built[section] = build_section(hints[section], section, values, where, from_set)
    cfg = TrainConfig(**built)
    check_config(cfg, where)
    return cfg


def loss_fields(table: dict, where: str) -> dict:
    """The ``[loss]`` table as ``LossConfig`` fields (``LossConfig.from_table``): ``class = "..."``
    and its keyword arguments, or a built-in loss's fields. ``loss_class`` and ``options`` are
    how the fields hold a ``class`` table, not keys of the table."""
    for key in ("loss_class", "options"):
        if key in table:
            raise ConfigError(f"{where}: [loss] {key}: unknown key; a loss of your own is "
                              f"class = \"package.module:ClassName\" and its keyword arguments")
    if "class" in table and not isinstance(table["class"], str):
        raise ConfigError(f"{where}: [loss] class: expected a string 'package.module:ClassName', "
                          f"got {table['class']!r}")
    return LossConfig.from_table(table)


def build_section(cls, section: str, values: dict, where: str, from_set: dict | None = None):
    """One section dataclass from its dict: unknown keys, wrong types, non-finite numbers and bad
    choices are errors, blamed on ``--set ...`` when the value came from the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        item = (from_set or {}).get(f"{section}.{key}")
        where_ = f"--set {item}" if item is not None else where
        if key not in names:
            raise ConfigError(f"{where_}: [{section}] {key}: unknown key; expected one of {', '.join(sorted(names))}")
        try:
            value = coerce(value, hints[key])
        except TypeError as e:
            raise ConfigError(f"{where_}: [{section}] {key}: expected {e}, got {value!r}") from None
        choices = CHOICES.get((section, key))
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{where_}: [{section}] {key}: expected one of {list(choices)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where_}: [{section}] {key}: expected a finite number, got {value!r}")
        minimum, maximum = MINIMUM.get((section, key)), MAXIMUM.get((section, key))
        if maximum is not None and not minimum <= value <= maximum:
            raise ConfigError(f"{where_}: [{section}] {key}: expected a value from {minimum} to {maximum}, "
                              f"got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{where_}: [{section}] {key}: expected a value >= {minimum}, got {value!r}")
        check = FIELD_CHECKS.get((section, key))
        expected = check(value) if check is not None else None
        if expected:
            raise ConfigError(f"{where_}: [{section}] {key}: expected {expected}, got {value!r}")
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
    check_loss_section(cfg, where)
    if cfg.sampler.name == "resample" and not cfg.sampler.method:
        raise ConfigError(f"{where}: [sampler] method: name = \"resample\" needs a method, one of "
                          f"{list(RESAMPLING_METHODS)}")
    if cfg.sampler.method and cfg.sampler.name != "resample":
        raise ConfigError(f"{where}: [sampler] method: only used with name = \"resample\" "
                          f"(name = {cfg.sampler.name!r})")
    if cfg.data.stride >= cfg.data.max_length - 2:
        raise ConfigError(f"{where}: [data] stride: expected < max_length - 2 = {cfg.data.max_length - 2}, "
                          f"got {cfg.data.stride}")
    if cfg.data.folds == 1:
        raise ConfigError(f"{where}: [data] folds: expected 0 (the corpus's own split) or K >= 2 folds, got 1")
    if cfg.data.folds and cfg.data.fold >= cfg.data.folds:
        raise ConfigError(f"{where}: [data] fold: expected 0 <= fold < folds = {cfg.data.folds}, got {cfg.data.fold}")
    if not cfg.data.folds and cfg.data.fold:
        raise ConfigError(f"{where}: [data] fold: only used with [data] folds = K (cross-validation)")
    if not cfg.data.train_file:
        from bertlab.datasets.bundled import CORPORA
        if cfg.data.name not in CORPORA:
            raise ConfigError(f"{where}: [data] name: expected a bundled corpus ({', '.join(CORPORA)}) or "
                              f"train_file = a CoNLL file or brat folder, got {cfg.data.name!r}")
    if (cfg.data.dev_file or cfg.data.test_file) and not cfg.data.train_file:
        raise ConfigError(f"{where}: [data] dev_file/test_file need train_file as well")
    for key in ("train_file", "dev_file", "test_file"):  # brat folders carry no tag scheme to convert or repair
        folder = getattr(cfg.data, key)
        if folder and Path(os.path.expanduser(folder)).is_dir() and (cfg.data.scheme != "IOB2" or cfg.data.repair):
            what = f"scheme = {cfg.data.scheme!r}" if cfg.data.scheme != "IOB2" else "repair = true"
            raise ConfigError(f"{where}: [data] {what}: applies to CoNLL files, and {key} = {folder} is a brat "
                              f"folder (its mentions become IOB2 tags directly)")
    if cfg.data.train_file and not cfg.data.dev_file and not cfg.data.folds and cfg.train.early_stopping_patience:
        raise ConfigError(f"{where}: [train] early_stopping_patience: needs a dev set ([data] dev_file)")
    for decode in ("calibrated", "logit_adjusted"):
        if (cfg.data.train_file and not cfg.data.dev_file and not cfg.data.folds
                and decode in map(base_decode, cfg.eval.decode)):
            raise ConfigError(f"{where}: [eval] decode: {decode!r} is fitted on dev and needs a dev set "
                              f"([data] dev_file)")
    if cfg.eval.select == "last" and cfg.train.early_stopping_patience:
        raise ConfigError(f"{where}: [train] early_stopping_patience: with [eval] select = \"last\" nothing "
                          f"is compared across epochs; set patience to 0 or select by a dev score")
    if len(set(cfg.eval.decode)) != len(cfg.eval.decode):
        raise ConfigError(f"{where}: [eval] decode: {cfg.eval.decode} names a decode twice")
    if cfg.train.tensorboard:
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(f"{where}: [train] tensorboard = true needs the tensorboard package: "
                              f"pip install 'bertlab[tensorboard]'")
    check_model_section(m, where)
    for section, key in PATH_FIELDS:  # a missing file is an error now, before any folder is made
        value = getattr(getattr(cfg, section), key)
        if value and not Path(os.path.expanduser(value)).exists():
            raise ConfigError(f"{where}: [{section}] {key}: {value} not found")
    if m.path and not (Path(os.path.expanduser(m.path)) / "config.json").exists():
        raise ConfigError(f"{where}: [model] path: {m.path} has no config.json (expected a Hugging Face "
                          f"checkpoint folder)")
    if cfg.train.device != "auto" and not (cfg.train.device == "cpu" or cfg.train.device.startswith("cuda")):
        raise ConfigError(f"{where}: [train] device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', "
                          f"got {cfg.train.device!r}")


def check_loss_section(cfg: TrainConfig, where: str) -> None:
    """The ``[loss]`` section against the rest: the loss is made once here (``build_loss``), so it
    checks its own options before any run folder exists; then what a CRF head or BTL allows."""
    try:  # e.g. gamma set for a loss other than focal or dice; a [loss] class that does not import
        loss = build_loss(cfg.loss, label_counts=torch.ones(3))
    except ValueError as e:
        raise ConfigError(f"{where}: [loss] {e}") from None
    if has_crf(cfg) and cfg.loss.loss_class:
        raise ConfigError(f"{where}: [loss] class: a CRF head trains on its own sequence NLL, not on a token "
                          f"loss; leave [loss] out or use name = \"ce\"")
    if cfg.sampler.name == "btl" and cfg.loss.reduction == "weighted_mean":
        raise ConfigError(f"{where}: [loss] reduction: 'weighted_mean' is for ATL only; BTL copies are "
                          f"normalised by the labelled-token count (\"mean\") or not at all (\"sum\")")
    if cfg.sampler.name == "btl" and loss.reduction == "weighted_mean" and cfg.loss.loss_class:
        raise ConfigError(f"{where}: [loss] class: {cfg.loss.loss_class} has reduction 'weighted_mean', which is "
                          f"for ATL only; BTL copies are normalised by the labelled-token count (\"mean\") "
                          f"or not at all (\"sum\")")
    if has_crf(cfg) and (cfg.loss.name != "ce" or cfg.loss.reduction == "weighted_mean"):
        raise ConfigError(f"{where}: [loss] name/reduction: a CRF head trains on its own sequence NLL; "
                          f"use name = \"ce\" with reduction \"mean\" or \"sum\"")
    for key, unset in (("label_smoothing", 0.0), ("drw_epoch", None)):
        if has_crf(cfg) and getattr(cfg.loss, key) != unset:
            raise ConfigError(f"{where}: [loss] {key}: a CRF head trains on its own sequence NLL, which has "
                              f"no per-token {key.replace('_', ' ')}; leave it out")
    if cfg.loss.drw_epoch is not None and cfg.loss.drw_epoch >= cfg.train.epochs:
        raise ConfigError(f"{where}: [loss] drw_epoch: the re-weighting would start at epoch {cfg.loss.drw_epoch} "
                          f"(0-based) of {cfg.train.epochs}, i.e. never; expected < [train] epochs")


BILSTM_OPTIONS = ("embedding_dim", "lstm_hidden_size", "num_layers", "dropout", "min_freq")


def check_model_section(m: ModelConfig, where: str) -> None:
    """The preset name and the ``overrides`` keys and types, checked with the rest of the config
    (not when the model is built, after the run folder exists)."""
    from bertlab.models.bert import BERT_PRESETS, BertConfig
    from bertlab.models.distilbert import DISTILBERT_PRESETS, DistilBertConfig
    if m.preset:
        presets = {**{k: BertConfig for k in BERT_PRESETS}, **{k: DistilBertConfig for k in DISTILBERT_PRESETS}}
        if m.preset not in presets:
            raise ConfigError(f"{where}: [model] preset: expected one of {sorted(presets)}, got {m.preset!r}")
        hints = typing.get_type_hints(presets[m.preset])
        for key, value in m.overrides.items():
            if key not in hints:
                raise ConfigError(f"{where}: [model] overrides: {key!r} is not a {presets[m.preset].__name__} "
                                  f"field; expected some of {sorted(hints)}")
            try:
                coerce(value, hints[key])
            except TypeError as e:
                raise ConfigError(f"{where}: [model] overrides: {key}: expected {e}, got {value!r}") from None
        shape = {**BERT_PRESETS, **DISTILBERT_PRESETS}[m.preset]
        try:  # the whole shape: a width the heads do not divide fails here, not as a torch traceback
            presets[m.preset](**{**shape, **m.overrides})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: [model] overrides: {e}") from None
    elif m.arch:
        unknown = sorted(set(m.overrides) - set(BILSTM_OPTIONS))
        if unknown:
            raise ConfigError(f"{where}: [model] overrides: {unknown} are not BiLSTM options; expected some of "
                              f"{list(BILSTM_OPTIONS)}")
    elif m.overrides:
        raise ConfigError(f"{where}: [model] overrides: only used with preset or arch (a pretrained model "
                          f"keeps its config); to keep only its first N layers set [model] num_layers = N")
    if m.num_layers and (m.preset or m.arch):
        raise ConfigError(f"{where}: [model] num_layers: drops layers of a pretrained checkpoint (path or "
                          f"builtin); for a preset set overrides.num_hidden_layers")


def has_crf(cfg: TrainConfig) -> bool:
    return cfg.model.head == "crf" or cfg.model.arch == "bilstm_crf"


def config_to_dict(cfg: TrainConfig) -> dict:
    """The config as plain ``{section: {key: value}}``: JSON/TOML-ready, and ``load_config`` reads it back.
    ``[loss]`` is its TOML table (``LossConfig.to_table``): a loss of your own as ``class`` and its
    keyword arguments."""
    out = dataclasses.asdict(cfg)
    out["loss"] = cfg.loss.to_table()
    return json.loads(json.dumps(out))


# config fields a resumed run may change: they do not change what is computed
RESUMABLE_CHANGES = {("train", "progress"), ("train", "log_every"), ("train", "checkpoint_every"),
                     ("train", "eval_batch_size"), ("train", "tensorboard"), ("train", "keep_checkpoint")}


def config_differences(old: dict, new: dict, also_allowed=()) -> list[str]:
    """``[section] key (old -> new)`` of every field that differs (except RESUMABLE_CHANGES and the
    ``(section, key)`` pairs in ``also_allowed``). A field the old config does not have (written
    before the field existed) counts as its default, so a checkpoint of an older bertlab resumes
    unless the new field is set to something else."""
    defaults = config_to_dict(TrainConfig())
    out = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            before = a[key] if key in a else defaults.get(section, {}).get(key)
            if (section, key) not in RESUMABLE_CHANGES | set(also_allowed) and before != b.get(key):
                out.append(f"[{section}] {key} ({before!r} -> {b.get(key)!r})")
    return out
