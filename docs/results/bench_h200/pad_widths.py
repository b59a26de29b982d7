"""What each new batch width costs a training step: one process trains a random-init MiniLM-shaped
BERT on MACCROBAT (16 windows of <= 128, AdamW lr 2e-4, argmax dev scoring) for 2 epochs per entry of
PLAN, in order, and prints one JSON line per entry: the epochs' train / dev-scoring seconds, how
many distinct widths the batches had, and the mean step time of the steps that met a width for the
first time in this process against the steps that met it again.

    PYTHONPATH=. python3 docs/results/bench_h200/pad_widths.py cuda bf16:1,fp32:1 OUT [--tokenizer DIR]

PLAN entries are PRECISION:MULTIPLE, MULTIPLE being [train] pad_to_multiple_of (0 = the device's
choice). Used for docs/performance.md, "bf16 and CUDA"; outputs in pad_widths_*.txt, commands in COMMAND.
"""
import argparse
import json
import time
from pathlib import Path

import torch

import bertlab.train as T
from bertlab.callbacks import Callback

ap = argparse.ArgumentParser()
ap.add_argument("device")
ap.add_argument("plan")
ap.add_argument("out", type=Path)
ap.add_argument("--tokenizer", default="", help="a tokenizer folder (default: the builtin MiniLM's)")
ap.add_argument("--max-documents", type=int, default=0)
args = ap.parse_args()


def sync():
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


class StepTimer(Callback):
    """Each step's wall time (device synchronised) and its batch width; a step after dev scoring
    is not timed."""

    def __init__(self):
        self.rows, self.t, self.width = [], None, None

    def on_batch(self, step, model, batch, logits, loss):
        self.width = int(batch["input_ids"].shape[1])

    def after_optimizer_step(self, step, model, optimizer):
        sync()
        now = time.perf_counter()
        self.rows.append((step, self.width, None if self.t is None else now - self.t))
        self.t = now

    def on_epoch_end(self, epoch, record):
        self.t = None


model = {"preset": "minilm", **({"tokenizer": args.tokenizer} if args.tokenizer else {})}
for i, entry in enumerate(args.plan.split(",")):
    precision, multiple = entry.split(":")
    name = f"{i}_{precision}_{multiple}"
    cfg = {"data": {"name": "maccrobat", "max_length": 128, "stride": 32, "max_documents": args.max_documents},
           "model": model, "sampler": {"name": "atl", "batch_size": 16}, "optim": {"lr": 2e-4, "warmup_ratio": 0.1},
           "train": {"epochs": 2, "pad_to_multiple_of": int(multiple), "precision": precision,
                     "device": args.device, "progress": "off", "seed": 0},
           "eval": {"decode": ["argmax"]}}
    timer, t0 = StepTimer(), time.perf_counter()
    T.train(cfg, args.out / name, callbacks=[timer], resume=False)
    wall = time.perf_counter() - t0
    seen, first, again = set(), [], []
    for _, width, seconds in timer.rows:
        if seconds is not None:  # widths of untimed steps (each epoch's first) are not counted
            (again if width in seen else first).append(seconds)
            seen.add(width)
    timing = json.loads((args.out / name / "metrics.json").read_text())["timing"]
    print(json.dumps({
        "run": name, "wall_s": round(wall, 1),
        "epochs(train_s, eval_s)": [(round(t["train_seconds"], 2), round(t["eval_seconds"], 2)) for t in timing],
        "widths": len(seen), "first_width_steps": len(first),
        "first_mean_ms": round(1e3 * sum(first) / max(len(first), 1), 1),
        "repeat_mean_ms": round(1e3 * sum(again) / max(len(again), 1), 1), "first_sum_s": round(sum(first), 2),
        "steps_0_5_ms": [round(1e3 * r[2], 1) for r in timer.rows[1:6] if r[2] is not None]}), flush=True)
