"""The report's figures, drawn from numbers (arrays), never from files: each function returns a
matplotlib ``Figure``; ``report_figures(report)`` gives every figure of a computed report by file
name, and ``bertlab.report.build`` saves them (``SAVE``). Figures are read at page size: legends
are 8 pt, below the plot (``legend_below``) or beside it, never over the data."""
from __future__ import annotations

import math

import numpy as np

from bertlab.report.rows import METRICS, variant_label

LEGEND_POINTS = 8  # legend text size: figures are read at page size, where 6 pt is unreadable
SAVE = {"dpi": 120, "bbox_inches": "tight"}  # how build_report saves every figure: the legends outside stay in


def available() -> bool:
    """Whether matplotlib is installed (``bertlab[plot]``); without it the report is tables only."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        return False
    return True


def legend_below(entries: int, **extra) -> dict:
    """Keyword arguments of ``fig.legend`` / ``ax.legend`` for a legend outside and below the plot
    (``bbox_inches="tight"`` keeps it in the PNG): 8-pt text, one to three columns."""
    return {"fontsize": LEGEND_POINTS, "title_fontsize": LEGEND_POINTS + 1, "loc": "upper center",
            "bbox_to_anchor": (0.5, 0), "ncol": 1 if entries <= 3 else 2 if entries <= 12 else 3, "frameon": False,
            **extra}


def variant_styles(variants, short: dict, cmap_of) -> tuple[dict, dict, dict]:
    """How each variant is drawn: ``{variant key: (colour, marker)}``, a colour per trained variant
    (the key without its decode: both decodes of one run share it) and a marker per decode. Also
    ``{trained label: colour}`` and ``{decode: marker}`` for the two legends. ``cmap_of(name)`` is
    ``plt.get_cmap``; colours repeat after 20 trained variants."""
    trained = list(dict.fromkeys(k[:-1] for k in variants))
    decodes = list(dict.fromkeys(k[-1][1] for k in variants))
    cmap = cmap_of("tab10" if len(trained) <= 10 else "tab20")
    colours = {t: cmap(i % cmap.N) for i, t in enumerate(trained)}
    markers = {d: "o^sDvP*X"[i % 8] for i, d in enumerate(decodes)}
    style = {k: (colours[k[:-1]], markers[k[-1][1]]) for k in variants}
    return style, {variant_label(t, short) or "every run": c for t, c in colours.items()}, markers


def spread_coincident(x, y, step: float = 0.02, max_half: float = 0.1) -> np.ndarray:
    """``x`` of a scatter on a log x axis, with the points that share their exact ``(x, y)`` (e.g.
    every variant at F1 = 0 for a class none of them finds) spread side by side instead of drawn on
    top of each other: the k-th of n such points (in input order) is multiplied by
    ``10 ** (h * (2k / (n - 1) - 1))``, ``h = min(step * (n - 1) / 2, max_half)`` decades. A point
    alone at its ``(x, y)`` does not move. Deterministic (no random draw): the same figure on every
    build, and a variant keeps its side in every pile."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = x.copy()
    piles: dict[tuple, list[int]] = {}
    for i, point in enumerate(zip(x.tolist(), y.tolist())):
        piles.setdefault(point, []).append(i)
    for members in piles.values():
        n = len(members)
        if n > 1:
            half = min(step * (n - 1) / 2, max_half)
            out[members] = x[members] * 10 ** np.linspace(-half, half, n)
    return out


