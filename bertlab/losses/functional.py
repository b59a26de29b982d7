"""Token-classification losses, written out so that each one is its equation.

Notation (used in every docstring here and in docs/losses.md):

    z_i ∈ R^C        the logits of token i          p_i = softmax(z_i)
    t_i              its target class id             p_t = p_{i, t_i}
    α_c (or w_c)     a per-class multiplier          α_t = α_{t_i}
    I                the non-ignored tokens (t_i != ignore_index, -100 by default)

    cross entropy     CE_i = -w_t log p_t
    focal loss        FL_i = -α_t (1 - p_t)^γ log p_t          (γ = 0, α = w gives CE)

and, for class imbalance (N_c = training tokens of class c, π_c = N_c / Σ_k N_k):

    logit adjusted    LA_i  = CE of z + τ log π                  (Menon et al. 2021)
    balanced softmax  BS_i  = CE of z + log N                    (Ren et al. 2020; LA with τ = 1)
    LDAM              LDAM_i = CE of s (z - Δ_t e_t), Δ_c ∝ N_c^{-1/4}     (Cao et al. 2019)
    self-adj. dice    DSC_i = 1 - (2 q + γ) / (q + 1 + γ), q = (1 - p_t)^α p_t   (Li et al. 2020)
    label smoothing   LS_i  = (1 - ε) CE_i + ε/C Σ_j -w_j log p_j     (any CE-based loss above)

A class with no training token (N_c = 0, e.g. the I- tag of a type whose mentions are all one
word) would get log 0 = -∞ in LA/BS and an infinite margin in LDAM. Every count-based quantity
here treats it as exactly as rare as the rarest class that occurs (``seen_counts``); see there why.

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

These are the functions; ``bertlab.losses.token`` wraps them as the loss objects training uses
(``TokenLoss`` and its subclasses), built from the ``[loss]`` section by
``bertlab.losses.config.build_loss``. ``label_counts(...)`` and ``class_weights(...)`` produce the
per-class numbers they need.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "weighted_mean", "sum", "none")
WEIGHT_SCHEMES = ("paper", "inverse", "effective")


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


def seen_counts(counts) -> torch.Tensor:
    """Training counts ``N_c`` (float64 ``[C]``) with each 0 replaced by the smallest non-zero count.

    The count-based methods (logit adjustment, balanced softmax, LDAM) need ``log N_c`` or
    ``N_c^{-1/4}``, which are -∞ and +∞ for a class with no training token. Such classes are
    common in NER: the ``I-`` tag of a type whose training mentions are all one word. Taking the
    formula's limit (an offset of -∞) would drop the class from the softmax: its logit would get
    no gradient at all, and the raw-logit argmax (how a logit-adjusted model predicts) could pick
    a label that was never trained. A pseudo-count (1, or 1/2) would add a free constant whose
    effect grows with the corpus. Here the class is taken to be exactly as rare as the rarest class
    that occurs: the largest offset / margin the data support, no new constant, and every logit
    keeps a gradient. (LDAM's own normalisation already caps margins at ``max_margin``; this is the
    same cap.) Class weights (``class_weights``) keep their own rule: ``w_c = 0``.

    Also accepts priors (any non-negative vector); raises if every entry is 0 or one is negative.
    """
    n = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if (n < 0).any() or not torch.isfinite(n).all():
        raise ValueError(f"class counts must be finite and >= 0, got {n.tolist()}")
    if not (n > 0).any():
        raise ValueError("class counts are all 0 (no training tokens?)")
    return torch.where(n > 0, n, n[n > 0].min())


def class_priors(counts) -> torch.Tensor:
    """Training class priors ``π_c = N_c / Σ_k N_k`` (float64 ``[C]``), from counts or priors;
    a class with no training token counts as the rarest class that occurs (``seen_counts``)."""
    n = seen_counts(counts)
    return n / n.sum()


def ldam_margins(counts, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM's per-class margins (Cao et al. 2019), float64 ``[C]``:

        Δ_c = max_margin · N_c^{-1/4} / max_k N_k^{-1/4}         (the rarest class gets max_margin)

    as in the authors' code (``m_list = 1/sqrt(sqrt(N)); m_list *= max_m / max(m_list)``). A class
    with no training token gets ``max_margin`` (``seen_counts``).
    """
    if max_margin < 0:
        raise ValueError(f"LDAM needs max_margin >= 0, got {max_margin}")
    m = seen_counts(counts) ** -0.25
    return max_margin * m / m.max()


