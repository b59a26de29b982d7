"""A loss of your own, as a study names it: ``[loss] class = "experiments.poly_loss:PolyLoss"``.

Poly-1 (Leng et al. 2022, "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
Functions"): cross entropy is ``-log p_t = Σ_j (1 - p_t)^j / j``; Poly-1 raises the first term's
coefficient by ε,

    l_i = -log p_t + ε (1 - p_t)

so ε > 0 keeps pushing tokens that are already right (the gradient of the extra term is
``-ε p_t (δ_{jt} - p_j)``, largest at p_t = 1/2), ε < 0 lets them go earlier; ε = 0 is cross entropy
exactly. Every token weighs 1, so "mean" and "weighted_mean" agree. docs/losses.md, "Adding a loss",
walks through it; ``experiments/poly_loss.toml`` is the study that trains with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bertlab.losses import TokenLoss, token_losses


@dataclass(frozen=True)
class PolyLoss(TokenLoss):
    """Poly-1: ``l_i = -log p_t + ε (1 - p_t)`` per token (``epsilon`` = ε >= -1)."""
    epsilon: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.epsilon < -1:  # below -1 the loss falls as p_t rises towards 1 (Leng et al., section 4)
            raise ValueError(f"PolyLoss: epsilon must be >= -1, got {self.epsilon}")

    def per_token(self, logits: torch.Tensor, targets: torch.Tensor,
                  columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # the per-class columns do not matter here: Poly-1 has no per-class quantity
        ce, weights = token_losses(logits, targets, ignore_index=self.ignore_index)   # -log p_t, 1; 0 if ignored
        p_t = torch.exp(-ce)                       # 1 at ignored tokens, so their ε (1 - p_t) is 0 too
        return ce + self.epsilon * (1 - p_t), weights
