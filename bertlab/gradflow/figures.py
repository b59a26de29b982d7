"""Gradient-flow figures, each drawn from the rows of ``gradflow.csv`` (matplotlib imported lazily)."""
from __future__ import annotations

import sys
from pathlib import Path

from bertlab.gradflow.tables import _mean_by, _select, class_share_table, layer_sort_key, markdown_summary


def _has_matplotlib() -> bool:
    try:
        _pyplot()
        return True
    except ImportError:
        return False


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


LEGEND_POINTS = 8  # the smallest text of a figure (legends, class ticks): readable at page size

# what each statistic is, with its unit, for axis and colour-bar labels
STATISTIC_LABELS = {
    "grad_norm": "gradient norm ‖g‖ (L2 of ∂loss/∂θ)",
    "grad_rms": "gradient RMS ‖g‖/√n (per parameter)",
    "weight_norm": "weight norm ‖θ‖ (L2)",
    "update_ratio": "update / weight ‖Δθ‖/‖θ‖ (ratio)",
    "p_t_mean": "mean p_t, the probability of the true class (0–1)",
    "p_t_var": "variance of p_t over the class's tokens",
    "true_logit_mean": "mean true-class logit (logit units)",
    "true_logit_var": "variance of the true-class logit (logit units²)",
    "focal_factor_mean": "mean focal factor (1 − p_t)^γ (0–1)",
    "focal_factor_var": "variance of the focal factor (1 − p_t)^γ",
}


def statistic_label(statistic: str) -> str:
    """The axis / colour-bar label of a recorded statistic: what it is and its unit."""
    return STATISTIC_LABELS.get(statistic, statistic.replace("_", " "))