def report_figures(report) -> dict:
    """``{file name: Figure}`` of a computed report (``bertlab.report.compute.Report``) with figures
    on: the reliability diagram (when runs recorded calibration), the learning curves (when rows have
    curves), F1 against class frequency and accuracy against training time. Needs matplotlib."""
    import matplotlib.pyplot as plt
    s = report.sections
    if not s or not report.opts.get("figures", True):
        return {}
    out = {}
    if s["curves"]:
        c = s["curves"]
        out["learning_curves.png"] = learning_curve_figure(c["lines"], report.labels, c["trained"], c["marks"],
                                                           c["key"], c["all_epochs"],
                                                           "runs (seed, fold)" if report.opts.get("cv") else "seeds")
    if not report.json["variants"]:  # cross-validated, nothing pooled yet: the dev curves only
        return out
    if s["calibration"]["variants"]:
        out["reliability.png"] = reliability_figure(s["calibration"]["models"])
    points = s["figures"]
    style, colours, markers = variant_styles(points["variants"], report.short, plt.get_cmap)
    out["f1_vs_frequency.png"] = f1_vs_frequency_figure(points["frequency"], style, colours, markers)
    out["accuracy_vs_time.png"] = accuracy_vs_time_figure(points["time"], style, colours, markers)
    return out


def reliability_figure(models: dict):
    """The reliability diagram: per trained model its ``(confidence [bins], accuracy [bins])`` (bins
    pooled over seeds, empty bins left out) against the diagonal of perfect calibration."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    cmap = plt.get_cmap("tab20" if len(models) > 10 else "tab10")
    for i, (model, (conf, acc)) in enumerate(models.items()):
        ax.plot(conf, acc, marker="o", ms=3, lw=1, color=cmap(i % cmap.N), label=model)
    ax.set_xlabel("confidence (largest softmax probability), bin mean")
    ax.set_ylabel("accuracy of the words in the bin")
    ax.set_title("Reliability diagram (test words, bins pooled over seeds)", fontsize=10)
    fig.legend(**legend_below(len(models) + 1, bbox_to_anchor=(0.5, -0.02)))
    return fig


def learning_curve_figure(lines: dict, labels: dict, trained: list, marks: dict | None = None,
                          dev_key: str = "dev_f1_micro", all_epochs: list | None = None, over: str = "seeds"):
    """One panel per decode, a line per variant (``lines``: ``{variant key: (epochs, values [runs,
    epochs])}``, the mean over seeds) with a band from the lowest to the highest seed; a colour per
    trained variant (``trained``: the keys without their decode, in order), the same in every
    panel; ``marks`` ``{variant: (epoch, plateaued)}`` puts a star on the plateau epoch (a cross on
    the last epoch of a line that never plateaued). ``over`` names what the band spans in the axis
    label: seeds, or a cross-validated study's runs (one per seed and fold)."""
    import matplotlib.pyplot as plt
    decodes = list(dict.fromkeys(dict(k)["decode"] for k in lines))
    cmap = plt.get_cmap("tab10" if len(trained) <= 10 else "tab20")
    colour = {key: cmap(trained.index(key[:-1]) % cmap.N) for key in lines}
    # two panels a row at most, so the figure stays about a page wide
    ncols = min(len(decodes), 2)
    nrows = -(-len(decodes) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(max(7.0, 4.6 * ncols), 3.6 * nrows), squeeze=False,
                             sharey=True, layout="constrained")
    panels = list(grid.flat[:len(decodes)])
    for ax in grid.flat[len(decodes):]:
        ax.set_visible(False)
    all_epochs = sorted({e for ep, _ in lines.values() for e in ep}) if all_epochs is None else all_epochs
    for ax, decode in zip(panels, decodes):
        for key, (epochs, values) in lines.items():
            if dict(key)["decode"] != decode:
                continue
            keep = ~np.isnan(values).all(0)
            if not keep.any():
                continue
            ep, v = np.asarray(epochs)[keep], values[:, keep]
            label = ", ".join(part for part in labels[key].split(", ") if not part.startswith("decode="))
            ax.plot(ep, np.nanmean(v, 0), marker="o", ms=3, color=colour[key], label=label or labels[key])
            if len(v) > 1:
                ax.fill_between(ep, np.nanmin(v, 0), np.nanmax(v, 0), color=colour[key], alpha=0.2, lw=0)
            if marks and key in marks and marks[key][0] in list(ep):
                e, found = marks[key]
                y = float(np.nanmean(v[:, list(ep).index(e)]))
                ax.plot([e], [y], marker="*" if found else "X", ms=11, color=colour[key], mec="black", mew=0.6,
                        ls="none", label="_plateau")  # "_": not in the legend
        ax.set_title(f"decode = {decode}")
        ax.set_xlabel("epoch (0-based)")
        if len(all_epochs) <= 20:
            ax.set_xticks(all_epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    for row in grid:
        row[0].set_ylabel(f"dev {'micro F1' if dev_key == 'dev_f1_micro' else METRICS[dev_key[4:]]}\n(mean; band: min–max over {over})")
    handles = {}
    for ax in panels:  # one legend entry per trained variant, whatever panel it is drawn in
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):  # matplotlib's "not in the legend"
                handles.setdefault(line.get_label(), line)
    fig.legend(list(handles.values()), list(handles), title="trained variant", **legend_below(len(handles)))
    return fig


