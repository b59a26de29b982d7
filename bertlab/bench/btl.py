"""BTL step time: fused BTL against an ATL step (goal <= 1.1x), naive BTL for contrast.

One training step (forward, loss, backward, AdamW) of MiniLM on a real MACCROBAT batch
(41 entity types -> 83 labels), weighted CE (w = 1 - N_c/N, as in the BTL paper), all in one
process with interleaved repetitions; the best time of each is kept.
"""
from __future__ import annotations

import time

import torch

from bertlab.checkpoint import builtin_path, load_pretrained
from bertlab.datasets import entity_types, label_list, load
from bertlab.losses import LossConfig, build_loss, label_counts
from bertlab.sampling import btl_fused_loss, btl_naive_loss, collate


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


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    labels = label_list(entity_types("maccrobat"))
    model, tok = load_pretrained(builtin_path("minilm"), labels=labels)
    model.train()
    batch = real_batch(tok, labels, batch_size=4 if quick else 16, max_length=64 if quick else 128)
    loss_fn = build_loss(LossConfig(name="weighted_ce"), label_counts(batch["labels"].flatten(), len(labels)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    present = int(torch.unique(batch["labels"][batch["labels"] > 0]).numel())

    def forward(b):
        return model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))

    def step(kind):
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
    best = {k: float("inf") for k in kinds}
    for k in kinds:  # warm-up
        step(k)
    for _ in range(1 if quick else 3):
        for k in kinds:
            n = 1 if k == "naive" else 3
            t0 = time.perf_counter()
            for _ in range(n):
                step(k)
            best[k] = min(best[k], (time.perf_counter() - t0) / n)
    shape = f"B{batch['input_ids'].shape[0]}xT{batch['input_ids'].shape[1]}, {present} labels present"
    rows = [{"name": f"BTL fused step vs ATL step ({shape})", "unit": "s/step",
             "bertlab": best["fused"], "reference": best["atl"], "ratio": best["atl"] / best["fused"]}]
    if "naive" in best:
        rows.append({"name": f"BTL fused step vs naive BTL step ({shape})", "unit": "s/step",
                     "bertlab": best["fused"], "reference": best["naive"], "ratio": best["naive"] / best["fused"]})
    return rows
