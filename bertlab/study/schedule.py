"""Who trains what: a study's runs split into shards (``--shard I/N``) and workers given their
places (``--workers N``), both decided from the configs alone so that every machine agrees.

``shard_runs`` balances the parts by ``run_cost``, a rough relative cost read from a run's config;
``worker_places`` gives each worker a CUDA device (round-robin) and its share of the cores.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bertlab.constrained import base_decode
from bertlab.study.spec import Run, StudyError


def shard_runs(runs: list[Run], index: int, count: int) -> list[Run]:
    """Part ``index`` of ``count`` of ``runs``, in study order. Longest first, each run goes to
    the part with the least estimated cost so far (``run_cost``; ties to the lower part), so the
    parts are balanced and, since only the configs decide, the same on every machine. Runs of
    equal cost are dealt out round-robin in study order."""
    costs = [run_cost(r) for r in runs]
    load, part = [0.0] * count, {}
    for i in sorted(range(len(runs)), key=lambda i: (-costs[i], i)):
        part[i] = min(range(count), key=lambda k: (load[k], k))
        load[part[i]] += costs[i]
    return [r for i, r in enumerate(runs) if part[i] == index]


def run_cost(run: Run) -> float:
    """A rough relative cost of training ``run``, read from its config alone: epochs x encoder
    size (layers x hidden², relative to MiniLM's 6 x 384²) x 1.5 with a KNN decode (one more pass
    over the training split). The HMM, feature CRF and BiLSTMs count as 0.1 of MiniLM; the size
    of the corpus is not in it."""
    cfg = run.config
    epochs = int(cfg.get("train", {}).get("epochs", 3))
    knn = 1.5 if "knn" in map(base_decode, cfg.get("eval", {}).get("decode", [])) else 1.0
    return epochs * _encoder_size(cfg.get("model", {})) * knn


def _encoder_size(model: dict) -> float:
    if model.get("arch"):
        return 0.1
    dims: dict = {}
    try:
        if model.get("preset"):
            from bertlab.models import BERT_PRESETS, DISTILBERT_PRESETS
            dims = dict({**BERT_PRESETS, **DISTILBERT_PRESETS}.get(model["preset"], {}))
        else:
            from bertlab.checkpoint import builtin_path
            folder = (Path(os.path.expanduser(str(model["path"]))) if model.get("path")
                      else builtin_path(model.get("builtin", "minilm")))
            dims = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, ModuleNotFoundError):
        pass  # unknown size: count it as MiniLM
    dims.update(model.get("overrides", {}))
    layers = dims.get("num_hidden_layers", dims.get("n_layers"))
    hidden = dims.get("hidden_size", dims.get("dim"))
    return layers * hidden ** 2 / (6 * 384 ** 2) if layers and hidden else 1.0


def worker_places(n: int, threads: int = 0) -> list[dict]:
    """Where each of ``n`` workers runs: a CUDA device round-robin where CUDA is present
    (``gpu``: a CUDA_VISIBLE_DEVICES entry), and its equal share of the cores this process may
    use (``os.sched_getaffinity``: a Slurm allocation's, not the whole node's), with that many torch
    threads unless ``threads`` is given."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    gpus = _visible_gpus()
    places = []
    for i in range(n):
        share = cores[i * len(cores) // n:(i + 1) * len(cores) // n] or [cores[i % len(cores)]]
        gpu = gpus[i % len(gpus)] if gpus else None
        t = threads or len(share)
        places.append({"gpu": gpu, "cores": share, "threads": t,
                       "text": (f"CUDA device {gpu}, " if gpu is not None else "")
                               + f"cores {','.join(map(str, share))}, {t} torch thread(s)"})
    return places


def _visible_gpus() -> list[str]:
    import torch
    if not torch.cuda.is_available():
        return []
    listed = [s.strip() for s in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if s.strip()]
    return (listed or [str(i) for i in range(torch.cuda.device_count())])[:torch.cuda.device_count()]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise StudyError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/8 "
                         f"(--shard $SLURM_ARRAY_TASK_ID/8 in an `sbatch --array=0-7` job)")
    return int(m.group(1)), int(m.group(2))
