"""Model throughput: bertlab against transformers on the same weights, batch and thread count.

Every measurement runs in its own subprocess (``python -m bertlab.bench.models --worker SPEC``),
so peak RSS is that implementation's alone and one measurement cannot warm the other's caches.
Training step = forward, cross entropy, backward, grad-norm clipping, AdamW step: bertlab's as
its training loop does it (oneDNN GEMMs, 16-bit-mask dropout, foreach clipping, fused
AdamW), transformers' as its Trainer does it (``BertForTokenClassification(labels=...)``,
``clip_grad_norm_`` and ``torch.optim.AdamW`` defaults). Inference runs under
``torch.inference_mode`` for both. Tokens/s comes from the best (shortest) of the timed steps, the
figure least disturbed by other work on a shared machine; the mean is in bench.json as well.

Model FLOP utilisation (MFU) = achieved FLOP/s / the GEMM FLOP/s of the same precision (fp32 or
bf16) measured in the same run,
with 6N + 12·L·T·H FLOPs per trained token and 2N + 4·L·T·H per inferred token (N = weights
of the matrix multiplies, L layers, T sequence length, H hidden size). The "ratio ceiling" row is
peak / transformers' FLOP/s: the most any implementation could gain over transformers there, reached
only if every FLOP ran at the GEMM peak (a target above it is out of reach on that machine).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

NUM_LABELS = 83  # MACCROBAT: 41 entity types in IOB2, plus O

# name -> (model_type, HF config fields) for random-init shapes; "minilm" uses the real weights
SHAPES = {
    "tinybert": ("bert", dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200)),
    "distilbert": ("distilbert", dict()),
    "bert-base": ("bert", dict()),
}


def _random_checkpoint(name: str, out: Path, tokenizer_dir: Path) -> Path:
    """A random-init HF token-classification checkpoint of a familiar shape, made by transformers."""
    import transformers
    model_type, fields = SHAPES[name]
    torch.manual_seed(0)
    if model_type == "bert":
        cfg = transformers.BertConfig(num_labels=NUM_LABELS, **fields)
        model = transformers.BertForTokenClassification(cfg)
    else:
        cfg = transformers.DistilBertConfig(num_labels=NUM_LABELS, **fields)
        model = transformers.DistilBertForTokenClassification(cfg)
    path = out / name
    model.save_pretrained(path)
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / f).exists():
            shutil.copy(tokenizer_dir / f, path / f)
    return path


def _matmul_weights(model: torch.nn.Module) -> tuple[int, int, int]:
    """(N weights in matrix multiplies, layers, hidden size) for the MFU formula."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers")
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim")
    return n, layers, hidden


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    VmHWM, the high-water mark of this process's own address space (it starts afresh at exec),
    rather than ``getrusage().ru_maxrss``, which Linux keeps across execve and so can include the
    pages of a parent that started the worker with fork + exec.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # not Linux: the best available (may include the parent's RSS)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict) -> dict:
    """Measure one (impl, model, mode, precision) in this process; returns tokens/s and peak RSS."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    B, T, C = spec["batch"], spec["seq"], NUM_LABELS
    ids = torch.randint(1000, 29000, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    labels = torch.randint(0, C, (B, T))
    train = spec["mode"] == "train"
    if spec["impl"] == "transformers":
        from transformers import AutoModelForTokenClassification
        model = AutoModelForTokenClassification.from_pretrained(spec["path"], num_labels=C)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5) if train else None

        def forward_loss():
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss

        def infer():
            return model(input_ids=ids, attention_mask=mask).logits
    else:
        from bertlab.checkpoint import load_pretrained
        from bertlab.losses import cross_entropy
        model, _ = load_pretrained(spec["path"], num_labels=C)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True) if train else None

        def forward_loss():
            return cross_entropy(model(ids, mask).view(-1, C), labels.view(-1))

        def infer():
            return model(ids, mask)
    n_weights, layers, hidden = _matmul_weights(model)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")

    foreach = spec["impl"] == "bertlab"  # bertlab.train clips with foreach=True; the Trainer, per tensor

    def step():
        with autocast:
            if not train:
                return infer()
            loss = forward_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=foreach)
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train(train)
    ctx = torch.enable_grad() if train else torch.inference_mode()
    times = []
    with ctx:
        for _ in range(spec["warmup"]):
            step()
        for _ in range(spec["steps"]):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    tokens_per_s = B * T / min(times)
    flops_per_token = (6 * n_weights + 12 * layers * T * hidden) if train else (2 * n_weights + 4 * layers * T * hidden)
    return {"tokens_per_s": tokens_per_s, "mean_tokens_per_s": B * T * len(times) / sum(times),
            "gflops": tokens_per_s * flops_per_token / 1e9,
            "peak_rss_mb": peak_rss_mb()}


def _run_worker(spec: dict) -> dict | None:
    cmd = [sys.executable, "-m", "bertlab.bench.models", "--worker", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"  [bench worker failed: {spec['impl']} {spec['model']} {spec['mode']}] "
              f"{p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def _best(a: dict | None, b: dict | None) -> dict | None:
    """The round with more tokens/s (peak RSS: the larger of the two)."""
    if a is None or b is None:
        return a or b
    best = dict(max(a, b, key=lambda r: r["tokens_per_s"]))
    best["peak_rss_mb"] = max(a["peak_rss_mb"], b["peak_rss_mb"])
    return best


def gemm_peak_gflops(threads: int, quick: bool, dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM FLOP/s this machine gives torch here in ``dtype`` (fp32 or bf16; torch's matmul
    and oneDNN's linear, the best of both)."""
    torch.set_num_threads(threads)
    n = 512 if quick else 2048
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best = 0.0
    fns = [lambda: a @ b]
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        fns.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    for f in fns:
        f()
        t0 = time.perf_counter()
        reps = 3 if quick else 10
        for _ in range(reps):
            f()
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def _have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
        return True
    except ImportError:
        return False


