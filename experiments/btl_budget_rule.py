"""The decision rule of ``btl_budget`` (experiments/btl_budget.toml), applied to its run folders.

Per arm (sampler, lr) and decode: the dev macro F1 at the run's selected epoch (its best over the
epochs it trained: every run selects on dev macro F1, ties to the later epoch) against the same
sampler's fold-0 run of ``btl_cv`` (12 epochs at lr 2e-4). More than ``margin`` (0.02) above it:
the 12-epoch budget under-trains that arm.

    python experiments/btl_budget_rule.py docs/results/btl_budget docs/results/btl_cv-12epochs
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

DECODES = ("argmax", "knn", "calibrated")


def selected(run: Path, decode: str) -> tuple[float, int, int]:
    """``(dev macro F1, epoch, epochs trained)`` of a run's selected epoch for ``decode``."""
    m = json.loads((run / "metrics.json").read_text())
    scores = [(h["dev"][decode]["f1_macro"], h["epoch"]) for h in m["history"] if decode in (h.get("dev") or {})]
    value, epoch = max(scores)
    return value, epoch, len(m["history"])


def decide(budget: Path, cv: Path, margin: float = 0.02) -> list[dict]:
    """One row per finished fold-0 run of ``budget`` and decode: both selected scores, their
    difference and whether it exceeds ``margin``."""
    rows = []
    for run in sorted(Path(budget).glob("sampler=*__fold=0__seed=0")):
        if not (run / "metrics.json").exists():
            continue
        sampler = run.name.split("__")[0]
        for decode in DECODES:
            long, epoch, epochs = selected(run, decode)
            short, short_epoch, short_epochs = selected(Path(cv) / f"{sampler}__fold=0__seed=0", decode)
            rows.append({"run": run.name, "decode": decode, "long": long, "epoch": epoch, "epochs": epochs,
                         "short": short, "short_epoch": short_epoch, "short_epochs": short_epochs,
                         "difference": long - short, "under_trained": long - short > margin})
    return rows


if __name__ == "__main__":
    for r in decide(Path(sys.argv[1]), Path(sys.argv[2])):
        print(f"{r['run']:40s} {r['decode']:10s} {r['long']:.4f} (epoch {r['epoch']} of {r['epochs']}) vs "
              f"btl_cv {r['short']:.4f} (epoch {r['short_epoch']} of {r['short_epochs']}): "
              f"{r['difference']:+.4f} {'UNDER-TRAINED at 12 epochs' if r['under_trained'] else 'within 0.02'}")
