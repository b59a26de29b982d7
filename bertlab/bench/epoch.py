"""A real-data training epoch: bertlab's loop against a transformers loop with dynamic padding.

Both train all-MiniLM-L6-v2 for token classification for one epoch on MACCROBAT's train split
(quick: 3 documents), on exactly the same subword windows (bertlab's tokenizer; max 128), batch 16,
AdamW, linear warmup/decay, clipping at 1.0, fp32, same thread count. The transformers loop is
what `Trainer` + `DataCollatorForTokenClassification` do: shuffled batches padded to their
longest row. bertlab's is ``bertlab.train.train`` as users run it (length-bucketed batches, its
fast kernels); its time is the epoch's training time from metrics.json (evaluation excluded).

CPU-only: ``bertlab bench --device cuda`` refuses this area (``bertlab.bench.CUDA_AREAS``).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from bertlab.checkpoint import builtin_path
from bertlab.datasets import entity_types, label_list, load
from bertlab.tokenization import Tokenizer


def transformers_epoch(windows: list, labels: list[str], pad_id: int, batch_size: int, seed: int = 0) -> float:
    """Seconds for one epoch of the reference loop over ``windows``."""
    from transformers import AutoModelForTokenClassification, get_linear_schedule_with_warmup
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(str(builtin_path("minilm")), num_labels=len(labels))
    model.train()
    order = torch.randperm(len(windows)).tolist()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * len(batches)), len(batches))
    t0 = time.perf_counter()
    for idx in batches:
        rows = [windows[i] for i in idx]
        T = max(len(w.input_ids) for w in rows)  # DataCollatorForTokenClassification: pad to the longest
        ids = torch.full((len(rows), T), pad_id)
        lab = torch.full((len(rows), T), -100)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for r, w in enumerate(rows):
            n = len(w.input_ids)
            ids[r, :n] = torch.tensor(w.input_ids)
            lab[r, :n] = torch.tensor(w.labels)
            mask[r, :n] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    return time.perf_counter() - t0


def bertlab_epoch(max_documents: int, batch_size: int, out_dir: Path) -> float:
    from bertlab.config import load_config
    from bertlab.train import train
    cfg = load_config({
        "data": {"name": "maccrobat", "max_documents": max_documents, "max_length": 128},
        "model": {"builtin": "minilm"},
        "sampler": {"name": "atl", "batch_size": batch_size},
        "optim": {"lr": 5e-5},
        "train": {"epochs": 1, "seed": 0, "progress": "off", "precision": "fp32"},
    })
    train(cfg, out_dir, resume=False)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return float(metrics["timing"][0]["train_seconds"])


def run(quick: bool = False) -> list[dict]:
    max_documents = 3 if quick else 0
    batch_size = 16
    labels = label_list(entity_types("maccrobat"))
    tok = Tokenizer.from_pretrained(builtin_path("minilm"))
    corpus = load("maccrobat", split="train")
    if max_documents:
        corpus = corpus.subset(max_documents)
    index = {l: i for i, l in enumerate(labels)}
    windows = [w for s in corpus.sentences
               for w in tok.encode_words(s.tokens, [index[t] for t in s.tags], max_length=128, stride=32)]
    with tempfile.TemporaryDirectory(prefix="bertlab-bench-epoch-") as tmp:
        ours = bertlab_epoch(max_documents, batch_size, Path(tmp) / "run")
    try:
        ref = transformers_epoch(windows, labels, tok.pad_token_id, batch_size)
    except ImportError:
        ref = None
    docs = len(corpus.documents)
    return [{"name": f"MACCROBAT train epoch ({docs} docs, {len(windows)} windows, B{batch_size})",
             "unit": "s/epoch", "bertlab": ours, "reference": ref,
             "ratio": None if ref is None else ref / ours}]
