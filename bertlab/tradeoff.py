"""Accuracy against compute, across studies: ``bertlab tradeoff STUDY_DIR ... --out DIR``.

One point per variant (its axes but the seed, and its decode) of every study given: the mean over
seeds of test micro F1 (or ``--metric``) against the median over seeds of the training cost and of
inference words per second (costs as medians: a run that shared its cores with other work is
slower without computing more, which moves a mean but not a median). That is the thesis'
time/accuracy trade-off across encoder sizes (``ce_vs_focal_minilm``'s layer axis) next to the
classic baselines (``baselines``), in one figure.

The training cost is ``--cost run`` (default): the training seconds of the whole run, every epoch
it trained (those after its best epoch too, which early stopping needs), i.e. what the scored
model cost; or ``--cost epoch``: seconds per epoch. They differ when models train for different
numbers of epochs (a BiLSTM cheap per epoch that early stopping keeps for 60 epochs, a MiniLM
for 8; a feature CRF fitted once has one "epoch"). Both are in the table; the option picks the
one the ratios and the figure use.

    bertlab tradeoff docs/results/baselines docs/results/ce_vs_focal_minilm \\
        --only data.name=maccrobat --out docs/results/tradeoff

writes ``DIR/tradeoff.md`` (the table), ``DIR/tradeoff.json`` and, with matplotlib,
``DIR/tradeoff.png``. ``--only KEY=VALUE`` keeps the variants whose axis KEY has that value
(studies without that axis are kept whole). The numbers are the results rows' own: training
seconds are the loop's (evaluation excluded), inference is the forward pass plus decoding over
the test split, both as the runs measured them, so points from runs on different machines or
with different thread counts are not comparable (the table lists each study's environment).

``--anchor STUDY:KEY=VALUE[,KEY=VALUE...]`` (one per study) names a variant that every study
has trained in the same configuration, e.g. the full 6-layer MiniLM under CE:

    bertlab tradeoff docs/results/baselines docs/results/ce_vs_focal_minilm --only data.name=maccrobat \
        --anchor baselines:model=minilm --anchor ce_vs_focal_minilm:num_layers=6,loss=ce \
        --out docs/results/tradeoff

Each point's cost is then also given relative to its own study's anchor (training seconds per
run, or per epoch, / the anchor's, inference words per second / the anchor's, both ratios of seed
medians), and
the figure plots those ratios: one machine-free scale across studies run on different machines
(the ratios themselves still depend on the hardware, less than the seconds do).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from bertlab.errors import fail
from bertlab.files import write_json, write_text
from bertlab.report.rows import group_variants, load_study_results, mean_std, median, variant_label


def _mean_std_finite(values) -> tuple[float, float]:
    """Mean and std (ddof 1) over seeds of the values that are there (None and NaN left out)."""
    return mean_std(float(x) for x in values if x is not None and math.isfinite(float(x)))


def parse_only(items: list[str]) -> dict[str, str]:
    """``["data.name=maccrobat", ...]`` -> ``{"data.name": "maccrobat"}``; a malformed item is an error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--only {item!r}: expected KEY=VALUE, e.g. data.name=maccrobat")
        out[key.strip()] = value.strip()
    return out


def parse_anchors(items: list[str]) -> dict[str, dict[str, str]]:
    """``["baselines:model=minilm", "sizes:num_layers=6,loss=ce"]`` -> ``{study: {key: value}}``."""
    out = {}
    for item in items:
        study, sep, spec = item.partition(":")
        if not sep or not study.strip() or not spec.strip():
            raise ValueError(f"--anchor {item!r}: expected STUDY:KEY=VALUE[,KEY=VALUE...], "
                             f"e.g. ce_vs_focal_minilm:num_layers=6,loss=ce")
        if study.strip() in out:
            raise ValueError(f"--anchor {item!r}: a second anchor for study {study.strip()!r}")
        try:
            out[study.strip()] = parse_only(spec.split(","))
        except ValueError:
            raise ValueError(f"--anchor {item!r}: expected STUDY:KEY=VALUE[,KEY=VALUE...]") from None
    return out


def _matches(values: dict, wanted: dict, short: dict) -> bool:
    """Whether a variant's axis values agree with every ``KEY=VALUE`` (KEY: the axis or its short
    name); an axis the variant does not have does not exclude it."""
    by_name = {**values, **{short[k]: v for k, v in values.items() if k in short}}
    return all(k not in by_name or str(by_name[k]) == v for k, v in wanted.items())


COSTS = {"run": "train_seconds", "epoch": "seconds_per_epoch"}  # --cost: the results-row field


