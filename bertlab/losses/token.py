"""The loss objects training uses: a configured loss, with its equation in ``per_token``.

``TokenLoss`` is focal loss / cross entropy with per-class weights and label smoothing
(``bertlab.losses.functional.token_losses``); ``LogitOffsetLoss`` (logit adjustment, balanced
softmax), ``LDAMLoss`` and ``DiceLoss`` override ``per_token`` with their own kernels. A loss of
your own is a subclass too (docs/losses.md, "Adding a loss"): ``[loss] class = "pkg.module:Name"``
builds it (``bertlab.losses.config.build_loss``), and every training path scores with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bertlab.losses.functional import (IGNORE_INDEX, _check_reduction, _check_targets, _flatten,
                                       _per_column, dice_token_losses, ldam_token_losses, offset_token_losses,
                                       reduce_token_losses, token_losses)


@dataclass(frozen=True)
class TokenLoss:
    """A configured loss: **the one object every training path scores tokens with**.

    ``per_token(logits, targets, columns)`` is the equation, ``FL_i = -α_t (1 - p_t)^γ log p_t``
    (CE when γ = 0, label-smoothed CE with ``label_smoothing``), per token and unreduced;
    ``reduce`` applies ``reduction``; calling the object does both. ATL, naive BTL and fused BTL
    (``bertlab.losses.objective``, ``bertlab.losses.btl``) all call ``per_token`` and nothing
    else, so a subclass that overrides it (docs/losses.md, "Adding a loss"; ``LogitOffsetLoss``,
    ``LDAMLoss``, ``DiceLoss`` below) changes what every sampler trains with.

    The contract of ``per_token``, which a new loss keeps:

    - logits ``[..., N, C']`` and targets ``[..., N]`` broadcast against each other (fused BTL scores
      one ``[N, C]`` logit matrix against ``[K, N]`` target rows with one call);
    - ``columns``: None when ``logits[..., j]`` is label j's score; otherwise label ids ``[..., C']``
      naming each logit column (a "binary" BTL copy keeps only {O, B-c, I-c}: ``C' = 3``), so
      per-class quantities (α, offsets, margins) are looked up by label id, not by position;
    - returns ``(losses, weights)``, both shaped like the broadcast targets and **0 at ignored
      tokens**: the per-token losses and each token's weight in a "weighted_mean" (α_t here).

    Each loss checks its own options once, when it is made (``__post_init__``).
    """
    name: str = "ce"
    gamma: float = 0.0                        # 0 for CE / weighted CE
    alpha: torch.Tensor | float | None = None  # per-class [C] (weights), a scalar, or None
    reduction: str = "mean"
    ignore_index: int = IGNORE_INDEX
    label_smoothing: float = 0.0              # CE only (gamma = 0)

    def __post_init__(self):
        _check_reduction(self.reduction)
        if self.gamma < 0:
            raise ValueError(f"{type(self).__name__}: gamma must be >= 0, got {self.gamma}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"{type(self).__name__}: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing and self.gamma:
            raise ValueError(f"{type(self).__name__}: label smoothing is defined for cross entropy (gamma = 0) only")

    def _alpha(self, columns: torch.Tensor | None):
        """α (the per-class weight) as the columns see it."""
        alpha = self.alpha
        if columns is not None and isinstance(alpha, torch.Tensor):
            alpha = alpha.to(columns.device)[columns]
        return alpha

    def per_token(self, logits: torch.Tensor, targets: torch.Tensor,
                  columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(l_i, α_t)`` per token, unreduced; see the class docstring for shapes."""
        return token_losses(logits, targets, self.gamma, self._alpha(columns), self.ignore_index,
                            self.label_smoothing)

    def token_weights(self, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Each token's weight in a "weighted_mean" (``[N]`` for targets ``[N]``, 0 at ignored
        tokens): the weights ``per_token`` itself returns, read at zero logits ``[N, num_classes]``.

        Training divides a step's loss *sum* by their total over the step's tokens
        (``bertlab.losses.objective``); reading them from ``per_token`` (not from an ``alpha``
        field) means a new loss has one normaliser, the one its own ``reduce`` uses.
        """
        with torch.no_grad():
            zeros = torch.zeros(*targets.shape, num_classes)
            return self.per_token(zeros, targets)[1]

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


@dataclass(frozen=True)
class LogitOffsetLoss(TokenLoss):
    """Cross entropy of ``z + o`` with a fixed per-class offset ``o [C]``: logit adjustment
    (``o = τ log π``, name "logit_adjusted") and the balanced softmax (``o = log N``,
    "balanced_softmax"). ``alpha`` stays a per-class weight (None here), as in ``TokenLoss``."""
    offset: torch.Tensor | None = None

    def per_token(self, logits, targets, columns=None):
        return offset_token_losses(logits, targets, _per_column(self.offset, columns, logits),
                                   self._alpha(columns), self.ignore_index, self.label_smoothing)


@dataclass(frozen=True)
class LDAMLoss(TokenLoss):
    """LDAM (``ldam_token_losses``): CE of ``s (z - Δ_t e_t)``; ``alpha`` is the per-class weight
    w (None, or the DRW weights once ``drw_epoch`` is reached)."""
    margins: torch.Tensor | None = None
    scale: float = 30.0

    def __post_init__(self):
        super().__post_init__()
        if self.scale <= 0:
            raise ValueError(f"LDAMLoss: scale must be > 0, got {self.scale}")

    def per_token(self, logits, targets, columns=None):
        return ldam_token_losses(logits, targets, _per_column(self.margins, columns, logits), self.scale,
                                 self._alpha(columns), self.ignore_index, self.label_smoothing)


@dataclass(frozen=True)
class DiceLoss(TokenLoss):
    """The self-adjusting dice loss (``dice_token_losses``) with exponent ``dice_alpha`` and
    smoothing ``dice_gamma``; every token weighs 1 in a "weighted_mean"."""
    dice_alpha: float = 1.0
    dice_gamma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.dice_alpha < 0 or self.dice_gamma < 0:
            raise ValueError(f"DiceLoss: alpha and gamma must be >= 0, got {self.dice_alpha}, {self.dice_gamma}")

    def per_token(self, logits, targets, columns=None):
        return dice_token_losses(logits, targets, self.dice_alpha, self.dice_gamma, self.ignore_index)