# ---------------------------------------------------------------------------------------------
# the per-token kernel shared by every loss (and by the fused BTL loss in bertlab.losses.btl)
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
                 ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token focal loss ``l_i = -α_t (1 - p_t)^γ log p_t`` (CE when γ = 0), unreduced.

    logits ``[..., N, C]``; targets ``[..., N]``; the leading dims broadcast, so one ``[N, C]`` logit
    matrix can be scored against several target rows ``[K, N]`` (the copies of a BTL batch) with a
    single log_softmax. alpha: None (all 1), a float, per-class ``[C]``, or ``[..., C]`` per row of
    targets (e.g. weights restricted to each copy's columns).

    label_smoothing ε (γ = 0 only) gives PyTorch's label-smoothed cross entropy,
    ``l_i = (1 - ε) α_t (-log p_t) + (ε / C) Σ_j α_j (-log p_j)``, the sum over the columns that
    take part in the softmax: a column whose logit is -∞ (the padding of a 2-column BTL copy) has
    p_j = 0 and is left out of the sum and of C, where ``F.cross_entropy`` would return inf.

    Returns ``(losses, alpha_t)``, both shaped like the broadcast targets, float32 (float64 if the
    logits are float64), zero at ignored tokens. ``alpha_t`` is the α of each token's target, used by
    the "weighted_mean" reduction (also with label smoothing, as ``F.cross_entropy`` does).
    """
    if gamma < 0:
        raise ValueError(f"focal loss needs gamma >= 0, got gamma={gamma}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing and gamma:
        raise ValueError("label smoothing is defined for cross entropy (gamma = 0) only")
    with _full_precision(logits):
        z, valid, safe_targets = _token_view(logits, targets, ignore_index)
        dtype, batch_shape = z.dtype, valid.shape
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
        losses = alpha_t * losses
        if label_smoothing:
            present = torch.isfinite(z)                                  # columns in the softmax
            each = torch.where(present, -log_p, torch.zeros((), device=z.device, dtype=dtype))
            if a is not None:
                each = each * (a if a.dim() == 1 else a.unsqueeze(-2))  # α_j (-log p_j)
            spread = each.sum(-1) / present.sum(-1).clamp(min=1)         # (1/C) Σ_j α_j (-log p_j)
            losses = (1 - label_smoothing) * losses + label_smoothing * spread.expand(batch_shape)
        return _masked(losses, valid), _masked(alpha_t, valid)


def _loss_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for every loss computation, float64 if the logits are float64."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _full_precision(logits: torch.Tensor):
    """Autocast off: under autocast some ops would run in bf16/fp16, and every loss must see
    full-precision log-probs."""
    return torch.autocast(device_type=logits.device.type, enabled=False)


def _token_view(logits: torch.Tensor, targets: torch.Tensor,
                ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prologue every per-token loss shares: ``(z, valid, safe)`` with z the logits in the loss
    dtype, and the non-ignored mask and the targets with ignored ids set to 0 (a safe gather
    index), both expanded to the broadcast target shape."""
    z = logits.to(_loss_dtype(logits))
    batch_shape = torch.broadcast_shapes(z.shape[:-1], targets.shape)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    return z, valid.expand(batch_shape), safe.expand(batch_shape)


def _masked(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """values with ignored tokens set to 0 (where(), so no NaN from them reaches the gradient)."""
    return torch.where(valid, values, torch.zeros((), device=values.device, dtype=values.dtype))


def _per_column(values, columns: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """A per-class vector ``[C]`` as a tensor on the logits' device, in the loss dtype, looked up
    by label id when the logit columns are a subset (``columns [..., C']``, a binary BTL copy)."""
    v = torch.as_tensor(values, device=logits.device, dtype=_loss_dtype(logits))
    return v if columns is None else v[columns.to(logits.device)]


def offset_token_losses(logits: torch.Tensor, targets: torch.Tensor, offset: torch.Tensor, weight=None,
                        ignore_index: int = IGNORE_INDEX,
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross entropy of additively adjusted logits, ``-w_t log softmax(z + o)_t``.

    offset ``o``: ``[C]``, or ``[..., C]`` per row of targets like alpha (``τ log π`` for logit
    adjustment, ``log N`` for the balanced softmax). Shapes, weight, label smoothing and the result
    as in ``token_losses``.
    """
    with _full_precision(logits):
        dtype = _loss_dtype(logits)
        o = torch.as_tensor(offset, device=logits.device, dtype=dtype)
        z = logits.to(dtype) + (o if o.dim() == 1 else o.unsqueeze(-2))  # [..., 1, C]: every token of the row
        return token_losses(z, targets, 0.0, weight, ignore_index, label_smoothing)


def ldam_token_losses(logits: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor, scale: float = 30.0,
                      weight=None, ignore_index: int = IGNORE_INDEX,
                      label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token LDAM loss, ``-w_t log softmax(s (z - Δ_t e_t))_t``: the target's logit lowered by
    its class margin, then every logit scaled by s.

    margins ``Δ``: ``[C]`` or ``[..., C]`` per column (``ldam_margins``). Shapes, weight, label
    smoothing and the result as in ``token_losses``; the margin depends on the target, so each
    target row gets its own ``[N, C]`` logits (fused BTL: 2 rows, not one per copy).
    """
    if scale <= 0:
        raise ValueError(f"LDAM needs scale > 0, got {scale}")
    with _full_precision(logits):
        z, valid, safe = _token_view(logits, targets, ignore_index)
        dtype, batch_shape = z.dtype, valid.shape
        m = torch.as_tensor(margins, device=logits.device, dtype=dtype)
        delta_t = m[safe] if m.dim() == 1 else m.expand(*batch_shape[:-1], m.shape[-1]).gather(-1, safe)
        # Δ_t e_t: the margin in the target's column only (no arithmetic on the others, so a
        # padding column's -∞ stays -∞)
        shifted = z - (delta_t.unsqueeze(-1) * torch.nn.functional.one_hot(safe, z.shape[-1]).to(dtype))
        return token_losses(scale * shifted, targets, 0.0, weight, ignore_index, label_smoothing)


def dice_token_losses(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0, gamma: float = 1.0,
                      ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token self-adjusting dice loss (Li et al. 2020), unreduced:

        DSC_i = 1 - (2 q + γ) / (q + 1 + γ) = (1 - q) / (q + 1 + γ),      q = (1 - p_t)^α p_t

    Shapes and the result as in ``token_losses`` (the weights are 1). q is computed as
    ``exp(α log(1 - p_t) + log p_t)`` with the accurate ``log(1 - p_t)`` of the focal loss, so the
    loss and its gradient stay finite at p_t = 1 for every α >= 0 (at α < 1 a direct
    ``(1 - p_t)^α`` has an infinite derivative there).
    """
    if alpha < 0 or gamma < 0:
        raise ValueError(f"dice loss needs alpha >= 0 and gamma >= 0, got alpha={alpha}, gamma={gamma}")
    with _full_precision(logits):
        z, valid, safe = _token_view(logits, targets, ignore_index)
        log_p_t, log_q_t = _focal_log_probs(torch.log_softmax(z, dim=-1), safe)
        q = torch.exp(log_p_t) if alpha == 0 else torch.exp(alpha * log_q_t + log_p_t)
        losses = (1 - q) / (q + 1 + gamma)
        return _masked(losses, valid), valid.to(z.dtype)


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
                  ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
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

    label_smoothing ε in [0, 1): the target distribution becomes ``(1 - ε) e_t + ε/C``, i.e.

        LS_i = (1 - ε) w_t (-log p_t) + (ε / C) Σ_j w_j (-log p_j)

    exactly ``F.cross_entropy(..., label_smoothing=ε)`` (with its weights: each -log p_j weighted by
    its own class's w_j), per token and under every reduction. Unweighted gradient:
    ``∂LS_i/∂z_j = p_j - (1 - ε) δ_{jt} - ε/C``, zero at ``p = (1 - ε) e_t + ε/C``: a token stops
    being pushed once p_t reaches 1 - ε + ε/C, and is pushed back if it goes beyond.
    """
    return _functional(lambda z, t: token_losses(z, t, 0.0, weight, ignore_index, label_smoothing),
                       logits, targets, ignore_index, reduction, "cross_entropy")


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


def logit_adjusted_loss(logits: torch.Tensor, targets: torch.Tensor, priors, tau: float = 1.0,
                        ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Logit-adjusted cross entropy (Menon et al. 2021): CE of the logits shifted by the log priors,

        LA_i = -log softmax(z + τ log π)_t = -log [ π_t^τ e^{z_t} / Σ_j π_j^τ e^{z_j} ]

    priors ``π [C]``: the training class priors (``class_priors(counts)``; counts work too, as the
    normaliser Σ N_k only shifts every logit by the same τ log Σ N_k). tau τ >= 0: τ = 0 is CE.
    Shapes, reduction (default "mean" over non-ignored tokens) and label_smoothing as in
    ``cross_entropy``. A class with π_c = 0 counts as the rarest class that occurs (``seen_counts``).

    Gradient: ``∂LA_i/∂z_j = p̃_j - δ_{jt}`` with ``p̃ = softmax(z + τ log π)``. A rare target
    (small π_t) gets a small p̃_t for the same z, so it keeps being pushed after plain CE would
    stop: the loss asks for a larger margin ``z_t - z_j > τ log(π_j / π_t)`` for rarer classes.
    At test time the model predicts ``argmax_j z_j`` (the raw logits); the post-hoc variant
    instead trains with CE and predicts ``argmax_j z_j - τ log π_j`` (``bertlab.logit_adjustment``).
    """
    if tau < 0:
        raise ValueError(f"logit adjustment needs tau >= 0, got tau={tau}")
    offset = tau * class_priors(priors).log()
    return _functional(lambda z, t: offset_token_losses(z, t, offset, None, ignore_index, label_smoothing),
                       logits, targets, ignore_index, reduction, "logit_adjusted_loss")


def balanced_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, counts,
                          ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
                          label_smoothing: float = 0.0) -> torch.Tensor:
    """Balanced softmax cross entropy (Ren et al. 2020): CE of the logits shifted by the log counts,

        BS_i = -log softmax(z + log N)_t = -log [ N_t e^{z_t} / Σ_j N_j e^{z_j} ]

    counts ``N [C]``: training tokens per class (``label_counts``). This is ``logit_adjusted_loss``
    with τ = 1: ``log N_c = log π_c + log Σ_k N_k`` and the constant cancels in the softmax. Shapes,
    reduction and label_smoothing as in ``cross_entropy``; N_c = 0 counts as the smallest non-zero
    count (``seen_counts``). Gradient: ``∂BS_i/∂z_j = p̃_j - δ_{jt}``, ``p̃ = softmax(z + log N)``.
    """
    offset = seen_counts(counts).log()
    return _functional(lambda z, t: offset_token_losses(z, t, offset, None, ignore_index, label_smoothing),
                       logits, targets, ignore_index, reduction, "balanced_softmax_loss")


def ldam_loss(logits: torch.Tensor, targets: torch.Tensor, counts, max_margin: float = 0.5, scale: float = 30.0,
              weight=None, ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Label-distribution-aware margin loss (Cao et al. 2019):

        LDAM_i = -w_t log softmax(s (z - Δ_t e_t))_t,        Δ_c = max_margin · N_c^{-1/4} / max_k N_k^{-1/4}

    counts ``N [C]``: training tokens per class; the rarest class gets the margin ``max_margin``
    (``ldam_margins``; N_c = 0 counts as the rarest). scale ``s > 0``; weight: None or per-class
    ``[C]`` (the DRW weights, ``LossConfig.drw_epoch``). Shapes, reduction (default "mean" over
    non-ignored tokens; the authors' code uses ``F.cross_entropy(weight=w)``, i.e.
    "weighted_mean") and label_smoothing as in ``cross_entropy``.

    Gradient: ``∂LDAM_i/∂z_j = s w_t (p'_j - δ_{jt})``, ``p' = softmax(s (z - Δ_t e_t))``. The target
    must beat every other logit by Δ_t before its gradient fades, larger margins for rarer classes.

    On s: Cao et al. train LDAM with a normalised last layer (cosine logits in [-1, 1], their
    ``NormedLinear``), where s = 30 turns cosines into usable logits. bertlab's heads are plain
    linear layers, so s multiplies unbounded logits: with s = 30 a token's softmax is nearly
    one-hot, the loss is close to a hinge on ``z_t - Δ_t - max_j z_j`` and the gradient is up to s
    times CE's. The default keeps the paper's number; ``scale = 1`` is LDAM on raw logits.
    """
    margins = ldam_margins(counts, max_margin)
    return _functional(lambda z, t: ldam_token_losses(z, t, margins, scale, weight, ignore_index, label_smoothing),
                       logits, targets, ignore_index, reduction, "ldam_loss")


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0, gamma: float = 1.0,
              ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """Self-adjusting dice loss (Li et al. 2020), per token:

        DSC_i = 1 - (2 q + γ) / (q + 1 + γ) = (1 - q) / (q + 1 + γ),        q = (1 - p_t)^α p_t

    the soft dice coefficient of the one-hot target and the token's "self-adjusted" probability q,
    with γ smoothing numerator and denominator. alpha α >= 0 (α = 0 is plain soft dice on p_t),
    gamma γ >= 0. Shapes and reduction as in ``cross_entropy``; "mean" is the mean of DSC_i over
    non-ignored tokens. Li et al. apply the dice per token in their NER experiments; the choice of
    a per-token mean (not one dice over the batch) keeps it on the same normaliser as every other
    loss here and makes it a sum of per-token terms, which BTL copies need.

    Gradient (derived in docs/losses.md):

        ∂DSC_i/∂z_j = -(2 + γ)/(q + 1 + γ)² · (1 - p_t)^{α-1} (1 - (1 + α) p_t) · p_t (δ_{jt} - p_j)

    With α > 0 the target's logit is pushed *down* once p_t > 1/(1 + α) (q falls again past its
    peak): confident tokens are pulled back towards p_t = 1/(1 + α), which is how the factor
    (1 - p_t)^α de-emphasises easy tokens. As p_t -> 0 the gradient vanishes (factor p_t).
    """
    return _functional(lambda z, t: dice_token_losses(z, t, alpha, gamma, ignore_index),
                       logits, targets, ignore_index, reduction, "dice_loss")


def _functional(kernel, logits, targets, ignore_index, reduction, name) -> torch.Tensor:
    """The public functions' common path: check, flatten, per-token kernel, reduce."""
    _check_reduction(reduction)
    target_shape = targets.shape
    logits, targets = _flatten(logits, targets, name)
    _check_targets(targets, logits.shape[-1], ignore_index, name)
    losses, weights = kernel(logits, targets)
    if reduction == "none":
        return losses.reshape(target_shape)
    return reduce_token_losses(losses, weights, targets != ignore_index, reduction)


def _reduce(logits, targets, gamma, alpha, ignore_index, reduction, name) -> torch.Tensor:
    return _functional(lambda z, t: token_losses(z, t, gamma, alpha, ignore_index),
                       logits, targets, ignore_index, reduction, name)
