"""``bertlab gradflow``: train with the gradient-flow instruments on, once per ``[gradflow] compare``
entry, and draw the figures (or only redraw them from CSV files).

The instruments and figures are ``bertlab.gradflow``; the training is ``bertlab.train.train`` with
a ``GradFlowRecorder`` callback, exactly what ``bertlab train`` does with a ``[gradflow]`` section.
This module only adds the comparison of several variants, so ``gradflow`` never imports the loop
and the loop imports ``gradflow`` only for the recorder (no import cycle).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bertlab.gradflow.figures import _pyplot, plot_compare, write_figures
from bertlab.gradflow.instruments import GradFlowConfig, GradFlowRecorder
from bertlab.gradflow.tables import read_rows, write_rows

def split_config(path) -> tuple[dict, GradFlowConfig]:
    """Read a TOML config; return (the train config without ``[gradflow]``, the GradFlowConfig)."""
    from bertlab.config import read_config_file
    raw = read_config_file(path)  # a missing or malformed file is a ConfigError naming it
    section = raw.pop("gradflow", {})
    return raw, GradFlowConfig.from_dict(section, source=str(path))


def _run_name(overrides: str) -> str:
    """The folder name of a ``[gradflow] compare`` entry: its override values joined by ``_``, with
    any character but letters, digits and ``._+-`` as ``-`` (a value may be a path, e.g.
    ``data.train_file=/data/x.tsv``, which must not become a folder outside ``--out``)."""
    import re
    name = "_".join(o.split("=", 1)[1].strip().strip('"') for o in overrides.split(";") if "=" in o) or "run"
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", name)
    return "run" if name in (".", "..") else name


def run_gradflow(config_path, out_dir, overrides=(), gradflow_overrides: dict | None = None,
                 figures_dir=None, only: str | None = None) -> dict[str, list[dict]]:
    """Train once per ``[gradflow] compare`` entry (or once) with the recorder on.

    Each run trains into ``out_dir/<name>`` (``out_dir`` itself without ``compare``) and its data and
    figures go to ``<run>/<[gradflow] out>``; with ``figures_dir`` they are also copied (CSV, JSONL,
    PNG, summary.md) to ``figures_dir/<name>``. ``only``: run just that ``compare`` entry (to run
    the entries as separate processes; ``--from-csv`` draws the comparison afterwards).
    Returns name -> rows, read back from each CSV.
    """
    from bertlab import train as train_mod  # the training loop (bertlab/train/)
    from bertlab.config import load_config
    raw, gcfg = split_config(config_path)
    if gradflow_overrides:
        gcfg = GradFlowConfig.from_dict({**gcfg.__dict__, **gradflow_overrides}, source=str(config_path))
    variants = {_run_name(c): [o.strip() for o in c.split(";") if o.strip()] for c in gcfg.compare} or {"run": []}
    if only is not None:
        if only not in variants:
            raise ValueError(f"{config_path}: --only {only!r}: [gradflow] compare names are {list(variants)}")
        variants = {only: variants[only]}
    runs = {}
    for name, extra in variants.items():
        run_dir = Path(out_dir) / name if gcfg.compare else Path(out_dir)
        try:
            config = load_config(raw, overrides=list(overrides) + extra)
        except ValueError as e:  # the messages say "<dict>": name the file instead
            raise type(e)(str(e).replace("<dict>", str(config_path))) from None
        recorder = GradFlowRecorder.from_config(gcfg, run_dir)
        train_mod.train(config, run_dir, callbacks=[recorder], resume=False)
        csv_path = recorder.write()
        rows = read_rows(csv_path)  # the figures are drawn from the file, as they would be later
        write_figures(rows, recorder.out_dir, name=name)
        if figures_dir is not None:
            write_rows(rows, Path(figures_dir) / name, jsonl=False)  # the CSV holds the same rows
            write_figures(rows, Path(figures_dir) / name, name=name)
        runs[name] = rows
    return runs


def write_comparison(runs: dict[str, list[dict]], out_dir) -> Path | None:
    """The side-by-side figure (``compare.png``) for two or more runs; None without matplotlib."""
    if len(runs) < 2:
        return None
    try:
        plt = _pyplot()
    except ImportError:
        return None
    fig = plot_compare(runs)
    path = Path(out_dir) / "compare.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``bertlab gradflow``: expected failures (a missing or bad config, bad data) are one line, status 2."""
    from bertlab.errors import fail
    try:
        return _main(argv)
    except Exception as e:
        return fail("gradflow", e)


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bertlab gradflow", description=(
        "Train with the gradient-flow instruments on (the config's [gradflow] section) and draw the "
        "figures. With --from-csv, only redraw the figures from existing gradflow.csv files."))
    p.add_argument("--config", help="a TrainConfig TOML with an optional [gradflow] section")
    p.add_argument("--out", default=None, help="output folder (default runs/gradflow/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a train config field (repeatable)")
    p.add_argument("--every", type=int, help="override [gradflow] every")
    p.add_argument("--per-class-every", type=int, help="override [gradflow] per_class_every")
    p.add_argument("--figures", default=None,
                   help="also copy each run's CSV and figures to FIGURES/<name> and compare.png to FIGURES")
    p.add_argument("--only", default=None, metavar="NAME",
                   help="run only this [gradflow] compare entry (its name: the override values, e.g. btl)")
    p.add_argument("--from-csv", nargs="+", metavar="NAME=CSV",
                   help="only redraw figures from gradflow.csv files (NAME=path; two or more: compare.png "
                        "in --out, default the first CSV's parent folder's parent)")
    args = p.parse_args(argv)

    if args.from_csv:
        runs = {}
        for item in args.from_csv:
            name, _, path = item.rpartition("=")
            name = name or Path(path).parent.name
            runs[name] = read_rows(path)
            write_figures(runs[name], Path(path).parent, name=name)
        out = Path(args.out) if args.out else Path(args.from_csv[0].rpartition("=")[2]).parent.parent
        made = write_comparison(runs, out)
        print(f"gradflow: figures redrawn{'; ' + str(made) if made else ''}")
        return 0
    if not args.config:
        p.error("--config FILE.toml is required (or --from-csv)")
    out = Path(args.out) if args.out else Path("runs") / "gradflow" / Path(args.config).stem
    g_over = {k: v for k, v in (("every", args.every), ("per_class_every", args.per_class_every)) if v is not None}
    runs = run_gradflow(args.config, out, args.overrides, g_over, figures_dir=args.figures, only=args.only)
    made = [write_comparison(runs, d) for d in (out, args.figures) if d is not None]
    print(f"gradflow: wrote {out}" + "".join(f", {m}" for m in made if m))
    return 0
