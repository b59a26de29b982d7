"""The ``[loss]`` section and the loss it builds: ``LossConfig`` -> ``build_loss`` -> a ``TokenLoss``.

Two kinds of ``[loss]`` table:

    [loss]                                   [loss]
    name = "focal"                           class = "experiments.poly_loss:PolyLoss"
    gamma = 1.0                              epsilon = 2.0

The left one names a built-in loss (``LOSS_NAMES``) and its fields (``LossConfig``). The right one
names a ``TokenLoss`` subclass of your own, importable as ``package.module:ClassName``; the
table's other keys are its keyword arguments (docs/losses.md, "Adding a loss"). ``bertlab
train``, every study and ``bertlab.train.train`` build the loss the same way, and ``metrics.json``
records the table (``config.loss``): the class and its fields.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from bertlab.losses.functional import (IGNORE_INDEX, REDUCTIONS, WEIGHT_SCHEMES, class_priors, class_weights,
                                       ldam_margins, seen_counts)
from bertlab.losses.token import DiceLoss, LDAMLoss, LogitOffsetLoss, TokenLoss

LOSS_NAMES = ("ce", "weighted_ce", "focal", "logit_adjusted", "balanced_softmax", "ldam", "dice")
# the losses that are cross entropy of (transformed) logits: label smoothing applies to them
CE_BASED = ("ce", "weighted_ce", "logit_adjusted", "balanced_softmax", "ldam")
DRW_BETA = 0.9999  # Cao et al.'s β for the deferred re-weighting (their code, all experiments)
CLASS_KEY = "class"  # [loss] class = "package.module:ClassName"


@dataclass
class LossConfig:
    """Which loss to train with (the ``[loss]`` table of an experiment's TOML).

    name: "ce" | "weighted_ce" (CE with w = class_weights(counts, weight_scheme, beta, normalize))
        | "focal" (FL with ``gamma`` and ``alpha``) | "logit_adjusted" (``tau``)
        | "balanced_softmax" | "ldam" (``max_margin``, ``scale``, ``drw_epoch``)
        | "dice" (``alpha``, ``gamma``: the self-adjusting dice's α and γ).
    gamma: focal (None means 2.0, Lin et al.'s default) or dice (None means 1.0).
    alpha: focal: None (α = 1), a float, or "weights" (α = the class weights, as weighted_ce);
        dice: its exponent α >= 0 (None means 1.0).
    weight_scheme, beta, normalize: passed to ``class_weights`` (used by weighted_ce and alpha="weights").
    tau: logit_adjusted only; None means 1.0 (Menon et al.'s default).
    max_margin, scale: ldam only; None means 0.5 and 30.0 (Cao et al.'s values; see ``ldam_loss``
        on the scale with a plain linear head).
    drw_epoch: ldam or ce only: deferred re-weighting (Cao et al.). Epochs 0..E-1 train unweighted,
        from epoch E (0-based, as the training log counts) on, every token is weighted by
        ``class_weights(counts, "effective", drw_beta, normalize="mean")``. None: no re-weighting.
    drw_beta: the effective-number β of those weights (default 0.9999, Cao et al.'s).
    label_smoothing: ε in [0, 1) for the cross-entropy-based losses (ce, weighted_ce,
        logit_adjusted, balanced_softmax, ldam); 0 = none.
    reduction: "mean" (default: mean over non-ignored tokens), "weighted_mean" (÷ Σ α_t, PyTorch's
        convention for weighted CE) or "sum"; see ``cross_entropy`` for why "mean" is the default.
    loss_class, options: a loss of your own, ``[loss] class = "package.module:ClassName"`` and the
        table's other keys (its keyword arguments); the other fields then keep their defaults.
        ``from_table`` / ``to_table`` convert between the TOML table and these two fields.
    """
    name: str = "ce"
    gamma: float | None = None
    alpha: float | str | None = None
    weight_scheme: str = "paper"
    beta: float = 0.999
    normalize: str | None = None
    reduction: str = "mean"
    ignore_index: int = IGNORE_INDEX
    tau: float | None = None
    max_margin: float | None = None
    scale: float | None = None
    drw_epoch: int | None = None
    drw_beta: float = DRW_BETA
    label_smoothing: float = 0.0
    loss_class: str = ""
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        """Checks that need no data (a bad name, reduction, gamma, or a field the loss ignores)."""
        if self.loss_class:
            check_class_path(self.loss_class)
            builtin = [f.name for f in dataclasses.fields(self) if f.name not in ("loss_class", "options")
                       and getattr(self, f.name) != f.default]
            if builtin:
                raise ValueError(f"LossConfig: with {CLASS_KEY} = {self.loss_class!r} the other keys of the "
                                 f"table are the class's keyword arguments (options); leave the built-in "
                                 f"fields {builtin} unset")
            return
        if self.options:
            raise ValueError(f"LossConfig.options={self.options!r} is only used with {CLASS_KEY} = "
                             f"'package.module:ClassName'")
        if self.name not in LOSS_NAMES:
            raise ValueError(f"LossConfig.name={self.name!r}, expected one of {LOSS_NAMES}")
        if self.reduction not in REDUCTIONS or self.reduction == "none":
            raise ValueError(f"LossConfig.reduction={self.reduction!r}, expected 'mean', 'weighted_mean' or 'sum'")
        if self.name not in ("focal", "dice") and self.gamma is not None:
            raise ValueError(f"LossConfig.gamma={self.gamma} is only used by name='focal' or 'dice' "
                             f"(name={self.name!r})")
        if self.gamma is not None and self.gamma < 0:
            raise ValueError(f"LossConfig.gamma={self.gamma} must be >= 0")
        if self.name not in ("focal", "dice") and self.alpha is not None:
            raise ValueError(f"LossConfig.alpha={self.alpha!r} is only used by name='focal' or 'dice'; "
                             f"for class weights with cross entropy use name='weighted_ce'")
        if self.name == "dice" and self.alpha is not None and (isinstance(self.alpha, str) or self.alpha < 0):
            raise ValueError(f"LossConfig.alpha={self.alpha!r}: the dice loss's alpha is an exponent, "
                             f"expected a number >= 0")
        if isinstance(self.alpha, str) and self.alpha != "weights":
            raise ValueError(f"LossConfig.alpha={self.alpha!r}, expected None, a number, or 'weights'")
        if self.weight_scheme not in WEIGHT_SCHEMES:
            raise ValueError(f"LossConfig.weight_scheme={self.weight_scheme!r}, expected one of {WEIGHT_SCHEMES}")
        if self.normalize not in (None, "mean", "sum"):
            raise ValueError(f"LossConfig.normalize={self.normalize!r}, expected None, 'mean' or 'sum'")
        for key, owners in (("tau", ("logit_adjusted",)), ("max_margin", ("ldam",)), ("scale", ("ldam",)),
                            ("drw_epoch", ("ldam", "ce"))):
            value = getattr(self, key)
            if value is not None and self.name not in owners:
                raise ValueError(f"LossConfig.{key}={value} is only used by name="
                                 f"{' or '.join(repr(o) for o in owners)} (name={self.name!r})")
        if self.tau is not None and self.tau < 0:
            raise ValueError(f"LossConfig.tau={self.tau} must be >= 0")
        if self.max_margin is not None and self.max_margin < 0:
            raise ValueError(f"LossConfig.max_margin={self.max_margin} must be >= 0")
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"LossConfig.scale={self.scale} must be > 0")
        if self.drw_epoch is not None and self.drw_epoch < 0:
            raise ValueError(f"LossConfig.drw_epoch={self.drw_epoch} must be >= 0 (the first re-weighted epoch)")
        if self.drw_beta != DRW_BETA and self.drw_epoch is None:
            raise ValueError(f"LossConfig.drw_beta={self.drw_beta} is only used with drw_epoch set")
        if not 0.0 < self.drw_beta < 1.0:
            raise ValueError(f"LossConfig.drw_beta={self.drw_beta} must be in (0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"LossConfig.label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.label_smoothing and self.name not in CE_BASED:
            raise ValueError(f"LossConfig.label_smoothing={self.label_smoothing} is only used by the cross-entropy "
                             f"losses {CE_BASED} (name={self.name!r})")

    @classmethod
    def from_dict(cls, d: dict, source: str = "[loss]") -> "LossConfig":
        """Build from a TOML table; an unknown key is an error that names it."""
        d = cls.from_table(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**d)

    @staticmethod
    def from_table(table: dict) -> dict:
        """The TOML table as ``LossConfig`` fields: with ``class``, ``{"loss_class": ..., "options":
        the other keys}``; without, the table itself."""
        if CLASS_KEY not in table:
            return dict(table)
        options = {k: v for k, v in table.items() if k != CLASS_KEY}
        return {"loss_class": table[CLASS_KEY], "options": options}

    def to_table(self) -> dict:
        """The ``[loss]`` table this config reads from (JSON-ready): ``{"class": ..., **options}``
        for a loss of your own, else the built-in fields (what ``metrics.json`` records)."""
        if self.loss_class:
            return {CLASS_KEY: self.loss_class, **self.options}
        table = dataclasses.asdict(self)
        del table["loss_class"], table["options"]
        return table


def build_loss(cfg: LossConfig, label_counts: torch.Tensor | Sequence[int] | None = None,
               epoch: int = 0) -> TokenLoss:
    """Turn a ``LossConfig`` into a callable ``loss(logits, targets) -> scalar``.

    label_counts: per-label-id token counts of the training set (``label_counts(...)``), needed by
    "weighted_ce", "focal" with alpha="weights", and the count-based losses (logit_adjusted,
    balanced_softmax, ldam) and deferred re-weighting. epoch: the (0-based) epoch the loss is for;
    only ``drw_epoch`` makes the loss depend on it. Inconsistent configs raise a ValueError that
    names the offending field.
    """
    cfg.__post_init__()  # the config may have been edited after construction
    if cfg.loss_class:
        return custom_loss(cfg.loss_class, cfg.options)

    def counts(field: str) -> torch.Tensor:
        if label_counts is None:
            raise ValueError(f"LossConfig.{field} needs the class counts, so build_loss needs "
                             f"label_counts (the training set's token count per label id)")
        return torch.as_tensor(label_counts)

    def weights(field: str) -> torch.Tensor:
        return class_weights(counts(field), cfg.weight_scheme, cfg.beta, cfg.normalize)

    common = dict(reduction=cfg.reduction, ignore_index=cfg.ignore_index, label_smoothing=cfg.label_smoothing)
    drw = None
    if cfg.drw_epoch is not None:
        n = counts("drw_epoch")
        drw = class_weights(n, "effective", cfg.drw_beta, "mean") if epoch >= cfg.drw_epoch else None
    if cfg.name == "ce":
        return TokenLoss("ce", 0.0, drw, **common)
    if cfg.name == "weighted_ce":
        return TokenLoss("weighted_ce", 0.0, weights("name='weighted_ce'"), **common)
    if cfg.name == "logit_adjusted":
        tau = 1.0 if cfg.tau is None else float(cfg.tau)
        offset = tau * class_priors(counts("name='logit_adjusted'")).log()
        return LogitOffsetLoss("logit_adjusted", offset=offset, **common)
    if cfg.name == "balanced_softmax":
        offset = seen_counts(counts("name='balanced_softmax'")).log()
        return LogitOffsetLoss("balanced_softmax", offset=offset, **common)
    if cfg.name == "ldam":
        max_margin = 0.5 if cfg.max_margin is None else float(cfg.max_margin)
        margins = ldam_margins(counts("name='ldam'"), max_margin)
        return LDAMLoss("ldam", alpha=drw, margins=margins,
                        scale=30.0 if cfg.scale is None else float(cfg.scale), **common)
    if cfg.name == "dice":
        return DiceLoss("dice", reduction=cfg.reduction, ignore_index=cfg.ignore_index,
                        dice_alpha=1.0 if cfg.alpha is None else float(cfg.alpha),
                        dice_gamma=1.0 if cfg.gamma is None else float(cfg.gamma))
    gamma = 2.0 if cfg.gamma is None else float(cfg.gamma)
    alpha = weights("alpha='weights'") if cfg.alpha == "weights" else cfg.alpha
    return TokenLoss("focal", gamma, alpha, cfg.reduction, cfg.ignore_index)


def check_class_path(path: str) -> None:
    """A ValueError unless ``path`` reads ``package.module:ClassName``."""
    module, colon, name = path.partition(":")
    if not (isinstance(path, str) and colon and module and name and ":" not in name):
        raise ValueError(f"{CLASS_KEY} = {path!r}: expected 'package.module:ClassName', e.g. "
                         f"'experiments.poly_loss:PolyLoss'")


def custom_loss(path: str, options: dict) -> TokenLoss:
    """``ClassName(**options)`` from ``path = "package.module:ClassName"``: a ``TokenLoss`` subclass
    of your own. A module that does not import, a missing class, one that is not a TokenLoss, or
    options it does not take are a ValueError naming ``class`` (one line)."""
    check_class_path(path)
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{CLASS_KEY} = {path!r}: cannot import {module_name} ({e}); the module must be "
                         f"importable from where the command runs (or on PYTHONPATH)") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"{CLASS_KEY} = {path!r}: {module_name} has no {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, TokenLoss)):
        raise ValueError(f"{CLASS_KEY} = {path!r}: {class_name} is not a TokenLoss subclass "
                         f"(bertlab.losses.TokenLoss; docs/losses.md, \"Adding a loss\")")
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{CLASS_KEY} = {path!r}: {class_name}({', '.join(f'{k}={v!r}' for k, v in options.items())}) "
                         f"failed: {e}") from None


def loss_table(loss: TokenLoss) -> dict:
    """What ``metrics.json`` records for a loss object passed to ``train(loss=...)``: its class as
    ``module:QualName`` and its dataclass fields (tensors as lists), the ``[loss]`` table of a loss
    of your own."""
    table = {CLASS_KEY: f"{type(loss).__module__}:{type(loss).__qualname__}"}
    for f in dataclasses.fields(loss):
        value = getattr(loss, f.name)
        table[f.name] = value.tolist() if isinstance(value, torch.Tensor) else value
    return table