def run(quick: bool = False) -> list[dict]:
    from bertlab.checkpoint import builtin_path
    threads = torch.get_num_threads()
    minilm = Path(builtin_path("minilm"))
    have_ref = _have_transformers()
    tmp = Path(tempfile.mkdtemp(prefix="bertlab-bench-"))
    try:
        paths = {"minilm": minilm}
        if have_ref and not quick:  # random-init shapes are made by transformers
            for name in SHAPES:
                paths[name] = _random_checkpoint(name, tmp, minilm)
        # quick: MiniLM only, a small batch, fp32; a smoke check of the machinery, not a measurement
        B, T = (4, 32) if quick else (16, 128)
        plan = [(m, "train", "fp32") for m in paths] + [(m, "infer", "fp32") for m in paths]
        if not quick:
            plan += [("minilm", "train", "bf16"), ("minilm", "infer", "bf16")]
        peaks = {"fp32": gemm_peak_gflops(threads, quick)}
        rows = [{"name": "fp32 GEMM peak (same run)", "unit": "GFLOP/s", "bertlab": peaks["fp32"],
                 "reference": None, "ratio": None}]
        if not quick:
            peaks["bf16"] = gemm_peak_gflops(threads, quick, torch.bfloat16)
            rows.append({"name": "bf16 GEMM peak (same run)", "unit": "GFLOP/s", "bertlab": peaks["bf16"],
                         "reference": None, "ratio": None})
        for model, mode, precision in plan:
            steps = {"train": 2 if quick else (3 if model == "bert-base" else 6), "infer": 3 if quick else 10}[mode]
            spec = dict(model=model, path=str(paths[model]), mode=mode, precision=precision, batch=B, seq=T,
                        threads=threads, warmup=2, steps=steps)
            # alternate the two implementations and keep each one's best round: on a shared machine
            # a burst of other work then hits one round, not one implementation
            ours = ref = None
            for _ in range(2 if model == "minilm" and not quick else 1):
                ours = _best(ours, _run_worker({**spec, "impl": "bertlab"}))
                ref = _best(ref, _run_worker({**spec, "impl": "transformers"})) if have_ref else None
            label = f"{model} {mode} {precision} B{B}xT{T}"
            get = lambda r, k: None if r is None else r[k]  # noqa: E731
            ratio = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
            rows.append({"name": label, "unit": "tokens/s", "bertlab": get(ours, "tokens_per_s"),
                         "reference": get(ref, "tokens_per_s"),
                         "ratio": ratio(get(ours, "tokens_per_s"), get(ref, "tokens_per_s"))})
            peak = peaks[precision]
            rows.append({"name": f"{label} MFU", "unit": "% of GEMM peak",
                         "bertlab": None if ours is None else 100 * ours["gflops"] / peak,
                         "reference": None if ref is None else 100 * ref["gflops"] / peak,
                         "ratio": ratio(get(ours, "gflops"), get(ref, "gflops"))})
            if ref is not None:
                # Amdahl: at best every FLOP runs at the GEMM peak, so no implementation can be more
                # than peak / (transformers' FLOP/s) times faster than transformers here
                rows.append({"name": f"{label} ratio ceiling (100% MFU vs transformers)", "unit": "x",
                             "bertlab": peak / ref["gflops"], "reference": None, "ratio": None})
            if precision == "fp32":
                rows.append({"name": f"{label} peak RSS", "unit": "MiB", "bertlab": get(ours, "peak_rss_mb"),
                             "reference": get(ref, "peak_rss_mb"),
                             "ratio": ratio(get(ref, "peak_rss_mb"), get(ours, "peak_rss_mb"))})
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        print(__doc__)
