"""Accuracy against compute, across studies: ``bertlab tradeoff STUDY_DIR ... --out DIR``.

One point per variant (its axes but the seed, and its decode) of every study given, at the mean
over seeds: test micro F1 (or ``--metric``) against training seconds per epoch and against
inference words per second. That is the thesis' time/accuracy trade-off across encoder sizes
(``ce_vs_focal_minilm``'s layer axis) next to the classic baselines (``baselines``), in one figure.

    bertlab tradeoff docs/results/baselines docs/results/ce_vs_focal_minilm \\
        --only data.name=maccrobat --out docs/results/tradeoff

writes ``DIR/tradeoff.md`` (the table), ``DIR/tradeoff.json`` and, with matplotlib,
``DIR/tradeoff.png``. ``--only KEY=VALUE`` keeps the variants whose axis KEY has that value
(studies without that axis are kept whole). The numbers are the results rows' own: training
seconds are the loop's (evaluation excluded), inference is the forward pass plus decoding over
the test split, both as the runs measured them, so points from runs on different machines or
with different thread counts are not comparable (the table lists each study's environment).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from bertlab.files import write_json, write_text
from bertlab.report import _mean_std, group_variants, load_study_results, variant_label


def _mean_std_finite(values) -> tuple[float, float]:
    """Mean and std (ddof 1) over seeds of the values that are there (None and NaN left out)."""
    return _mean_std(float(x) for x in values if x is not None and math.isfinite(float(x)))


def parse_only(items: list[str]) -> dict[str, str]:
    """``["data.name=maccrobat", ...]`` -> ``{"data.name": "maccrobat"}``; a malformed item is an error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--only {item!r}: expected KEY=VALUE, e.g. data.name=maccrobat")
        out[key.strip()] = value.strip()
    return out


def tradeoff_points(study_dirs, metric: str = "f1_micro", only: dict | None = None) -> list[dict]:
    """One dict per (study, variant): the seed means of ``metric``, training seconds per epoch and
    inference words per second, the parameter count and the number of seeds."""
    points = []
    for d in study_dirs:
        study, rows = load_study_results(d)
        axes = list(study.get("axes", {}))
        short = {**study.get("short_names", {}), "decode": "decode"}
        for key, group in group_variants(rows, axes).items():
            values = dict(key)
            if any(k in values and str(values[k]) != v for k, v in (only or {}).items()):
                continue
            if any(metric not in r for r in group):
                raise ValueError(f"{d}: results rows have no {metric!r}")
            score, score_sd = _mean_std_finite(r[metric] for r in group)
            points.append({
                "study": study["name"], "variant": variant_label(key, short), "axes": values,
                "seeds": len(group), metric: score, f"{metric}_std": score_sd,
                "seconds_per_epoch": _mean_std_finite(r.get("seconds_per_epoch") for r in group)[0],
                "inference_words_per_s": _mean_std_finite(r.get("inference_tokens_per_s") for r in group)[0],
                "params": group[0].get("params"), "env": group[0].get("env", {}),
            })
    return points


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float) and abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)


def write_tradeoff(points: list[dict], out_dir, metric: str = "f1_micro") -> Path:
    """``tradeoff.md``, ``tradeoff.json`` and (with matplotlib) ``tradeoff.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# Accuracy against compute ({metric}, mean over seeds)", "",
          "| study | variant | seeds | " + metric + " | std | training s / epoch | inference words / s | parameters |",
          "|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: -p[metric] if math.isfinite(p[metric]) else math.inf):
        md.append(f"| {p['study']} | {p['variant']} | {p['seeds']} | {_fmt(p[metric])} | {_fmt(p[metric + '_std'])} | "
                  f"{_fmt(p['seconds_per_epoch'], 1)} | {_fmt(p['inference_words_per_s'], 0)} | {_fmt(p['params'])} |")
    envs = {p["study"]: p["env"] for p in points}
    md += ["", "Measured where each study ran (compare points across studies only on the same machine):", ""]
    md += [f"- {s}: " + ", ".join(f"{k} {v}" for k, v in e.items()) for s, e in envs.items()]
    figure = _figure(points, out_dir, metric)
    if figure:
        md += ["", f"![accuracy against compute]({figure.name})"]
    write_text(out_dir / "tradeoff.md", "\n".join(md) + "\n")
    write_json(out_dir / "tradeoff.json", points)
    return out_dir / "tradeoff.md"


def _figure(points: list[dict], out_dir: Path, metric: str) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    studies = list(dict.fromkeys(p["study"] for p in points))
    markers = dict(zip(studies, "osD^v<>P*X"))
    cmap = plt.get_cmap("tab20", max(len(points), 2))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, p in enumerate(points):
        for ax, x in zip(axes, (p["seconds_per_epoch"], p["inference_words_per_s"])):
            if math.isfinite(x) and x > 0 and math.isfinite(p[metric]):
                err = p[metric + "_std"]
                ax.errorbar([x], [p[metric]], yerr=[0 if not math.isfinite(err) else err], fmt=markers[p["study"]],
                            color=cmap(i), ms=7, capsize=3, label=f"{p['study']}: {p['variant']}")
    for ax, xlabel in zip(axes, ("training seconds per epoch (log scale)", "inference words per second (log scale)")):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.10g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # 1-2-5 labels only, none overlapping
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(f"test {metric} (mean ± std over seeds)")
    axes[0].set_title("accuracy vs training cost (left is cheaper)", fontsize=10)
    axes[1].set_title("accuracy vs inference speed (right is faster)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    path = out_dir / "tradeoff.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bertlab tradeoff", description=(
        "Accuracy against training cost and inference speed, one point per variant of every study "
        "folder given (mean over seeds); writes tradeoff.md, tradeoff.json and tradeoff.png."))
    ap.add_argument("studies", nargs="+", help="study folders (runs/NAME or docs/results/NAME)")
    ap.add_argument("--out", required=True, metavar="DIR", help="where to write the table and figure")
    ap.add_argument("--metric", default="f1_micro", help="a results-row score (default f1_micro; f1_macro, "
                                                         "unweighted_accuracy)")
    ap.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                    help="keep variants whose axis KEY has VALUE (repeatable); e.g. data.name=maccrobat")
    args = ap.parse_args(argv)
    try:
        points = tradeoff_points(args.studies, args.metric, parse_only(args.only))
        if not points:
            raise ValueError("no variant left: check the study folders and --only")
        print(write_tradeoff(points, args.out, args.metric))
    except (FileNotFoundError, ValueError) as e:
        print(f"bertlab tradeoff: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
