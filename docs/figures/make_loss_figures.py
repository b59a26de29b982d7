"""Draw the loss figures of docs/losses.md from bertlab.losses itself (so the curves are the real code).

    .venv/bin/python docs/figures/make_loss_figures.py              # writes into docs/figures/
    .venv/bin/python docs/figures/make_loss_figures.py --out DIR    # writes into DIR instead

Every figure is drawn on two-class logits z = (log p_t, log(1 - p_t)), whose softmax is
(p_t, 1 - p_t): class 0 is the target, class 1 "the rest". Left: the per-token loss against p_t.
Right: the gradient with respect to the target's own logit, by autograd through the loss function.

- focal_loss_vs_pt.png: FL = -(1 - p_t)^γ log p_t for several γ, and |∂FL/∂z_t|.
- logit_adjusted_vs_pt.png, ldam_vs_pt.png, dice_vs_pt.png, label_smoothing_vs_pt.png: each beside
  CE and focal (γ = 2); the right panel is -∂loss/∂z_t, the push on the target's logit (> 0 raises
  it), because the dice and label-smoothing pushes change sign.

For the count-based losses the target is either a rare class (10 training tokens against 900 for
the other class, an entity label against O) or the frequent one (900 against 10).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bertlab.losses import (cross_entropy, dice_loss, focal_loss, ldam_loss, ldam_margins,  # noqa: E402
                            logit_adjusted_loss)

GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
HERE = Path(__file__).resolve().parent
RARE, FREQUENT = [10, 900], [900, 10]   # training counts of (target, other)


def loss_and_target_grad(p_t: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``loss_fn(logits, targets)`` (reduction "none") and its ∂/∂z_t, for target
    probabilities p_t (float64), on two-class logits z = (log p_t, log(1 - p_t))."""
    logits = torch.stack([p_t.log(), (1 - p_t).log()], dim=1).requires_grad_(True)
    targets = torch.zeros(len(p_t), dtype=torch.long)
    losses = loss_fn(logits, targets)
    losses.sum().backward()
    return losses.detach(), logits.grad[:, 0]


def focal(gamma):
    return lambda z, t: focal_loss(z, t, gamma=gamma, reduction="none")


def ce(z, t):
    return cross_entropy(z, t, reduction="none")


def focal_figure(p_t: torch.Tensor, out: Path) -> None:
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(10, 4))
    for gamma in GAMMAS:
        loss, grad = loss_and_target_grad(p_t, focal(gamma))
        label = f"γ = {gamma:g}" + (" (CE)" if gamma == 0 else "")
        ax_loss.plot(p_t, loss, label=label)
        ax_grad.plot(p_t, grad.abs(), label=label)
    ax_loss.set(xlabel="p_t (probability of the true class)", ylabel="loss  -(1-p_t)^γ log p_t",
                title="Focal loss per token", ylim=(0, 5))
    ax_grad.set(xlabel="p_t (probability of the true class)", ylabel="|∂loss/∂z_t|",
                title="Gradient on the true class's logit", ylim=(0, 1.45))
    finish(fig, (ax_loss, ax_grad), out / "focal_loss_vs_pt.png", legend_size=None)


def method_figure(p_t: torch.Tensor, curves: list, title: str, path: Path, grad_ylim=(-0.6, 1.45)) -> None:
    """CE and focal (γ = 2) in grey, then ``curves``: ``(label, loss_fn, divide_by)``; a curve is
    divided by ``divide_by`` (a scale s that would leave the axes) and says so in its label."""
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(10, 4))
    for label, fn, style in (("CE", ce, dict(color="0.2", lw=2)),
                             ("focal, γ = 2", focal(2.0), dict(color="0.55", lw=2, ls="--"))):
        loss, grad = loss_and_target_grad(p_t, fn)
        ax_loss.plot(p_t, loss, label=label, **style)
        ax_grad.plot(p_t, -grad, label=label, **style)
    for label, fn, divide_by in curves:
        loss, grad = loss_and_target_grad(p_t, fn)
        if divide_by != 1:
            label = f"{label}  (÷ {divide_by:g})"
        ax_loss.plot(p_t, loss / divide_by, label=label)
        ax_grad.plot(p_t, -grad / divide_by, label=label)
    ax_grad.axhline(0.0, color="black", lw=0.6)
    ax_loss.set(xlabel="p_t (model's probability of the true class)", ylabel="loss per token", title=title,
                ylim=(0, 5))
    ax_grad.set(xlabel="p_t (model's probability of the true class)", ylabel="-∂loss/∂z_t  (> 0 raises z_t)",
                title="Push on the true class's logit", ylim=grad_ylim)
    finish(fig, (ax_loss, ax_grad), path)


def finish(fig, axes, path: Path, legend_size=8) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Draw the loss figures of docs/losses.md.")
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write the PNGs into (default: %(default)s)")
    out = ap.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    p_t = torch.linspace(0.005, 0.995, 397, dtype=torch.float64)
    focal_figure(p_t, out)

    def la(counts, tau):
        return lambda z, t: logit_adjusted_loss(z, t, counts, tau, reduction="none")
    method_figure(p_t, [("LA τ = 1 (= balanced softmax), rare target", la(RARE, 1.0), 1),
                        ("LA τ = 0.5, rare target", la(RARE, 0.5), 1),
                        ("LA τ = 1 (= balanced softmax), frequent target", la(FREQUENT, 1.0), 1)],
                  "Logit adjustment: CE of z + τ log π", out / "logit_adjusted_vs_pt.png", grad_ylim=(0, 1.45))

    def ldam(counts, scale):
        # the two-class margins of these counts: the rare class gets max_margin = 0.5
        return lambda z, t: ldam_loss(z, t, counts, 0.5, scale, reduction="none")
    delta_frequent = float(ldam_margins(FREQUENT)[0])
    method_figure(p_t, [("LDAM s = 1, rare target (Δ = 0.5)", ldam(RARE, 1.0), 1),
                        (f"LDAM s = 1, frequent target (Δ = {delta_frequent:.2f})", ldam(FREQUENT, 1.0), 1),
                        ("LDAM s = 30, rare target", ldam(RARE, 30.0), 30)],
                  "LDAM: CE of s (z - Δ_t e_t)", out / "ldam_vs_pt.png", grad_ylim=(0, 1.45))

    def dice(alpha, gamma):
        return lambda z, t: dice_loss(z, t, alpha, gamma, reduction="none")
    method_figure(p_t, [("dice α = 1, γ = 1 (default)", dice(1.0, 1.0), 1),
                        ("dice α = 0.5, γ = 1", dice(0.5, 1.0), 1),
                        ("dice α = 0 (plain soft dice), γ = 1", dice(0.0, 1.0), 1),
                        ("dice α = 1, γ = 0.1", dice(1.0, 0.1), 1)],
                  "Self-adjusting dice: (1 - q)/(q + 1 + γ), q = (1-p_t)^α p_t", out / "dice_vs_pt.png")

    def smoothed(eps):
        return lambda z, t: cross_entropy(z, t, label_smoothing=eps, reduction="none")
    method_figure(p_t, [("label smoothing ε = 0.1", smoothed(0.1), 1), ("label smoothing ε = 0.2", smoothed(0.2), 1)],
                  "Label-smoothed CE (two classes: C = 2)", out / "label_smoothing_vs_pt.png")


if __name__ == "__main__":
    main()
