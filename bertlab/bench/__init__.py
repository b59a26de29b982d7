"""``bertlab bench`` / ``make bench``: bertlab against its reference, measured in the same run.

Each area is a module with ``run(quick: bool) -> list[dict]`` (those in ``CUDA_AREAS`` also take
``device="cpu" | "cuda"``) returning rows
``{"name", "unit", "bertlab", "reference", "ratio"}``; ratio > 1 always means bertlab is better
(faster, or less memory). Rows go to ``runs/bench/bench.json`` so they can be tracked over time.
An efficiency figure above 100% of the GEMM peak measured in the same run is impossible: such a row
is marked ``"invalid"`` (``(invalid)`` in the table, and a warning after it), never passed off as a
measurement.

``--device cuda`` runs the areas that have a GPU path (``CUDA_AREAS``: models, btl; the default
``--only`` there) on ``cuda:0``, bertlab and its reference alike, in the same run: each such area's
``run(quick, device="cuda")``; its module docstring says what runs, at which sizes and precisions
(fp32 rows with TF32 off; bf16 autocast), and how time (``torch.cuda.synchronize()`` around timed
steps, after warm-up), peak GPU memory (``torch.cuda.max_memory_allocated``) and the GEMM peak
(on the GPU, same run) are measured. epoch, knn, paths and predict measure CPU code paths and refuse
``--device cuda`` with a one-line error, as does a machine where ``torch.cuda.is_available()`` is
False. bench.json's environment then names the GPU, the CUDA version and the TF32 flags.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

import torch

from bertlab.environment import environment as machine_environment
from bertlab.files import write_json

AREAS = {
    "models": "bertlab.bench.models",   # train/inference tokens/s, peak RSS, MFU vs transformers
    "btl": "bertlab.bench.btl",         # BTL fused vs ATL vs naive BTL step time
    "epoch": "bertlab.bench.epoch",     # a real-data epoch on MACCROBAT vs a transformers loop
    "knn": "bertlab.bench.knn",         # KNN on logits vs scikit-learn brute force
    "paths": "bertlab.bench.paths",     # each fast path switched off vs all on (what each buys)
    "predict": "bertlab.bench.predict",  # predict peak memory on a long document, streamed vs whole
}
DEVICES = ("cpu", "cuda")
CUDA_AREAS = ("models", "btl")  # the areas with a GPU path; epoch, knn, paths, predict measure CPU code paths


def device_error(device: str, areas: list[str], cuda_available: bool) -> str | None:
    """Why ``areas`` cannot run on ``device`` (one line), or None when they can."""
    if device == "cpu":
        return None
    cpu_only = [a for a in areas if a not in CUDA_AREAS]
    if cpu_only:
        return (f"--device {device}: area(s) {','.join(cpu_only)} are CPU-only; with --device {device} "
                f"choose from {','.join(CUDA_AREAS)} (the default)")
    if not cuda_available:
        return (f"--device {device}: torch.cuda.is_available() is False (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'none'}); run on a machine with an NVIDIA GPU and a CUDA build "
                f"of torch, or use --device cpu")
    return None


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


def environment(device: str = "cpu") -> dict:
    """The machine and software the rows were measured on: ``bertlab.environment.environment()``
    (versions, CPU, torch threads, GPU, commit; what every run folder records) plus the time and
    ``device``; with ``device`` "cuda" also the GPU's memory and compute capability, the CUDA
    version and the TF32 flags in force at the start (the fp32 rows then run with TF32 off,
    whatever they were)."""
    env = {**machine_environment(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device}
    if device == "cuda":
        from bertlab.bench.models import tf32_flags
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   compute_capability=f"{props.major}.{props.minor}", cuda_version=torch.version.cuda,
                   transformers=_version("transformers"), tf32=tf32_flags())
    return env


def _version(package: str) -> str | None:
    try:
        return importlib.import_module(package).__version__
    except ImportError:
        return None


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
                    help=f"comma-separated areas out of {','.join(AREAS)} (default: all; with --device cuda: "
                         f"{','.join(CUDA_AREAS)})")
    ap.add_argument("--device", choices=DEVICES, default="cpu",
                    help=f"where the models run: cpu (default) or cuda, a GPU, for the areas {','.join(CUDA_AREAS)} "
                         f"(the default --only there): fp32 with TF32 off and bf16 autocast, both sides on the GPU")
    ap.add_argument("--output", default="runs/bench/bench.json", metavar="FILE",
                    help="JSON file the rows are written to (default: runs/bench/bench.json)")
    ap.add_argument("--out", dest="output", help=argparse.SUPPRESS)  # its old name
    args = ap.parse_args(argv)
    areas = [a for a in args.only.split(",") if a] or list(AREAS if args.device == "cpu" else CUDA_AREAS)
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        ap.error(f"unknown area(s) {unknown}; choose from {list(AREAS)}")
    error = device_error(args.device, areas, torch.cuda.is_available())
    if error:
        print(f"bertlab bench: error: {error}", file=sys.stderr)
        return 2
    env = environment(args.device)
    print(f"bertlab bench on {env['cpu']}, {env['torch_threads']} threads, torch {env['torch']}"
          + (f", {env['gpu']}" if env["gpu"] else "")
          + (f"; device cuda (CUDA {env['cuda_version']})" if args.device == "cuda" else ""))
    print("| benchmark | unit | bertlab | reference | ratio |\n|---|---|---:|---:|---:|")
    rows, failed = [], []
    for area in areas:
        module = importlib.import_module(AREAS[area])
        try:
            if args.device == "cpu":
                area_rows = module.run(quick=args.quick)
            else:
                # a GPU run is hard to repeat: each row is saved as it comes (an area with ``iter_rows``
                # yields them as measured), and one area's failure keeps the other areas' rows
                area_rows = (module.iter_rows(args.quick, args.device) if hasattr(module, "iter_rows")
                             else module.run(quick=args.quick, device=args.device))
            for row in area_rows:
                row = flag_impossible({"area": area, **row})
                rows.append(row)
                print(format_row(row), flush=True)
                if args.device != "cpu":
                    write_json_atomic(Path(args.output), {"environment": env, "quick": args.quick, "rows": rows,
                                                          "incomplete": True})
        except Exception as e:
            if args.device == "cpu":
                raise
            traceback.print_exc()
            print(f"bertlab bench: area {area} failed on {args.device}: {type(e).__name__}: "
                  f"{(str(e).strip().splitlines() or [''])[0]}", file=sys.stderr)
            failed.append(area)
    write_json_atomic(Path(args.output), {"environment": env, "quick": args.quick, "rows": rows,
                                          **({"failed_areas": failed} if failed else {})})
    for row in rows:
        for side, reason in row.get("invalid", {}).items():
            print(f"\nwarning: invalid measurement in {row['name']!r}, {side}: {reason}")
    print(f"\nwrote {args.output} (ratio > 1: bertlab better)")
    if failed:
        print(f"bertlab bench: error: area(s) {','.join(failed)} failed (traceback above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
