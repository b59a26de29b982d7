"""``bertlab bench`` / ``make bench``: bertlab against its reference, measured in the same run.

Each area is a module with ``run(quick: bool) -> list[dict]`` returning rows
``{"name", "unit", "bertlab", "reference", "ratio"}``; ratio > 1 always means bertlab is better
(faster, or less memory). Rows go to ``runs/bench/bench.json`` so they can be tracked over time.
An efficiency figure above 100% of the GEMM peak measured in the same run is impossible: such a row
is marked ``"invalid"`` (``(invalid)`` in the table, and a warning after it), never passed off as a
measurement.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

import torch

from bertlab.files import write_json

AREAS = {
    "models": "bertlab.bench.models",   # train/inference tokens/s, peak RSS, MFU vs transformers
    "btl": "bertlab.bench.btl",         # BTL fused vs ATL vs naive BTL step time
    "epoch": "bertlab.bench.epoch",     # a real-data epoch on MACCROBAT vs a transformers loop
    "knn": "bertlab.bench.knn",         # KNN on logits vs scikit-learn brute force
    "paths": "bertlab.bench.paths",     # each fast path switched off vs all on (what each buys)
}


EFFICIENCY_UNITS = ("% of GEMM peak",)  # a share of a peak measured in the same run: above 100 is impossible


def flag_impossible(row: dict) -> dict:
    """The row with ``"invalid"``: ``{"bertlab" | "reference": reason}`` for efficiency figures above
    100% of the measured peak. Such a figure means the peak was under-measured (other work on the
    machine while the GEMM ran, a cold start) or the FLOP count is wrong; either way it is no
    measurement, and neither is the ratio built on it."""
    invalid = {side: f"{row[side]:.0f}% of the measured GEMM peak is impossible: the peak was "
                     f"under-measured (a busy machine?) or the FLOP count is wrong"
               for side in ("bertlab", "reference")
               if row.get("unit") in EFFICIENCY_UNITS and row.get(side) is not None and row[side] > 100}
    return {**row, "invalid": invalid} if invalid else row


def format_row(r: dict) -> str:
    """One markdown table row; an invalid figure (``flag_impossible``) is marked ``(invalid)``."""
    invalid = r.get("invalid", {})

    def num(side):
        v = r.get(side)
        if v is None:
            return "-"
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return f"{text} (invalid)" if side in invalid else text
    ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x" + (" (invalid)" if invalid else "")
    return f"| {r['name']} | {r['unit']} | {num('bertlab')} | {num('reference')} | {ratio} |"


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data, indent=1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bertlab bench``; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="bertlab bench",
        description="Speed and memory of bertlab against its reference (transformers, scikit-learn), both "
                    "measured in the same run; ratio > 1 means bertlab is better (docs/performance.md).")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke check (numbers are noisy)")
    ap.add_argument("--only", default="", metavar="AREA[,AREA...]",
                    help=f"comma-separated areas out of {','.join(AREAS)} (default: all)")
    ap.add_argument("--output", default="runs/bench/bench.json", metavar="FILE",
                    help="JSON file the rows are written to (default: runs/bench/bench.json)")
    ap.add_argument("--out", dest="output", help=argparse.SUPPRESS)  # its old name
    args = ap.parse_args(argv)
    areas = [a for a in args.only.split(",") if a] or list(AREAS)
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        ap.error(f"unknown area(s) {unknown}; choose from {list(AREAS)}")
    env = environment()
    print(f"bertlab bench on {env['cpu']}, {env['threads']} threads, torch {env['torch']}"
          + (f", {env['cuda']}" if env["cuda"] else ""))
    print("| benchmark | unit | bertlab | reference | ratio |\n|---|---|---:|---:|---:|")
    rows = []
    for area in areas:
        for row in importlib.import_module(AREAS[area]).run(quick=args.quick):
            row = flag_impossible({"area": area, **row})
            rows.append(row)
            print(format_row(row), flush=True)
    write_json_atomic(Path(args.output), {"environment": env, "quick": args.quick, "rows": rows})
    for row in rows:
        for side, reason in row.get("invalid", {}).items():
            print(f"\nwarning: invalid measurement in {row['name']!r}, {side}: {reason}")
    print(f"\nwrote {args.output} (ratio > 1: bertlab better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