def plot_grad_norms(rows, statistic: str = "grad_norm", title: str = ""):
    """Gradient norm per layer over training (log scale), plus the first/last-layer ratio and the
    running batch-loss variance. One line per layer, labelled with the layer names in the data.
    Returns the Figure (axes[0] holds the per-layer lines)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    sel = _select(rows, statistic, component="all")
    layers = sorted({r["layer"] for r in sel if r["layer"] != "all"}, key=layer_sort_key)
    cmap = plt.get_cmap("viridis", max(len(layers), 2))
    for i, layer in enumerate(layers):
        pts = sorted((r["step"], r["value"]) for r in sel if r["layer"] == layer)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=layer, color=cmap(i))
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{statistic_label(statistic)}\nper layer (log scale)")
    ax.set_title(title or f"{statistic} per layer")
    # below the plot, so no line is hidden behind it (no legend when nothing was recorded)
    if layers:
        ax.legend(title="layer", fontsize=LEGEND_POINTS, title_fontsize=LEGEND_POINTS + 1, loc="upper center",
                  bbox_to_anchor=(0.5, -0.2), ncol=min(max(len(layers), 1), 6), frameon=False)
    ax2 = axes[1]
    ratio = sorted((r["step"], r["value"]) for r in _select(rows, "first_last_ratio"))
    if ratio:
        ax2.plot([p[0] for p in ratio], [p[1] for p in ratio], color="C3", label="‖g layer.0‖ / ‖g last layer‖")
    var = sorted((r["step"], r["value"]) for r in _select(rows, "running_loss_var"))
    if var:
        ax3 = ax2.twinx()
        ax3.plot([p[0] for p in var], [p[1] for p in var], color="C0", ls="--", label="running batch-loss variance")
        ax3.set_ylabel("running batch-loss variance (loss²)", color="C0")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("‖g‖ first / last encoder layer (ratio)", color="C3")
    ax2.set_title("loss-landscape signals")
    fig.tight_layout()
    return fig


def plot_class_share(rows, ax=None, title: str = "", vmax: float | None = None):
    """Heatmap: mean share of the gradient per layer (rows, bottom to top) and class (columns).

    Returns the Figure; ``ax.get_yticklabels()`` are the layers and ``get_xticklabels()`` the
    classes as they appear in the data.
    """
    plt = _pyplot()
    layers, classes, values = class_share_table(rows)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(classes) + 2), 0.45 * len(layers) + 2))
    else:
        fig = ax.figure
    if not classes:
        ax.text(0.5, 0.5, "no per-class rows (per_class_every = 0?)", ha="center", va="center")
        return fig
    import numpy as np
    data = np.array(values, dtype=float)
    bound = vmax if vmax is not None else max(float(np.nanmax(np.abs(data))), 1e-12)
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=LEGEND_POINTS)
    ax.set_yticks(range(len(layers)), layers, fontsize=LEGEND_POINTS + 1)
    ax.set_xlabel("class (the gradient of the loss on its tokens)")
    ax.set_ylabel("layer (input at the bottom)")
    ax.set_title(title or "share of the gradient  <g_k, g> / ‖g‖²")
    bar = fig.colorbar(im, ax=ax, fraction=0.03)
    bar.set_label("share of the layer's gradient ⟨g_k, g⟩/‖g‖²\n(no unit; a row sums to 1, < 0: against g)")
    return fig


def plot_logit_stats(rows, statistic: str = "p_t_mean"):
    """Heatmap: a per-class logit statistic (default mean p_t) over the recorded steps."""
    plt = _pyplot()
    import numpy as np
    sel = _select(rows, statistic, layer="logits")
    steps = sorted({r["step"] for r in sel})
    tokens: dict = {}
    for r in _select(rows, "tokens", layer="logits"):
        tokens[r["component"]] = tokens.get(r["component"], 0.0) + r["value"]
    classes = sorted({r["component"] for r in sel}, key=lambda c: (c != "O", -tokens.get(c, 0.0), c))
    val = {(r["component"], r["step"]): r["value"] for r in sel}
    data = np.array([[val.get((c, s), np.nan) for s in steps] for c in classes], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(steps) + 3), 0.25 * len(classes) + 2))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1 if "p_t" in statistic else None)
    ax.set_yticks(range(len(classes)), classes, fontsize=LEGEND_POINTS)
    ax.set_xticks(range(len(steps)), steps, rotation=90, fontsize=LEGEND_POINTS)
    ax.set_xlabel("optimizer step (recorded steps)")
    ax.set_ylabel("class (by token count)")
    ax.set_title(f"{statistic} per class (white: no token of the class in the batch)")
    bar = fig.colorbar(im, ax=ax, fraction=0.03)
    bar.set_label(statistic_label(statistic))
    fig.tight_layout()
    return fig


def plot_compare(runs: dict[str, list[dict]]):
    """Side by side: the class-share heatmap of each run (same colour scale), and the mean
    gradient norm per layer of every run on one axis. ``runs``: name -> rows."""
    plt = _pyplot()
    import numpy as np
    n = len(runs)
    fig, axes = plt.subplots(1, n + 1, figsize=(6.5 * n + 5, 6))
    bound = 1e-12
    for rows in runs.values():
        _, _, values = class_share_table(rows)
        if values:
            bound = max(bound, float(np.nanmax(np.abs(np.array(values, dtype=float)))))
    for ax, (name, rows) in zip(axes, runs.items()):
        plot_class_share(rows, ax=ax, title=f"{name}: gradient share per class", vmax=bound)
    ax = axes[-1]
    for name, rows in runs.items():
        norms = _mean_by(_select(rows, "grad_norm", component="all"), lambda r: r["layer"])
        layers = sorted((l for l in norms if l != "all"), key=layer_sort_key)
        ax.plot(range(len(layers)), [norms[l] for l in layers], marker="o", label=name)
        ax.set_xticks(range(len(layers)), layers, rotation=45, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("layer (input on the left)")
    ax.set_ylabel("mean gradient norm ‖g‖ over recorded steps (log scale)")
    ax.set_title("gradient norm per layer")
    ax.legend(title="run", fontsize=LEGEND_POINTS + 1, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def write_figures(rows, out_dir, name: str = "") -> list[Path]:
    """Draw every figure for one run into ``out_dir`` (PNG), plus ``summary.md``.

    Without matplotlib the Markdown table is still written, with a one-line note.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = markdown_summary(rows)
    try:
        _pyplot()
    except ImportError:
        note = "matplotlib is not installed (pip install 'bertlab[plot]'): figures skipped, tables below."
        print(f"gradflow: {note}", file=sys.stderr)
        (out_dir / "summary.md").write_text(f"{note}\n\n{summary}", encoding="utf-8")
        return [out_dir / "summary.md"]
    (out_dir / "summary.md").write_text(summary, encoding="utf-8")
    plt = _pyplot()
    made = [out_dir / "summary.md"]
    prefix = f"{name} " if name else ""
    figures = {"grad_norm.png": lambda: plot_grad_norms(rows, title=f"{prefix}gradient norm per layer")}
    if _select(rows, "class_grad_share"):
        figures["class_share.png"] = lambda: plot_class_share(rows, title=f"{prefix}share of the gradient per class")
    if _select(rows, "p_t_mean"):
        figures["p_t.png"] = lambda: plot_logit_stats(rows)
    for fname, draw in figures.items():
        fig = draw()
        fig.savefig(out_dir / fname, dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(out_dir / fname)
    return made
