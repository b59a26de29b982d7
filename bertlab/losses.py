"""Token-classification losses, written out so that each one is its equation.

Notation (used in every docstring here and in docs/losses.md):

    z_i ∈ R^C        the logits of token i          p_i = softmax(z_i)
    t_i              its target class id             p_t = p_{i, t_i}
    α_c (or w_c)     a per-class multiplier          α_t = α_{t_i}
    I                the non-ignored tokens (t_i != ignore_index, -100 by default)

    cross entropy     CE_i = -w_t log p_t
    focal loss        FL_i = -α_t (1 - p_t)^γ log p_t          (γ = 0, α = w gives CE)

Every loss takes logits ``[N, C]`` and targets ``[N]`` (or ``[B, T, C]`` and ``[B, T]``, which are
flattened to ``[B*T, C]`` / ``[B*T]`` first) and is computed from ``log_softmax`` in float32 even
under autocast: half-precision logits are cast up, float64 logits stay float64.

Reductions (the normaliser is part of the loss, so it is always named):

    "mean"           Σ_{i∈I} l_i / |I|               mean over non-ignored tokens (the default)
    "weighted_mean"  Σ_{i∈I} l_i / Σ_{i∈I} α_t       what F.cross_entropy(weight=w) does
    "sum"            Σ_{i∈I} l_i
    "none"           the per-token l_i, shaped like the targets, 0 at ignored tokens

A batch where every token is ignored gives a zero loss that is still attached to the graph
(``requires_grad``, ``backward()`` works and leaves zero gradients), so a training loop never needs
a special case for it.

The training loop builds its loss with ``build_loss(LossConfig(...), label_counts=...)``;
``label_counts(...)`` and ``class_weights(...)`` produce the per-class numbers it needs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "weighted_mean", "sum", "none")
WEIGHT_SCHEMES = ("paper", "inverse", "effective")
LOSS_NAMES = ("ce", "weighted_ce", "focal")


# ---------------------------------------------------------------------------------------------
# class counts and class weights
# ---------------------------------------------------------------------------------------------

def label_counts(label_ids: Iterable, num_labels: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Token count per label id over a training set: ``N_c`` for c = 0..num_labels-1.

    ``label_ids`` is an iterable of sequences of label ids (lists, numpy arrays or tensors, e.g. each
    ``Window.labels``); positions equal to ``ignore_index`` (special tokens, non-first subwords,
    padding) are not counted. Returns an int64 tensor ``[num_labels]``.
    """
    counts = np.zeros(num_labels, dtype=np.int64)
    for row_number, row in enumerate(label_ids):
        ids = torch.as_tensor(row).reshape(-1).cpu().numpy().astype(np.int64)
        ids = ids[ids != ignore_index]
        if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
            bad = ids[(ids < 0) | (ids >= num_labels)][0]
            raise ValueError(f"label_counts: row {row_number} has label id {bad}, "
                             f"expected 0..{num_labels - 1} or {ignore_index} (ignored)")
        counts += np.bincount(ids, minlength=num_labels)
    return torch.from_numpy(counts)


def class_weights(counts, scheme: str = "paper", beta: float = 0.999,
                  normalize: str | None = None) -> torch.Tensor:
    """Per-class weights ``w [C]`` (float32) from training token counts ``N_c``.

    With N = Σ_c N_c and C the number of classes:

        "paper"      w_c = 1 - N_c / N                         (the BTL paper)
        "inverse"    w_c = N / (C · N_c)                        (balanced: Σ_c N_c w_c = N)
        "effective"  w_c = (1 - β) / (1 - β^{N_c})              (Cui et al. 2019, "effective number")

    normalize: None keeps the raw values; "mean" rescales so that mean_c w_c = 1 (Cui et al.'s
    convention, Σ_c w_c = C); "sum" rescales so that Σ_c w_c = 1. Both are taken over the classes
    that occur (N_c > 0).

    A class with N_c = 0 gets w_c = 0 in every scheme: it has no training token, so its weight never
    multiplies a training loss, and "inverse"/"effective" would otherwise be infinite. Such a class
    is also left out of the normalisation, so it cannot shift the other weights.
    """
    n = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"class_weights: scheme={scheme!r}, expected one of {WEIGHT_SCHEMES}")
    if normalize not in (None, "mean", "sum"):
        raise ValueError(f"class_weights: normalize={normalize!r}, expected None, 'mean' or 'sum'")
    if (n < 0).any():
        raise ValueError(f"class_weights: counts must be >= 0, got {n.tolist()}")
    if n.sum() == 0:
        raise ValueError("class_weights: all counts are 0 (no training tokens?)")
    seen = n > 0
    total, num_classes = n.sum(), n.numel()
    safe_n = torch.where(seen, n, torch.ones_like(n))  # keeps the unused branch finite
    if scheme == "paper":
        w = 1.0 - n / total
    elif scheme == "inverse":
        w = total / (num_classes * safe_n)
    else:
        if not 0.0 < beta < 1.0:
            raise ValueError(f"class_weights: beta={beta} must be in (0, 1) for scheme='effective'")
        # 1 - β^N computed as -expm1(N log β): exact even for β = 0.9999 and N = 1
        w = (1.0 - beta) / -torch.expm1(safe_n * np.log(beta))
    w = torch.where(seen, w, torch.zeros_like(w))
    if normalize == "mean":
        w = w / w[seen].mean()
    elif normalize == "sum":
        w = w / w[seen].sum()
    return w.to(torch.float32)


