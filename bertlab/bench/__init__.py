"""``bertlab bench`` / ``make bench``: bertlab against its reference, measured in the same run.

Each area is a module with ``run(quick: bool) -> list[dict]`` returning rows
``{"name", "unit", "bertlab", "reference", "ratio"}``; ratio > 1 always means bertlab is better
(faster, or less memory). Rows go to ``runs/bench/bench.json`` so they can be tracked over time.
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
}


def format_row(r: dict) -> str:
    def num(v):
        if v is None:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
    return f"| {r['name']} | {r['unit']} | {num(r.get('bertlab'))} | {num(r.get('reference'))} | {ratio} |"


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
    ap = argparse.ArgumentParser(prog="bertlab bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke check (numbers are noisy)")
    ap.add_argument("--only", default="", help=f"comma-separated areas out of {','.join(AREAS)}")
    ap.add_argument("--out", default="runs/bench/bench.json", help="where the rows are written")
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
            row = {"area": area, **row}
            rows.append(row)
            print(format_row(row), flush=True)
    write_json_atomic(Path(args.out), {"environment": env, "quick": args.quick, "rows": rows})
    print(f"\nwrote {args.out} (ratio > 1: bertlab better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