def tradeoff_points(study_dirs, metric: str = "f1_micro", only: dict | None = None,
                    anchors: dict | None = None, cost: str = "run") -> list[dict]:
    """One dict per (study, variant): the seed mean of ``metric``, the seed medians of training seconds
    per run and per epoch and of inference words per second (a run that shared its cores moves a
    mean, not a median), the parameter count and the number of seeds. With ``anchors`` (``{study
    name: {key: value}}``, one for every study), also ``train_cost_vs_anchor`` (the ``cost``
    measure, ``"run"`` or ``"epoch"``, over the anchor's) and ``inference_speed_vs_anchor``."""
    if cost not in COSTS:
        raise ValueError(f"--cost {cost!r}: expected one of {', '.join(COSTS)}")
    points = []
    for d in study_dirs:
        study, rows = load_study_results(d)
        axes = list(study.get("axes", {}))
        short = {**study.get("short_names", {}), "decode": "decode"}
        first = len(points)
        for key, group in group_variants(rows, axes).items():
            values = dict(key)
            if not _matches(values, only or {}, short):
                continue
            if any(metric not in r for r in group):
                raise ValueError(f"{d}: results rows have no {metric!r}")
            score, score_sd = _mean_std_finite(r[metric] for r in group)
            points.append({
                "study": study["name"], "variant": variant_label(key, short), "axes": values,
                "seeds": len(group), metric: score, f"{metric}_std": score_sd,
                "cost": cost, "train_seconds": median(r.get("train_seconds") for r in group),
                "seconds_per_epoch": median(r.get("seconds_per_epoch") for r in group),
                "inference_words_per_s": median(r.get("inference_tokens_per_s") for r in group),
                "params": group[0].get("params"), "env": group[0].get("env", {}),
            })
        if anchors is not None:
            _relative_to_anchor(points[first:], study["name"], anchors, short, d)
    return points


def _relative_to_anchor(points: list[dict], study: str, anchors: dict, short: dict, study_dir) -> None:
    if study not in anchors:
        raise ValueError(f"{study_dir}: no --anchor for study {study!r} (give one for every study, "
                         f"e.g. --anchor {study}:KEY=VALUE)")
    wanted = anchors[study]
    if any(k not in p["axes"] and k not in {short.get(a) for a in p["axes"]} for p in points for k in wanted):
        raise ValueError(f"--anchor {study}:{_spec(wanted)}: not every key is an axis of {study_dir} "
                         f"(axes: {', '.join(sorted({short.get(a, a) for p in points for a in p['axes']}))})")
    found = [p for p in points if _matches(p["axes"], wanted, short)]
    if len(found) != 1:
        names = "; ".join(p["variant"] for p in found) or "none"
        raise ValueError(f"--anchor {study}:{_spec(wanted)} must name one variant of {study_dir}, "
                         f"it names {len(found)} ({names})")
    anchor = found[0]
    train_field = COSTS[anchor["cost"]]
    for field in (train_field, "inference_words_per_s"):
        if not (math.isfinite(anchor[field]) and anchor[field] > 0):
            raise ValueError(f"--anchor {study}:{_spec(wanted)}: the anchor variant has no {field} "
                             f"in {study_dir}/results.jsonl")
    for p in points:
        p["anchor"] = anchor["variant"]
        p["train_cost_vs_anchor"] = p[train_field] / anchor[train_field]
        p["inference_speed_vs_anchor"] = p["inference_words_per_s"] / anchor["inference_words_per_s"]


def _spec(wanted: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in wanted.items())


def _relative(points: list[dict]) -> bool:
    """Whether every point carries its cost relative to its study's anchor (``--anchor``)."""
    return all("train_cost_vs_anchor" in p for p in points)