# ---------------------------------------------------------------------------------------------
# the per-token kernel shared by every loss (and by the fused BTL loss in bertlab.sampling)
# ---------------------------------------------------------------------------------------------

def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}, expected one of {REDUCTIONS}")


def _as_class_vector(alpha, num_classes: int, device, dtype, name: str) -> torch.Tensor | None:
    """None -> None; float -> [C] filled; sequence/tensor -> [..., C] tensor on the logits' device."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        return torch.full((num_classes,), float(alpha), device=device, dtype=dtype)
    a = torch.as_tensor(alpha, dtype=dtype, device=device)
    if a.shape[-1] != num_classes:
        raise ValueError(f"{name} has {a.shape[-1]} entries per row, but the logits have {num_classes} classes")
    return a


def _focal_log_probs(log_p: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_t, log(1 - p_t)), both accurate when p_t rounds to 1 (focal loss needs both).

    log(1 - p_t) = log Σ_{j≠t} p_j. If t is not the arg-max class then p_t <= 1/2, so log p_t from
    log_softmax and log1p(-p_t) are accurate. If t is the arg-max class, p_t can round to 1 (logits
    of ±1e4, or just 20 in float32): log1p(-p_t) is then -inf with gradient inf·0 = NaN, and
    log p_t rounds to 0, which drops the γ (1-p_t)^{γ-1} p_t log p_t term of the gradient. So there
    we start from r = log Σ_{j≠t} p_j (a log-sum-exp of the other columns, exact, bounded gradient):
    log(1 - p_t) = r and log p_t = log1p(-e^r). The arg-max is the same for every target of a row,
    so one masked logsumexp per row serves all the BTL copies that share the row.
    """
    top = log_p.argmax(dim=-1, keepdim=True)                                   # [..., N, 1]
    rest = log_p.scatter(-1, top, float("-inf")).logsumexp(dim=-1)             # log Σ_{j≠argmax} p_j
    batch_shape = targets.shape
    is_top = targets == top.squeeze(-1).expand(batch_shape)
    gathered = log_p.expand(*batch_shape, log_p.shape[-1]).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rest = rest.expand(batch_shape)
    # each unused branch must stay finite, or where()'s zero gradient times inf becomes NaN
    minus_one = torch.full_like(gathered, -1.0)
    log_p_t = torch.where(is_top, torch.log1p(-torch.where(is_top, rest, minus_one).exp()), gathered)
    log_q_t = torch.where(is_top, rest, torch.log1p(-torch.where(is_top, minus_one, gathered).exp()))
    return log_p_t, log_q_t


