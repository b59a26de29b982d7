"""What each fast path buys: MiniLM (real weights) with every path on, against the same with one
path switched off (``bertlab.models.ops.fast_kernels``), in one process, interleaved, best of N.

A training step is forward, cross entropy, backward, clipping and a fused AdamW step, as the loop
does it; inference is a forward under ``torch.inference_mode`` in eval mode. Rows read "path on vs
path off": ratio = time with the path off / time with it on, so > 1 means the path helps. The
rule (issue #14): a path that buys under ~3% end to end is removed, so the model reads like the math.

CPU-only: the paths are CPU kernels (on CUDA they switch themselves off), so ``--device cuda``
refuses this area.
"""
from __future__ import annotations

import time

import torch

from bertlab.checkpoint import builtin_path, load_pretrained
from bertlab.models import ops

NUM_LABELS = 83


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    labels = ["O"] + [f"{p}-T{i}" for i in range(41) for p in "BI"]
    model, _ = load_pretrained(builtin_path("minilm"), labels=labels)
    B, T = (4, 32) if quick else (16, 128)
    ids = torch.randint(1000, 30000, (B, T))
    mask = torch.ones_like(ids)
    targets = torch.randint(0, NUM_LABELS, (B, T))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)

    def train_step():
        model.train()
        logits = model(ids, mask)
        torch.nn.functional.cross_entropy(logits.reshape(-1, NUM_LABELS), targets.reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer_step():
        model.eval()
        with torch.inference_mode():
            model(ids, mask)

    configs = {"all on": {}, **{f"{p} off": {p: False} for p in ops.PATHS}}
    kinds = {"train": train_step, "inference": infer_step}
    best = {(c, k): float("inf") for c in configs for k in kinds}
    reps, rounds = (1, 1) if quick else (3, 5)
    for c, paths in configs.items():  # warm-up
        with ops.fast_kernels(True, **paths):
            for fn in kinds.values():
                fn()
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits every configuration alike
        for c, paths in configs.items():
            with ops.fast_kernels(True, **paths):
                for k, fn in kinds.items():
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        fn()
                    best[(c, k)] = min(best[(c, k)], (time.perf_counter() - t0) / reps)
    rows = []
    for c in configs:
        if c == "all on":
            continue
        for k in kinds:
            on, off = B * T / best[("all on", k)], B * T / best[(c, k)]
            rows.append({"name": f"{k} B{B}xT{T}: all paths on vs {c}", "unit": "tokens/s",
                         "bertlab": on, "reference": off, "ratio": on / off})
    return rows