def _legends(fig, ax, colours: dict, markers: dict) -> None:
    """The colour legend (trained variants) below ``ax`` and, with several decodes, the marker
    legend to its right (figure legends, so ``bbox_inches="tight"`` keeps both)."""
    from matplotlib.lines import Line2D
    by_colour = [Line2D([], [], ls="none", marker="o", color=c, label=t) for t, c in colours.items()]
    fig.legend(handles=by_colour, title="trained variant (colour)", bbox_transform=ax.transAxes,
               **legend_below(len(by_colour), bbox_to_anchor=(0.5, -0.16)))
    if len(markers) > 1:
        by_marker = [Line2D([], [], ls="none", marker=m, color="0.35", label=d) for d, m in markers.items()]
        fig.legend(handles=by_marker, title="decode (marker)", fontsize=LEGEND_POINTS,
                   title_fontsize=LEGEND_POINTS + 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                   bbox_transform=ax.transAxes, frameon=False)


def f1_vs_frequency_figure(points: dict, style: dict, colours: dict, markers: dict):
    """Test F1 of every class against its training mentions (log axis), a point per (variant,
    class): ``points`` ``{"keys", "mentions", "f1"}``, one entry per point; colour = trained
    variant, marker = decode (``variant_styles``); points at the same value spread sideways."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    keys, ys = points["keys"], points["f1"]
    xs_drawn = spread_coincident(points["mentions"], ys)
    for key in style:
        at = [i for i, k in enumerate(keys) if k == key]
        colour, marker = style[key]
        ax.scatter(xs_drawn[at], np.asarray(ys)[at], s=18, color=colour, marker=marker, alpha=0.75, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("training mentions of the class (count, log scale; a class with 0 drawn at 0.5)")
    ax.set_ylabel("test F1 of the class (mean over seeds)")
    ax.set_title("Per-class test F1 against class frequency\n(points at the same value spread sideways)",
                 fontsize=10)
    _legends(fig, ax, colours, markers)
    return fig


def accuracy_vs_time_figure(points: dict, style: dict, colours: dict, markers: dict):
    """Test micro F1 (mean ± std over seeds) against training seconds (median over seeds), a point
    per variant: ``points`` ``{variant key: (seconds, mean, std)}``; a log time axis when the times
    span more than a factor 100."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    times = []
    for key, (t, mean, std) in points.items():
        colour, marker = style[key]
        ax.errorbar([t], [mean], yerr=[0 if math.isnan(std) else std], fmt=marker, color=colour, ms=7, capsize=3)
        times.append(t)
    times = [t for t in times if t > 0 and math.isfinite(t)]
    if times and max(times) / min(times) > 100:  # e.g. an HMM's second next to a BERT's minutes
        ax.set_xscale("log")
    ax.set_xlabel("training time per run (s, median over seeds" + ("; log scale)" if ax.get_xscale() == "log" else ")"))
    ax.set_ylabel("test micro F1 (mean ± std over seeds)")
    ax.set_title("Accuracy against training time", fontsize=10)
    _legends(fig, ax, colours, markers)
    return fig