def token_losses(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 0.0, alpha=None,
                 ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token focal loss ``l_i = -α_t (1 - p_t)^γ log p_t`` (CE when γ = 0), unreduced.

    logits ``[..., N, C]``; targets ``[..., N]``; the leading dims broadcast, so one ``[N, C]`` logit
    matrix can be scored against several target rows ``[K, N]`` (the copies of a BTL batch) with a
    single log_softmax. alpha: None (all 1), a float, per-class ``[C]``, or ``[..., C]`` per row of
    targets (e.g. weights restricted to each copy's columns).

    Returns ``(losses, alpha_t)``, both shaped like the broadcast targets, float32 (float64 if the
    logits are float64), zero at ignored tokens. ``alpha_t`` is the α of each token's target, used by
    the "weighted_mean" reduction.
    """
    if gamma < 0:
        raise ValueError(f"focal loss needs gamma >= 0, got gamma={gamma}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    # autocast would run some of these ops in bf16/fp16; the loss must see full-precision log-probs
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.to(dtype)
        batch_shape = torch.broadcast_shapes(z.shape[:-1], targets.shape)
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets)).expand(batch_shape)
        log_p = torch.log_softmax(z, dim=-1)
        if gamma == 0:
            losses = -log_p.expand(*batch_shape, z.shape[-1]).gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
        else:
            log_p_t, log_q_t = _focal_log_probs(log_p, safe_targets)
            losses = -torch.exp(gamma * log_q_t) * log_p_t              # -(1 - p_t)^γ log p_t
        a = _as_class_vector(alpha, z.shape[-1], z.device, dtype, "alpha/weight")
        if a is None:
            alpha_t = torch.ones(batch_shape, device=z.device, dtype=dtype)
        elif a.dim() == 1:
            alpha_t = a[safe_targets]
        else:
            alpha_t = a.expand(*batch_shape[:-1], a.shape[-1]).gather(-1, safe_targets)
        valid = valid.expand(batch_shape)
        zero = torch.zeros((), device=z.device, dtype=dtype)
        return torch.where(valid, alpha_t * losses, zero), torch.where(valid, alpha_t, zero)


def reduce_token_losses(losses: torch.Tensor, alpha_t: torch.Tensor, valid: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """Reduce per-token losses over the last dim (tokens), as named in the module docstring.

    losses, alpha_t, valid: ``[..., N]`` (``valid`` is the non-ignored mask). Returns ``[...]``.
    Empty denominators (no valid token, or Σα_t = 0) count as 1, so the result is a graph-attached 0.
    """
    _check_reduction(reduction)
    if reduction == "none":
        return losses
    total = losses.sum(dim=-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        denominator = valid.sum(dim=-1).to(losses.dtype)
    else:
        denominator = alpha_t.sum(dim=-1)
    return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def _flatten(logits: torch.Tensor, targets: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, C] + [B, T] -> [B*T, C] + [B*T]; checks that targets are ids in range or ignored."""
    if logits.dim() < 2:
        raise ValueError(f"{name}: logits must be [N, C] or [B, T, C], got shape {tuple(logits.shape)}")
    num_classes = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"{name}: targets shape {tuple(targets.shape)} does not match logits "
                         f"{tuple(logits.shape)} (expected {tuple(logits.shape[:-1])})")
    return logits.reshape(-1, num_classes), targets.reshape(-1)


def _check_targets(targets: torch.Tensor, num_classes: int, ignore_index: int, name: str) -> None:
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= num_classes))
    if bad.any():
        raise ValueError(f"{name}: target id {targets[bad][0].item()} is out of range: expected "
                         f"0..{num_classes - 1} or ignore_index={ignore_index}")


# ---------------------------------------------------------------------------------------------
# the losses
# ---------------------------------------------------------------------------------------------

