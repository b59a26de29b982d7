"""Draw docs/figures/focal_loss_vs_pt.png from bertlab.losses itself (so the curves are the real code).

    .venv/bin/python docs/figures/make_loss_figures.py

Left: the per-token loss FL = -(1 - p_t)^γ log p_t against p_t. Right: the size of its gradient with
respect to the target's own logit, |∂FL/∂z_t| = |γ (1-p_t)^{γ-1} p_t log p_t - (1-p_t)^γ| (1 - p_t),
obtained by autograd through ``focal_loss`` on two-class logits z = (log p_t, log(1 - p_t)).
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bertlab.losses import focal_loss  # noqa: E402

GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
OUT = Path(__file__).resolve().parent / "focal_loss_vs_pt.png"


def loss_and_target_grad(p_t: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token focal loss and ∂FL/∂z_t for target probabilities p_t (float64)."""
    logits = torch.stack([p_t.log(), (1 - p_t).log()], dim=1).requires_grad_(True)  # softmax = (p_t, 1-p_t)
    targets = torch.zeros(len(p_t), dtype=torch.long)
    losses = focal_loss(logits, targets, gamma=gamma, reduction="none")
    losses.sum().backward()
    return losses.detach(), logits.grad[:, 0]


def main() -> None:
    p_t = torch.linspace(0.005, 0.995, 397, dtype=torch.float64)
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(10, 4))
    for gamma in GAMMAS:
        loss, grad = loss_and_target_grad(p_t, gamma)
        label = f"γ = {gamma:g}" + (" (CE)" if gamma == 0 else "")
        ax_loss.plot(p_t, loss, label=label)
        ax_grad.plot(p_t, grad.abs(), label=label)
    ax_loss.set(xlabel="p_t (probability of the true class)", ylabel="loss  -(1-p_t)^γ log p_t",
                title="Focal loss per token", ylim=(0, 5))
    ax_grad.set(xlabel="p_t (probability of the true class)", ylabel="|∂loss/∂z_t|",
                title="Gradient on the true class's logit", ylim=(0, 1.45))
    for ax in (ax_loss, ax_grad):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