def _cost(points: list[dict]) -> str:
    """``"run"`` or ``"epoch"``: the training cost the points' ratios and figure use (``--cost``)."""
    return points[0]["cost"] if points else "run"


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
    relative = _relative(points)
    md = [f"# Accuracy against compute ({metric}: mean over seeds; costs: medians over seeds)", "",
          "| study | variant | seeds | " + metric + " | std | training s / run | training s / epoch | "
          "inference words / s | " + (f"training cost × anchor (per {_cost(points)}) | inference speed × anchor | "
                                     if relative else "") + "parameters |",
          "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if relative else "")]
    for p in sorted(points, key=lambda p: -p[metric] if math.isfinite(p[metric]) else math.inf):
        ratios = (f"{_fmt(p['train_cost_vs_anchor'], 3)} | {_fmt(p['inference_speed_vs_anchor'], 3)} | "
                  if relative else "")
        md.append(f"| {p['study']} | {p['variant']} | {p['seeds']} | {_fmt(p[metric])} | {_fmt(p[metric + '_std'])} | "
                  f"{_fmt(p['train_seconds'], 1)} | {_fmt(p['seconds_per_epoch'], 1)} | "
                  f"{_fmt(p['inference_words_per_s'], 0)} | {ratios}{_fmt(p['params'])} |")
    if relative:
        md += ["", "Anchors (each study's costs are divided by its own anchor's, ratios of seed medians; "
                   "the figure plots these ratios):", ""]
        md += [f"- {s}: {a}" for s, a in dict((p["study"], p["anchor"]) for p in points).items()]
    envs = {p["study"]: p["env"] for p in points}
    md += ["", "Measured where each study ran (compare seconds across studies only on the same machine"
               + ("; the ratios to each study's anchor are comparable across machines to the extent that "
                  "the hardware speeds every model up alike" if relative else "") + "):", ""]
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
    except ImportError:
        return None
    fig = tradeoff_figure(points, metric)
    path = out_dir / "tradeoff.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def tradeoff_figure(points: list[dict], metric: str = "f1_micro"):
    """The figure of ``tradeoff_points``: ``metric`` against training cost (left) and inference speed
    (right), log x axes, ratios to each study's anchor where every point has one. Needs matplotlib."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    studies = list(dict.fromkeys(p["study"] for p in points))
    markers = dict(zip(studies, "osD^v<>P*X"))
    cmap = plt.get_cmap("tab20", max(len(points), 2))
    relative = _relative(points)
    per = f"per {_cost(points)}"
    xs = (("train_cost_vs_anchor", "inference_speed_vs_anchor") if relative
          else (COSTS[_cost(points)], "inference_words_per_s"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, p in enumerate(points):
        for ax, x in zip(axes, (p[xs[0]], p[xs[1]])):
            if math.isfinite(x) and x > 0 and math.isfinite(p[metric]):
                err = p[metric + "_std"]
                ax.errorbar([x], [p[metric]], yerr=[0 if not math.isfinite(err) else err], fmt=markers[p["study"]],
                            color=cmap(i), ms=7, capsize=3, label=f"{p['study']}: {p['variant']}")
    xlabels = ((f"training seconds {per} / the study's anchor's (log scale)",
                "inference words per second / the study's anchor's (log scale)") if relative
               else (f"training seconds {per} (log scale)", "inference words per second (log scale)"))
    for ax, xlabel in zip(axes, xlabels):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_short_number))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(f"test {metric} (mean ± std over seeds)")
    axes[0].set_title("accuracy vs training cost (left is cheaper)", fontsize=10)
    axes[1].set_title("accuracy vs inference speed (right is faster)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    for ax in axes:
        _readable_log_ticks(ax)
    return fig


def _short_number(x: float, _pos=None) -> str:
    """A tick label: 0.05, 2, 1,000, 20k, 5M."""
    for above, unit, suffix in ((1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if x >= above:
            return f"{x / unit:,.10g}{suffix}"
    return f"{x:,.10g}"


def _readable_log_ticks(ax) -> None:
    """The densest log ticks whose labels do not overlap: 1-2-5 a decade, else powers of 10, else
    every second, third, ... power (an HMM beside BERT spans 4 decades of training cost)."""
    import matplotlib.ticker
    renderer = ax.figure.canvas.get_renderer()
    for subs, numticks in (((1.0, 2.0, 5.0), "auto"), ((1.0,), 12), ((1.0,), 6), ((1.0,), 4), ((1.0,), 3)):
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=subs, numticks=numticks))
        if not _labels_overlap(ax, renderer):
            return


def _labels_overlap(ax, renderer) -> bool:
    lo, hi = ax.get_xlim()
    ax.figure.canvas.draw()
    boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels()
                    if t.get_visible() and t.get_text() and lo <= t.get_position()[0] <= hi), key=lambda b: b.x0)
    return any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bertlab tradeoff", description=(
        "Accuracy against training cost and inference speed, one point per variant of every study "
        "folder given (score: mean over seeds; costs: medians); writes tradeoff.md, tradeoff.json and tradeoff.png."))
    ap.add_argument("studies", nargs="+", help="study folders (runs/NAME or docs/results/NAME)")
    ap.add_argument("--out", required=True, metavar="DIR", help="where to write the table and figure")
    ap.add_argument("--metric", default="f1_micro", help="a results-row score (default f1_micro; f1_macro, "
                                                         "unweighted_accuracy)")
    ap.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                    help="keep variants whose axis KEY (or its short name) has VALUE (repeatable); "
                         "e.g. data.name=maccrobat")
    ap.add_argument("--anchor", action="append", default=[], metavar="STUDY:KEY=VALUE[,KEY=VALUE]",
                    help="one per study: the variant its costs are divided by (the same model and recipe in "
                         "every study, e.g. ce_vs_focal_minilm:num_layers=6,loss=ce); the figure then plots "
                         "the ratios, comparable across machines")
    ap.add_argument("--cost", choices=sorted(COSTS), default="run",
                    help="training cost of a variant: seconds of the whole run (default: every epoch it "
                         "trained, what its scored model cost) or seconds per epoch")
    args = ap.parse_args(argv)
    try:
        anchors = parse_anchors(args.anchor) if args.anchor else None
        points = tradeoff_points(args.studies, args.metric, parse_only(args.only), anchors, args.cost)
        if not points:
            raise ValueError("no variant left: check the study folders and --only")
        print(write_tradeoff(points, args.out, args.metric))
    except Exception as e:
        return fail("tradeoff", e, also=(ValueError,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
