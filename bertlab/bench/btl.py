"""BTL step time: fused BTL against an ATL step (goal <= 1.1x), naive BTL for contrast.

One training step (forward, loss, backward, AdamW) of MiniLM on a real MACCROBAT batch
(41 entity types -> 83 labels), weighted CE (w = 1 - N_c/N, as in the BTL paper), all in one
process with interleaved repetitions; the best time of each is kept.

On the CPU (default): fp32, B16xT128 (quick: B4xT64). With ``--device cuda``: the same three steps
on ``cuda:0`` at B32xT128 (quick: B4xT64), in fp32 (IEEE: TF32 off, torch's default) and in bf16
autocast (``torch.autocast("cuda", dtype=torch.bfloat16)`` around forward and loss), the class
weights moved to the GPU once; 3 untimed warm-up steps of each kind, then each timed repetition
between ``torch.cuda.synchronize()`` calls. Where the all-MiniLM-L6-v2 checkpoint package is absent
(``bertlab.bench.models.minilm_checkpoint``), the model is a random-init MiniLM of the same shape and
the subword windows come from a WordPiece vocabulary trained on MACCROBAT's train split, so the
batch's length and labels differ a little from the real tokenizer's (the row names say so and
give the shape); step times do not depend on the weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from bertlab.bench.models import autocast, minilm_checkpoint, sync, tf32
from bertlab.checkpoint import load_pretrained
from bertlab.datasets import entity_types, label_list, load
from bertlab.batching import collate
from bertlab.losses import LossConfig, btl_fused_loss, btl_naive_loss, build_loss, label_counts


def real_batch(tokenizer, labels: list[str], batch_size: int, max_length: int) -> dict:
    """The first ``batch_size`` windows of MACCROBAT train that hold entities, padded."""
    corpus = load("maccrobat", split="train")
    index = {l: i for i, l in enumerate(labels)}
    windows = []
    for sent in corpus.sentences:
        if any(t != "O" for t in sent.tags):
            windows += tokenizer.encode_words(sent.tokens, [index[t] for t in sent.tags], max_length=max_length,
                                              stride=max_length // 4)
        if len(windows) >= batch_size:
            break
    return collate(windows[:batch_size], pad_token_id=tokenizer.pad_token_id)


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    cuda = device == "cuda"
    torch.manual_seed(0)
    labels = label_list(entity_types("maccrobat"))
    with tempfile.TemporaryDirectory(prefix="bertlab-bench-btl-") as tmp:
        path, random_init = minilm_checkpoint(Path(tmp))
        model, tok = load_pretrained(path, labels=labels)
    model.to(device)
    model.train()
    batch = real_batch(tok, labels, batch_size=4 if quick else (32 if cuda else 16), max_length=64 if quick else 128)
    loss_fn = build_loss(LossConfig(name="weighted_ce"), label_counts(batch["labels"].flatten(), len(labels)))
    present = int(torch.unique(batch["labels"][batch["labels"] > 0]).numel())
    if cuda:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_fn = dataclasses.replace(loss_fn, alpha=loss_fn.alpha.to(device))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def forward(b):
        return model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))

    def step(kind, precision):
        with autocast(device, precision):
            if kind == "atl":
                loss = loss_fn(forward(batch), batch["labels"])
            elif kind == "fused":
                loss, _ = btl_fused_loss(forward(batch), batch["labels"], labels, loss_fn)
            else:
                loss, _ = btl_naive_loss(model, batch, labels, loss_fn)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    kinds = ["atl", "fused"] + ([] if quick else ["naive"])
    shape = f"B{batch['input_ids'].shape[0]}xT{batch['input_ids'].shape[1]}, {present} labels present"
    rows = []
    for precision in ("fp32", "bf16") if cuda else ("fp32",):
        best = {k: float("inf") for k in kinds}
        with tf32(False) if cuda else contextlib.nullcontext():
            for k in kinds:  # warm-up
                for _ in range(3 if cuda else 1):
                    step(k, precision)
            for _ in range(1 if quick else 3):
                for k in kinds:
                    n = 1 if k == "naive" else 3
                    sync(device)
                    t0 = time.perf_counter()
                    for _ in range(n):
                        step(k, precision)
                    sync(device)
                    best[k] = min(best[k], (time.perf_counter() - t0) / n)
        where = (f"cuda {precision}{' (TF32 off)' if precision == 'fp32' else ''}, " if cuda else "") + shape \
            + (", random-init MiniLM, corpus-trained WordPiece" if random_init else "")
        rows.append({"name": f"BTL fused step vs ATL step ({where})", "unit": "s/step",
                     "bertlab": best["fused"], "reference": best["atl"], "ratio": best["atl"] / best["fused"]})
        if "naive" in best:
            rows.append({"name": f"BTL fused step vs naive BTL step ({where})", "unit": "s/step",
                         "bertlab": best["fused"], "reference": best["naive"], "ratio": best["naive"] / best["fused"]})
    return rows
