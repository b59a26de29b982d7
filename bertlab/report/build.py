"""``build_report(study_dir)``: compute a study's report once, render it, and write it — the one place
the report's files are written (``report.json``, ``report.md``, ``figures/*.png``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from bertlab.files import write_text
from bertlab.report import figures
from bertlab.report.compute import compute_report
from bertlab.report.markdown import render


def build_report(study_dir: str | os.PathLike) -> Path:
    """Write ``study_dir/report.md`` (and ``report.json``, ``figures/``); returns the report path."""
    study_dir = Path(study_dir)
    report = compute_report(study_dir)
    plotting = bool(report.opts.get("figures", True)) and figures.available()
    text = render(report, plotting)
    if plotting and report.sections:
        import matplotlib.pyplot as plt
        fig_dir = study_dir / "figures"
        for name, fig in figures.report_figures(report).items():
            fig_dir.mkdir(exist_ok=True)
            fig.savefig(fig_dir / name, **figures.SAVE)
            plt.close(fig)
    write_text(study_dir / "report.json", json.dumps(report.json, indent=2, default=_nan_json) + "\n")
    path = study_dir / "report.md"
    write_text(path, text)
    return path


def _nan_json(o):
    """numpy scalars as Python floats in report.json; anything else JSON cannot hold as its text."""
    return float(o) if hasattr(o, "item") else str(o)