def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight=None,
                  ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy, optionally class-weighted: ``CE_i = -w_t log p_t``, ``p = softmax(z)``.

    logits ``[N, C]`` (or ``[B, T, C]``, flattened); targets ``[N]`` (or ``[B, T]``) class ids, with
    ``ignore_index`` tokens left out. weight: None or per-class ``[C]`` (see ``class_weights``).
    Returns a scalar in nats (or ``[N]`` / ``[B, T]`` with reduction="none").

    Gradient of one token's loss: ``∂CE_i/∂z_j = w_t (p_j - δ_{jt})``.

    The default reduction is "mean", the mean over non-ignored tokens, Σ_{i∈I} w_t l_i / |I|, also
    for weighted CE. Why not PyTorch's Σ w_t l_i / Σ w_t ("weighted_mean", which
    ``F.cross_entropy(weight=w)`` uses)? With "mean" every token of class c is scaled by exactly w_c,
    whatever else is in the batch, so w is a per-class learning-rate multiplier as the equation says.
    With "weighted_mean" the batch's own Σ w_t divides it out: a batch of only `O` tokens gets the
    gradient of unweighted CE, and the effective weight of a class changes with the batch mix (this
    matters for BTL copies, whose mixes differ). "mean" also keeps CE, weighted CE and focal on one
    normaliser, so a comparison changes only the per-token term. The price: the loss scale moves
    with the weights' scale (e.g. "paper" weights with 90% `O` shrink the loss about 5x); pick
    ``normalize`` or the learning rate accordingly, or ask for "weighted_mean" to match PyTorch.
    """
    return _reduce(logits, targets, 0.0, weight, ignore_index, reduction, "cross_entropy")


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha=None,
               ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """Focal loss (Lin et al. 2017): ``FL_i = -α_t (1 - p_t)^γ log p_t``, ``p = softmax(z)``.

    logits ``[N, C]`` (or ``[B, T, C]``, flattened); targets ``[N]`` (or ``[B, T]``). gamma >= 0
    (γ = 0 is cross entropy; larger γ down-weights tokens already classified well). alpha: None
    (α_t = 1), a float (every token scaled by it, i.e. only the loss scale changes), or per-class
    ``[C]`` (e.g. ``class_weights(counts)``). Reduction as in the module docstring; default "mean",
    Σ_{i∈I} FL_i / |I| (same choice and reasons as ``cross_entropy``).

    Gradient of one token's loss w.r.t. its logits (derived in docs/losses.md):

        ∂FL_i/∂z_j = α_t [ γ (1 - p_t)^{γ-1} p_t log p_t - (1 - p_t)^γ ] (δ_{jt} - p_j)

    It tends to 0 as p_t -> 1 for every γ >= 0 (the (1 - p_t)^{γ-1} p_t log p_t term behaves like
    -(1 - p_t)^γ), but a direct autograd of (1 - p_t)^γ gives inf·0 = NaN at p_t = 1 for γ < 1.
    Here, for the arg-max class, log(1 - p_t) is the log-sum-exp of the other classes and
    log p_t = log1p(-(1 - p_t)), so loss and gradient stay finite and accurate for any logits
    (±1e4 included).
    """
    return _reduce(logits, targets, gamma, alpha, ignore_index, reduction, "focal_loss")


def _reduce(logits, targets, gamma, alpha, ignore_index, reduction, name) -> torch.Tensor:
    _check_reduction(reduction)
    target_shape = targets.shape
    logits, targets = _flatten(logits, targets, name)
    _check_targets(targets, logits.shape[-1], ignore_index, name)
    losses, alpha_t = token_losses(logits, targets, gamma, alpha, ignore_index)
    if reduction == "none":
        return losses.reshape(target_shape)
    return reduce_token_losses(losses, alpha_t, targets != ignore_index, reduction)


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class LossConfig:
    """Which loss to train with (the ``[loss]`` table of an experiment's TOML).

    name: "ce" | "weighted_ce" (CE with w = class_weights(counts, weight_scheme, beta, normalize))
        | "focal" (FL with ``gamma`` and ``alpha``).
    gamma: focal only; None means 2.0 (Lin et al.'s default).
    alpha: focal only: None (α = 1), a float, or "weights" (α = the class weights, as weighted_ce).
    weight_scheme, beta, normalize: passed to ``class_weights`` (used by weighted_ce and alpha="weights").
    reduction: "mean" (default: mean over non-ignored tokens), "weighted_mean" (÷ Σ α_t, PyTorch's
        convention for weighted CE) or "sum"; see ``cross_entropy`` for why "mean" is the default.
    """
    name: str = "ce"
    gamma: float | None = None
    alpha: float | str | None = None
    weight_scheme: str = "paper"
    beta: float = 0.999
    normalize: str | None = None
    reduction: str = "mean"
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        """Checks that need no data (a bad name, reduction, gamma, or a field the loss ignores)."""
        if self.name not in LOSS_NAMES:
            raise ValueError(f"LossConfig.name={self.name!r}, expected one of {LOSS_NAMES}")
        if self.reduction not in REDUCTIONS or self.reduction == "none":
            raise ValueError(f"LossConfig.reduction={self.reduction!r}, expected 'mean', 'weighted_mean' or 'sum'")
        if self.name != "focal" and self.gamma is not None:
            raise ValueError(f"LossConfig.gamma={self.gamma} is only used by name='focal' (name={self.name!r})")
        if self.gamma is not None and self.gamma < 0:
            raise ValueError(f"LossConfig.gamma={self.gamma} must be >= 0")
        if self.name != "focal" and self.alpha is not None:
            raise ValueError(f"LossConfig.alpha={self.alpha!r} is only used by name='focal'; "
                             f"for class weights with cross entropy use name='weighted_ce'")
        if isinstance(self.alpha, str) and self.alpha != "weights":
            raise ValueError(f"LossConfig.alpha={self.alpha!r}, expected None, a number, or 'weights'")
        if self.weight_scheme not in WEIGHT_SCHEMES:
            raise ValueError(f"LossConfig.weight_scheme={self.weight_scheme!r}, expected one of {WEIGHT_SCHEMES}")
        if self.normalize not in (None, "mean", "sum"):
            raise ValueError(f"LossConfig.normalize={self.normalize!r}, expected None, 'mean' or 'sum'")

    @classmethod
    def from_dict(cls, d: dict, source: str = "[loss]") -> "LossConfig":
        """Build from a TOML table; an unknown key is an error that names it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class TokenLoss:
    """A configured loss: **the one object every training path scores tokens with**.

    ``per_token(logits, targets, columns)`` is the equation, ``FL_i = -α_t (1 - p_t)^γ log p_t``
    (CE when γ = 0), per token and unreduced; ``reduce`` applies ``reduction``; calling the object
    does both. ATL, naive BTL and fused BTL (``bertlab.train``, ``bertlab.sampling``) all call
    ``per_token`` and nothing else, so a subclass that overrides it (docs/losses.md, "Adding a
    loss") changes what every sampler trains with.

    The contract of ``per_token``, which a new loss keeps:

    - logits ``[..., N, C']`` and targets ``[..., N]`` broadcast against each other (fused BTL scores
      one ``[N, C]`` logit matrix against ``[K, N]`` target rows with one call);
    - ``columns``: None when ``logits[..., j]`` is label j's score; otherwise label ids ``[..., C']``
      naming each logit column (a "binary" BTL copy keeps only {O, B-c, I-c}: ``C' = 3``), so
      per-class quantities (α) are looked up by label id, not by position;
    - returns ``(losses, weights)``, both shaped like the broadcast targets and **0 at ignored
      tokens**: the per-token losses and each token's weight in a "weighted_mean" (α_t here).
    """
    name: str = "ce"
    gamma: float = 0.0                        # 0 for CE / weighted CE
    alpha: torch.Tensor | float | None = None  # per-class [C] (weights), a scalar, or None
    reduction: str = "mean"
    ignore_index: int = IGNORE_INDEX

    def per_token(self, logits: torch.Tensor, targets: torch.Tensor,
                  columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(l_i, α_t)`` per token, unreduced; see the class docstring for shapes."""
        alpha = self.alpha
        if columns is not None and isinstance(alpha, torch.Tensor):
            alpha = alpha.to(logits.device)[columns]
        return token_losses(logits, targets, self.gamma, alpha, self.ignore_index)

    def reduce(self, losses: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``reduction`` over the last (token) dim; ``targets`` mark the ignored tokens."""
        return reduce_token_losses(losses, weights, targets != self.ignore_index, self.reduction)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The reduced loss of logits ``[N, C]`` or ``[B, T, C]`` against targets ``[N]`` / ``[B, T]``."""
        _check_reduction(self.reduction)
        target_shape = targets.shape
        logits, targets = _flatten(logits, targets, self.name)
        _check_targets(targets, logits.shape[-1], self.ignore_index, self.name)
        losses, weights = self.per_token(logits, targets)
        if self.reduction == "none":
            return losses.reshape(target_shape)
        return self.reduce(losses, weights, targets)


def build_loss(cfg: LossConfig, label_counts: torch.Tensor | Sequence[int] | None = None) -> TokenLoss:
    """Turn a ``LossConfig`` into a callable ``loss(logits, targets) -> scalar``.

    label_counts: per-label-id token counts of the training set (``label_counts(...)``), needed by
    "weighted_ce" and by "focal" with alpha="weights". Inconsistent configs raise a ValueError that
    names the offending field.
    """
    cfg.__post_init__()  # the config may have been edited after construction

    def weights(field: str) -> torch.Tensor:
        if label_counts is None:
            raise ValueError(f"LossConfig.{field} needs class weights, so build_loss needs "
                             f"label_counts (the training set's token count per label id)")
        return class_weights(label_counts, cfg.weight_scheme, cfg.beta, cfg.normalize)

    if cfg.name == "ce":
        return TokenLoss("ce", 0.0, None, cfg.reduction, cfg.ignore_index)
    if cfg.name == "weighted_ce":
        return TokenLoss("weighted_ce", 0.0, weights("name='weighted_ce'"), cfg.reduction, cfg.ignore_index)
    gamma = 2.0 if cfg.gamma is None else float(cfg.gamma)
    alpha = weights("alpha='weights'") if cfg.alpha == "weights" else cfg.alpha
    return TokenLoss("focal", gamma, alpha, cfg.reduction, cfg.ignore_index)
