"""bertlab on CUDA, each path against a reference; skipped where there is no GPU.

What is proven, and against what (fp32 checks run with TF32 off, so float32 means float32):

- models: BERT and DistilBERT token classifiers (tiny random transformers checkpoints, every
  parameter perturbed, ragged padding) give transformers' logits (eager attention, same device)
  to 1e-5 in bertlab's inference path and in its training path (SDPA; dropout set to 0), and the
  gradients of a cross entropy (bertlab.losses) to 1e-4 relative; under bf16 autocast bertlab
  and transformers agree with each other and with float32 to bf16 accuracy (3e-2 of the scale);
  in float64 the device equals the CPU to 1e-10 (forward and gradients): the same function.
- dropout: on the device it keeps E[x], also on the attention probabilities (6-sigma tests over
  many draws); its mask is exactly 0 or the scale of the path taken (1/(1-p) for torch's dropout;
  the CPU's 16-bit path quantises p); on CUDA it *is* torch's Philox dropout and SDPA dropout, bit
  for bit; and with the CPU-only fast paths on or off a training step on CUDA is bit-identical
  (they step aside).
- losses: CE, weighted CE and focal (gamma 1, 2) on the device equal CPU float64 (float64 to
  1e-12, float32 and bf16 autocast to 1e-5); fused BTL equals naive BTL on the device as on the
  CPU (tests/test_sampling.py's checks) and equals fused BTL on the CPU; the CRF's NLL, gradient
  and Viterbi paths equal the CPU's.
- training: a tiny BERT on 2 MACCROBAT documents trains on the device in fp32, bf16 and fp16
  (parameters and batches on the device, logits in the autocast dtype, fused AdamW, loss falls,
  dev scores computed, fp16's GradScaler state in checkpoint.pt); a run interrupted after a
  checkpoint and resumed ends where the uninterrupted run does: bit for bit under
  ``torch.use_deterministic_algorithms(True)``, and within 1e-4 without it (docs/training.md,
  "Determinism": on CUDA "results agree statistically, not bitwise").
  The runs use ``device = "cuda:0"``; ``"cuda"`` and ``"auto"`` are checked by their own test, so
  a fault in device selection does not hide the rest.
- inference: word logits, argmax, KNN (bertlab.inference, bertlab.knn) and ``predict_text``
  (bertlab.predict) of a trained model give the same predictions on the device as on the CPU.

Dry run on a machine without CUDA: ``BERTLAB_TEST_DEVICE=cpu pytest tests/test_cuda.py`` runs every
test body on the CPU (the CPU-vs-device comparisons are then trivial; tests of CUDA-only
behaviour skip).
"""
import contextlib
import copy
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertlab.callbacks import Callback
from bertlab.checkpoint import build_model, load_pretrained
from bertlab.config import load_config
from bertlab.datasets.prepare import load_splits
from bertlab.inference import decode_argmax, decode_knn, evaluate, fit_knn_on_train, word_logits
from bertlab.losses import BTL_MODES, LossConfig, btl_naive_loss, build_loss, cross_entropy
from bertlab.models import ops
from bertlab.models.bert import additive_padding_mask
from bertlab.models.crf import CRF
from bertlab.predict import load_model, predict_text
from bertlab.train import train
from bertlab.train.runtime import Dist, pick_device
from test_models import LABELS, hf_logits, hf_model, random_batch
from test_sampling import COUNTS as BTL_COUNTS
from test_sampling import LABELS as BTL_LABELS
from test_sampling import LOSS_CONFIGS as BTL_LOSSES
from test_sampling import assert_fused_equals_naive, assert_same_gradients, example_batch, fused, loss_and_grads, tiny_model
from test_train import strip_timing

# deterministic cuBLAS needs a fixed workspace, chosen before the first cuBLAS call of the process
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

DEVICE = torch.device(os.environ.get("BERTLAB_TEST_DEVICE", "cuda"))
TRAIN_DEVICE = "cuda:0" if DEVICE.type == "cuda" else str(DEVICE)
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")
cuda_only = pytest.mark.skipif(DEVICE.type != "cuda", reason="a property of the CUDA path (dry run on the CPU)")

TOL = 1e-5          # fp32 logits, absolute (they are O(1))
GRAD_TOL = 1e-4     # fp32 gradients, relative to each parameter's largest
BF16_TOL = 3e-2     # bf16 autocast, relative to the float32 logits' (gradients') scale
F64_TOL = 1e-10     # float64, device against CPU
MODEL_CASES = ["bert-2l", "bert-3l", "tinybert-small", "distilbert", "distilbert-sinusoidal"]
NO_DROPOUT = {"bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0),
              "distilbert": dict(dropout=0.0, attention_dropout=0.0)}


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def deterministic_algorithms():
    old = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])


def to_device(*tensors):
    return [None if t is None else t.to(DEVICE) for t in tensors]


def max_rel(a: torch.Tensor, b: torch.Tensor, scale=None) -> float:
    """max |a - b| / scale (default: max |b|), in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / (b.abs().max() if scale is None else scale)).item()


def labels_for(mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Random gold label ids at real tokens, -100 at padding."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(LABELS), mask.shape, generator=g)
    return torch.where(mask.cpu().bool(), labels, torch.full_like(labels, -100)).to(mask.device)


def ce_grads(model, forward, labels, names) -> dict:
    """{name: gradient} of the mean cross entropy of ``forward()``'s logits; ``names`` maps the
    model's parameter names to common ones (only trainable parameters)."""
    model.zero_grad(set_to_none=True)
    cross_entropy(forward(), labels).backward()  # bertlab's: float32 under autocast, float64 for float64
    return {names(n): p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def hf_names(ref):
    """bertlab's parameter name -> the transformers model's (``encoder.`` is ``bert.``/``distilbert.``)."""
    prefix = ref.base_model_prefix + "."
    return lambda n: prefix + n[len("encoder."):] if n.startswith("encoder.") else n


def assert_grads_close(got: dict, want: dict, tol: float, what: str) -> None:
    """Each gradient relative to its parameter's largest, floored at 1e-3 of the model's largest
    (the attention key bias's true gradient is 0: both sides hold rounding noise there)."""
    assert got.keys() == want.keys() and len(got) > 10
    top = max(g.abs().max().item() for g in want.values())
    for name, w in want.items():
        err = max_rel(got[name], w, max(w.abs().max().item(), 1e-3 * top))
        assert err <= tol, f"{what}: gradient of {name} differs by {err:.2e} (relative)"


def flat(grads: dict) -> torch.Tensor:
    """All gradients as one float64 CPU vector."""
    return torch.cat([g.flatten().double().cpu() for g in grads.values()])


# ---- the models against transformers ----------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """case -> (transformers model on the device, eval mode; bertlab's model of the same folder on
    the CPU), the folder's config with every dropout at 0, so bertlab's train mode is deterministic."""
    out = {}
    for i, case in enumerate(MODEL_CASES):
        ref = hf_model(case, seed=i)
        for field, value in NO_DROPOUT[ref.config.model_type].items():
            setattr(ref.config, field, value)
        folder = tmp_path_factory.mktemp(case)
        ref.save_pretrained(folder)
        ours, _ = load_pretrained(folder)
        out[case] = (ref.to(DEVICE), ours)
    return out


@pytest.mark.parametrize("case", MODEL_CASES)
def test_fp32_logits_and_gradients_match_transformers(checkpoints, case):
    ref, cpu_model = checkpoints[case]
    ours = copy.deepcopy(cpu_model).to(DEVICE)
    for seed in range(3):
        ids, mask, types = to_device(*random_batch(ref.config.vocab_size, seed, with_types=seed != 1))
        with torch.no_grad():
            want = hf_logits(ref, ids, mask, types)
            for mode in ("eval", "train"):  # inference path; training path (SDPA, dropout 0)
                got = ours.train(mode == "train")(ids, mask, types)
                assert got.device.type == DEVICE.type and got.dtype == torch.float32
                err = (got - want).abs().max().item()
                assert err <= TOL, f"{case} seed {seed} {mode}: max |logits - transformers| = {err:.2e}"
    labels = labels_for(mask, seed=7)
    ours.train()
    got = ce_grads(ours, lambda: ours(ids, mask, types), labels, hf_names(ref))
    want = ce_grads(ref, lambda: hf_logits(ref, ids, mask, types), labels, lambda n: n)
    assert_grads_close(got, {n: want[n] for n in got}, GRAD_TOL, case)


@pytest.mark.parametrize("case", ["bert-2l", "tinybert-small", "distilbert"])
def test_bf16_autocast_matches_transformers_and_fp32(checkpoints, case):
    """Logits (inference) and CE gradients (training path) under bf16 autocast: bertlab and
    transformers within BF16_TOL of each other and of float32, relative to the float32 scale;
    a ragged batch (additive mask) and an unpadded one (no mask: flash attention on CUDA)."""
    ref, cpu_model = checkpoints[case]
    ours = copy.deepcopy(cpu_model).to(DEVICE)
    ids, mask, types = to_device(*random_batch(ref.config.vocab_size, 20))
    full = torch.ones_like(mask)
    autocast = lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16)  # noqa: E731
    for m in (mask, full):
        with torch.no_grad():
            fp32 = hf_logits(ref, ids, m, types)
            with autocast():
                theirs, mine = hf_logits(ref, ids, m, types), ours.eval()(ids, m, types)
        assert mine.dtype == torch.bfloat16
        scale = fp32.abs().max().item()
        errors = {"ours-transformers": max_rel(mine, theirs, scale), "ours-fp32": max_rel(mine, fp32, scale),
                  "transformers-fp32": max_rel(theirs, fp32, scale)}
        assert 0 < errors["ours-fp32"] and max(errors.values()) <= BF16_TOL, errors
    labels, names = labels_for(mask, seed=8), hf_names(ref)
    ours.train()
    fp32 = ce_grads(ours, lambda: ours(ids, mask, types), labels, names)
    with autocast():
        mine = ce_grads(ours, lambda: ours(ids, mask, types), labels, names)
        theirs = ce_grads(ref, lambda: hf_logits(ref, ids, mask, types), labels, lambda n: n)
    names_ = list(fp32)
    fp32, mine, theirs = (flat({n: g[n] for n in names_}) for g in (fp32, mine, theirs))
    norm = lambda a, b: ((a - b).norm() / fp32.norm()).item()  # noqa: E731
    errors = {"ours-transformers": norm(mine, theirs), "ours-fp32": norm(mine, fp32),
              "transformers-fp32": norm(theirs, fp32)}
    assert 0 < errors["ours-fp32"] and max(errors.values()) <= BF16_TOL, errors


@pytest.mark.parametrize("case", ["bert-3l", "distilbert-sinusoidal"])
def test_float64_on_the_device_equals_float64_on_the_cpu(checkpoints, case):
    _, cpu_model = checkpoints[case]
    cpu = copy.deepcopy(cpu_model).double()
    dev = copy.deepcopy(cpu).to(DEVICE)
    ids, mask, types = random_batch(cpu.config.vocab_size, 30)
    labels = labels_for(mask, seed=9)
    with torch.no_grad():
        want, got = cpu.eval()(ids, mask, types), dev.eval()(*to_device(ids, mask, types))
    assert got.dtype == torch.float64 and max_rel(got, want) <= F64_TOL
    names = lambda n: n  # noqa: E731
    want = ce_grads(cpu.train(), lambda: cpu(ids, mask, types), labels, names)
    got = ce_grads(dev.train(), lambda: dev(*to_device(ids, mask, types)), labels.to(DEVICE), names)
    assert_grads_close(got, want, F64_TOL, case)


# ---- dropout ----------------------------------------------------------------------------------

def dropout_scale(p: float) -> float:
    """The scale of kept values on DEVICE: torch's 1/(1-p) on CUDA, the 16-bit path's 1/(1-k/65536) on the CPU."""
    return 1 / (1 - (p if DEVICE.type == "cuda" else ops.effective_dropout_p(p)))


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_mask_is_0_or_the_scale_and_keeps_the_mean(p):
    torch.manual_seed(0)
    layer = ops.Dropout(p).train()
    ones = torch.ones(1 << 18, device=DEVICE, requires_grad=True)
    y = layer(ones)
    y.sum().backward()
    assert torch.equal(ones.grad, y.detach())  # backward multiplies by the same mask and scale
    kept = y[y != 0].detach()
    scale = dropout_scale(p)
    assert ((kept - scale).abs() <= 1e-6 * scale).all(), (kept.min().item(), kept.max().item(), scale)
    q = 1 - kept.numel() / ones.numel()
    assert abs(q - p) <= 6 * (p * (1 - p) / ones.numel()) ** 0.5, q
    # E[dropout(x)] = x: the mean of many draws, per element, within 6 standard errors
    x = torch.rand(8, 1024, device=DEVICE) + 0.5
    draws = 400
    mean = sum(layer(x) for _ in range(draws)) / draws
    z = (mean - x) / (x.abs() * (p / (1 - p) / draws) ** 0.5)
    assert z.abs().max().item() < 6 and abs(z.mean().item()) < 6 / z.numel() ** 0.5
    assert not torch.equal(layer(x), layer(x))  # a fresh mask each call


def test_attention_dropout_keeps_the_mean():
    """E over draws of attention with dropout on the probabilities = attention without it."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 12, 8, device=DEVICE) for _ in range(3))  # [heads, T, d]
    bias = additive_padding_mask(torch.tensor([[1] * 5 + [0] * 7], device=DEVICE), torch.float32)[0]
    want = ops.attention(q, k, v, bias)
    copies = 50  # each call draws 50 independent masks for the same inputs: [copies, heads, T, d]
    q, k, v = (t.expand(copies, *t.shape) for t in (q, k, v))
    draws = torch.cat([ops.attention(q, k, v, bias, dropout_p=0.2) for _ in range(40)])
    stderr = draws.std(0) / len(draws) ** 0.5
    assert ((draws.mean(0) - want).abs() <= 6 * stderr + 1e-6).all()
    assert not torch.equal(draws[0], draws[1])


@cuda_only
def test_cuda_dropout_is_torchs_philox_dropout():
    """Same CUDA seed, same bits as torch's own dropout and SDPA dropout; no CPU random draws."""
    cpu_rng = torch.get_rng_state()
    x = torch.randn(64, 256, device=DEVICE)
    torch.cuda.manual_seed(5)
    ours = ops.dropout(x, 0.1)
    torch.cuda.manual_seed(5)
    assert torch.equal(ours, F.dropout(x, 0.1))
    q, k, v = (torch.randn(2, 4, 16, 8, device=DEVICE) for _ in range(3))
    bias = additive_padding_mask(torch.tensor([[1] * 16, [1] * 9 + [0] * 7], device=DEVICE), torch.float32)
    torch.cuda.manual_seed(7)
    ours = ops.attention(q, k, v, bias, dropout_p=0.2)
    torch.cuda.manual_seed(7)
    assert torch.equal(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.2))
    assert not torch.allclose(ours, ops.attention(q, k, v, bias))
    assert torch.equal(torch.get_rng_state(), cpu_rng)


@cuda_only
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["minilm", "distilbert"])
def test_cpu_fast_paths_step_aside_on_cuda(arch, precision):
    """A training step (dropout 0.1 everywhere) and an inference pass are bit-identical with the
    fast kernels (oneDNN GEMM, 16-bit dropout, inference fusions) on and off."""
    small = (dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64) if arch == "minilm"
             else dict(n_layers=2, dim=32, n_heads=2, hidden_dim=64))
    torch.manual_seed(0)
    model = build_model(arch, LABELS, vocab_size=500, max_position_embeddings=64, **small).to(DEVICE)
    ids, mask, types = to_device(*random_batch(500, 40))
    labels = labels_for(mask, seed=10)

    def step(fast: bool):
        with ops.fast_kernels(fast), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            torch.cuda.manual_seed(11)
            grads = ce_grads(model.train(), lambda: model(ids, mask, types), labels, lambda n: n)
            with torch.no_grad():
                return model.eval()(ids, mask, types), grads

    with deterministic_algorithms():  # SDPA's backward may otherwise differ in the last bits from run to run
        (infer_on, grads_on), (infer_off, grads_off) = step(True), step(False)
    assert torch.equal(infer_on, infer_off)
    assert all(torch.equal(grads_on[n], grads_off[n]) for n in grads_on)


# ---- losses, BTL, CRF --------------------------------------------------------------------------

LOSSES = {"ce": LossConfig("ce"), "weighted_ce": LossConfig("weighted_ce", weight_scheme="inverse"),
          "focal-1": LossConfig("focal", gamma=1.0, alpha="weights"), "focal-2": LossConfig("focal", gamma=2.0)}
LOSS_COUNTS = torch.tensor([300, 20, 25, 8, 6, 3, 40])


def loss_case():
    """logits [64, 7] (scale 3; some rows with a +-40 gap, where float32 p_t rounds to 1) and targets with -100."""
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(64, 7, generator=g, dtype=torch.float64)
    logits[:8] += 40 * F.one_hot(torch.randint(0, 7, (8,), generator=g), 7)
    targets = torch.randint(0, 7, (64,), generator=g)
    targets[:4] = logits[:4].argmax(-1)
    targets[torch.rand(64, generator=g) < 0.2] = -100
    return logits, targets


def loss_and_grad(loss_fn, logits, targets, autocast=False):
    z = logits.detach().clone().requires_grad_(True)
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=autocast):
        value = loss_fn(z, targets)
    value.backward()
    return value.detach(), z.grad


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "sum"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_on_the_device_equal_cpu_float64(name, reduction):
    loss_fn = dataclasses.replace(build_loss(LOSSES[name], LOSS_COUNTS), reduction=reduction)
    logits, targets = loss_case()
    want, want_grad = loss_and_grad(loss_fn, logits, targets)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        got, grad = loss_and_grad(loss_fn, logits.to(DEVICE, dtype), targets.to(DEVICE))
        assert got.dtype == dtype and torch.isfinite(grad).all()
        assert max_rel(got, want) <= tol and max_rel(grad, want_grad) <= tol, (dtype, name)
    # under bf16 autocast the loss is still computed in float32 (from the bf16-rounded logits)
    bf16 = logits.to(DEVICE, torch.bfloat16)
    want, want_grad = loss_and_grad(loss_fn, bf16.double().cpu(), targets)
    got, grad = loss_and_grad(loss_fn, bf16, targets.to(DEVICE), autocast=True)
    assert got.dtype == torch.float32 and max_rel(got, want) <= 1e-5
    assert max_rel(grad, want_grad) <= 1e-2  # the gradient arrives in bf16


@pytest.mark.parametrize("cfg", BTL_LOSSES, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", BTL_MODES)
def test_fused_btl_equals_naive_btl_on_the_device(cfg, mode):
    """tests/test_sampling.py's fused == naive check (float64, no dropout) on the device, and the
    device's fused BTL equal to the CPU's."""
    cpu = tiny_model().eval()
    dev = copy.deepcopy(cpu).to(DEVICE)
    cpu_batch = example_batch()
    batch = {k: v.to(DEVICE) for k, v in cpu_batch.items()}
    loss_fn = build_loss(cfg, BTL_COUNTS)
    for combine in ("mean", "sum"):
        options = dict(mode=mode, classes="present", combine=combine)
        fused_loss, fused_grads = assert_fused_equals_naive(dev, batch, loss_fn, options)
        cpu_loss, _, cpu_grads = loss_and_grads(cpu, lambda: fused(cpu, cpu_batch, loss_fn, **options))
        assert max_rel(fused_loss, cpu_loss) <= F64_TOL
        assert_same_gradients(cpu_grads, {n: g.cpu() for n, g in fused_grads.items()}, rel=F64_TOL)


def test_fused_btl_float32_on_the_device():
    dev = tiny_model(dtype=torch.float32).eval().to(DEVICE)
    batch = {k: v.to(DEVICE) for k, v in example_batch().items()}
    loss_fn = build_loss(LossConfig("focal", gamma=0.5, alpha="weights"), BTL_COUNTS)
    options = dict(mode="binary", classes="all", combine="mean")
    naive_loss, _, naive_grads = loss_and_grads(dev, lambda: btl_naive_loss(dev, batch, BTL_LABELS, loss_fn, **options))
    fused_loss, _, fused_grads = loss_and_grads(dev, lambda: fused(dev, batch, loss_fn, **options))
    torch.testing.assert_close(fused_loss, naive_loss, rtol=1e-6, atol=0)
    assert_same_gradients(naive_grads, fused_grads, rel=1e-5)


def test_crf_nll_gradient_and_viterbi_on_the_device_equal_cpu():
    labels = ["O", "B-A", "I-A", "B-B", "I-B"]
    torch.manual_seed(2)
    cpu = CRF(len(labels), labels).double()
    with torch.no_grad():
        for p in cpu.parameters():
            p.normal_()
    dev = copy.deepcopy(cpu).to(DEVICE)
    emissions = 2 * torch.randn(4, 9, len(labels), dtype=torch.float64)
    mask = torch.arange(9)[None] < torch.tensor([9, 6, 1, 4])[:, None]
    tags = torch.randint(0, len(labels), (4, 9))
    tags[1, 0] = 2  # a fragment starting at I-A
    out = {}
    for name, crf, device in (("cpu", cpu, "cpu"), ("dev", dev, DEVICE)):
        e = emissions.to(device).detach().requires_grad_(True)  # a leaf on either device
        crf.zero_grad()
        nll = crf.nll(e, tags.to(device), mask.to(device), reduction="token_mean")
        nll.backward()
        out[name] = (nll.detach(), e.grad, crf.transitions.grad, crf.decode(e.detach(), mask.to(device)))
    (nll, e_grad, t_grad, paths), (nll_dev, e_grad_dev, t_grad_dev, paths_dev) = out["cpu"], out["dev"]
    assert max_rel(nll_dev, nll) <= F64_TOL and max_rel(e_grad_dev, e_grad) <= F64_TOL
    assert max_rel(t_grad_dev, t_grad) <= F64_TOL and paths_dev == paths
    assert [len(p) for p in paths] == [9, 6, 1, 4]


# ---- training end to end -----------------------------------------------------------------------

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64)
DATA = {"name": "maccrobat", "max_documents": 2, "max_length": 48, "stride": 8}
AUTOCAST_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> tuple[Path, int]:
    """(folder with a vocab.txt of every word piece of the 2 MACCROBAT documents, its size): a
    tokenizer without the MiniLM package, whose vocabulary is too big for a tiny model anyway."""
    from tokenizers import normalizers, pre_tokenizers
    normalize, split = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    splits = load_splits(load_config({"data": DATA}).data)
    pieces = {piece for corpus in (splits.train, splits.dev, splits.test) for s in corpus.sentences
              for w in s.tokens for piece, _ in split.pre_tokenize_str(normalize.normalize_str(w))}
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(pieces)]
    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder, len(tokens)


def train_config(vocab, precision: str, **train_fields) -> dict:
    """A 2-layer, 32-wide BERT on 2 MACCROBAT documents: 35 windows, 9 steps an epoch, 4 epochs."""
    folder, size = vocab
    return {"data": DATA,
            "model": {"preset": "minilm", "tokenizer": str(folder), "overrides": {**TINY_BERT, "vocab_size": size}},
            "sampler": {"batch_size": 4},
            "optim": {"lr": 1e-2, "warmup_ratio": 0.1},
            "train": {"device": TRAIN_DEVICE, "precision": precision, "epochs": 4, "seed": 0, "log_every": 1,
                      "checkpoint_every": 4, "progress": "off", **train_fields},
            "eval": {"decode": ["argmax", "knn"]}}


class Probe(Callback):
    """What the loop shows its callbacks: where parameters and batches are, the logits' and loss's dtypes."""

    def __init__(self):
        self.seen = set()

    def on_batch(self, step, model, batch, logits, loss):
        self.seen |= {("parameters", p.device.type) for p in model.parameters()}
        self.seen |= {("batch", t.device.type) for t in batch.values()}
        self.seen |= {("logits", logits.dtype), ("loss", loss.dtype)}

    def after_optimizer_step(self, step, model, optimizer):
        self.seen.add(("fused optimizer", optimizer.defaults.get("fused")))


class Interrupted(Exception):
    pass


class InterruptAfterCheckpoint(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_checkpoint(self, step):
        if step == self.step:
            raise Interrupted(step)


@dataclasses.dataclass
class Run:
    out: Path
    metrics: dict
    probe: Probe


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vocab):
    """precision -> its Run of ``train_config`` (trained once per module, default settings)."""
    runs = {}

    def get(precision: str) -> Run:
        if precision not in runs:
            out, probe = tmp_path_factory.mktemp(f"run-{precision}"), Probe()
            metrics = train(load_config(train_config(vocab, precision)), out, callbacks=[probe], resume=False,
                            log=quiet)
            runs[precision] = Run(out, metrics, probe)
        return runs[precision]
    return get


def checkpoint_of(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)


def interrupted_and_resumed(vocab, out: Path, precision: str, at_step: int, **train_fields) -> dict:
    cfg = load_config(train_config(vocab, precision, **train_fields))
    with pytest.raises(Interrupted):
        train(cfg, out, callbacks=[InterruptAfterCheckpoint(at_step)], resume=False, log=quiet)
    assert json.loads(checkpoint_of(out)["progress"])["step"] == at_step
    return train(cfg, out, resume=True, log=quiet)


@cuda_only
def test_device_cuda_and_auto_select_the_gpu():
    """``[train] device = "cuda"`` (and "auto" on a GPU machine) as a single process."""
    for name in ("cuda:0", "cuda", "auto"):
        assert pick_device(name, Dist()).type == "cuda", name


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_runs_on_the_device(trained, precision):
    run = trained(precision)
    assert run.probe.seen == {("parameters", DEVICE.type), ("batch", DEVICE.type), ("fused optimizer", True),
                              ("logits", AUTOCAST_DTYPE[precision]), ("loss", torch.float32)}
    m = run.metrics
    assert m["device"] == TRAIN_DEVICE and m["precision"] == precision and m["steps"] == 36
    losses = [h["train_loss"] for h in m["history"]]
    assert len(losses) == 4 and losses == sorted(losses, reverse=True) and losses[-1] < 0.75 * losses[0], losses
    assert all(0 <= h["dev_f1"] <= 1 and np.isfinite(h["dev_loss"]) for h in m["history"])
    assert {"argmax", "knn"} <= m["test"].keys() and 0 <= m["test"]["knn"]["micro_f1"] <= 1
    ckpt = checkpoint_of(run.out)
    assert ("scaler" in ckpt) == (precision == "fp16")
    if precision == "fp16":
        assert 0 < ckpt["scaler"]["scale"] < float("inf") and 0 <= ckpt["scaler"]["_growth_tracker"] <= m["steps"]


def test_resumed_run_ends_as_the_uninterrupted_run(trained, vocab, tmp_path):
    """Default settings (as docs/training.md describes CUDA: last bits may differ): stopped after
    the checkpoint of step 12 (mid epoch 1) and resumed, the run ends within 1e-4 of the
    uninterrupted one: every parameter except the attention key biases (their exact gradient is 0,
    so AdamW turns rounding noise there into lr-sized steps; they change no output), and the
    per-epoch train and dev losses (relative)."""
    whole = trained("fp32")
    resumed = interrupted_and_resumed(vocab, tmp_path / "resumed", "fp32", at_step=12)
    a, b = checkpoint_of(whole.out)["model"], checkpoint_of(tmp_path / "resumed")["model"]
    assert a.keys() == b.keys()
    for name in a:
        if not name.endswith("attention.self.key.bias"):
            assert (a[name] - b[name]).abs().max().item() <= 1e-4, name
    for h, r in zip(whole.metrics["history"], resumed["history"], strict=True):
        for key in ("train_loss", "dev_loss"):
            assert abs(h[key] - r[key]) <= 1e-4 * h[key], (key, h, r)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_resume_is_bit_identical_with_deterministic_algorithms(vocab, tmp_path, precision):
    """With ``torch.use_deterministic_algorithms(True)`` (and CUBLAS_WORKSPACE_CONFIG) a run
    stopped after step 12 of 18 and resumed equals the uninterrupted run bit for bit:
    parameters, optimizer state, metrics.json (but its timing fields)."""
    with deterministic_algorithms():
        whole = train(load_config(train_config(vocab, precision, epochs=2)), tmp_path / "whole",
                      resume=False, log=quiet)
        resumed = interrupted_and_resumed(vocab, tmp_path / "resumed", precision, at_step=12, epochs=2)
    assert strip_timing(resumed) == strip_timing(whole)
    a, b = checkpoint_of(tmp_path / "whole"), checkpoint_of(tmp_path / "resumed")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "parameters differ"
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(s[k], t[k]) for k in s), "optimizer state differs"
    assert a.get("scaler") == b.get("scaler")


# ---- inference ---------------------------------------------------------------------------------

def test_inference_knn_and_predict_on_the_device_equal_cpu(trained, vocab):
    """The fp32 run's best model, in float64 on the CPU and on the device: the same word logits
    (float32) and the same argmax, KNN and ``predict_text`` predictions; in float32 on the
    device, logits within 1e-5 of the CPU's and the same argmax wherever the CPU's top two
    labels are more than 1e-4 apart."""
    model, tokenizer = load_model(trained("fp32").out / "best")  # as `bertlab predict` loads it: CPU, fp32
    splits = load_splits(load_config(train_config(vocab, "fp32")).data)
    texts = [" ".join(s.tokens) for s in splits.test.sentences[:12]]
    window = dict(max_length=DATA["max_length"], stride=DATA["stride"])
    results = {}
    for where, m in (("cpu", copy.deepcopy(model).double()), ("device", copy.deepcopy(model).double().to(DEVICE))):
        logits = word_logits(m, tokenizer, splits.dev.sentences, **window)
        knn = fit_knn_on_train(m, tokenizer, splits.train.sentences, k=17, **window)
        results[where] = {"logits": logits, "argmax": decode_argmax(logits, m.labels),
                          "knn": decode_knn(knn, logits, m.labels),
                          "entities": predict_text(m, tokenizer, texts, knn=knn, **window),
                          "f1": evaluate(m, tokenizer, splits.dev, "knn", knn, **window)["micro_f1"]}
    cpu, dev = results["cpu"], results["device"]
    assert all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(cpu["logits"], dev["logits"], strict=True))
    assert dev["argmax"] == cpu["argmax"] and dev["knn"] == cpu["knn"]
    assert dev["entities"] == cpu["entities"] and dev["f1"] == cpu["f1"]
    assert len({t for s in cpu["knn"] for t in s}) > 1  # not a constant prediction
    fp32_cpu = np.concatenate(word_logits(model, tokenizer, splits.dev.sentences, **window))
    fp32_dev = np.concatenate(word_logits(copy.deepcopy(model).to(DEVICE), tokenizer, splits.dev.sentences, **window))
    assert np.abs(fp32_dev - fp32_cpu).max() <= TOL
    top2 = np.sort(fp32_cpu, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert (fp32_dev.argmax(1) == fp32_cpu.argmax(1))[clear].all()


def test_predict_and_evaluate_commands_tag_on_the_device(trained, tmp_path):
    """``bertlab predict --device`` and ``bertlab evaluate --device`` put the model on the device and
    tag as on the CPU (fp32; a note of a few dozen words has no near-tie to flip)."""
    from bertlab.evaluate import evaluate_model
    from bertlab.predict import main as predict_main
    best = trained("fp32").out / "best"
    model, _ = load_model(best, str(DEVICE))
    assert {p.device.type for p in model.parameters()} == {DEVICE.type}
    note = tmp_path / "note.txt"
    note.write_text("A 45-year-old man presented with fever, cough and chest pain for three days.\n"
                    "He was given 500 mg of amoxicillin twice daily.\n")
    tagged = {}
    for device in ("cpu", str(DEVICE)):
        out = tmp_path / f"{device.replace(':', '_')}.jsonl"
        assert predict_main(["--model", str(best), "--input", str(note), "--device", device, "--output", str(out)]) == 0
        tagged[device] = out.read_text()
    assert tagged["cpu"] == tagged[str(DEVICE)] and tagged["cpu"].strip()
    scores = {device: evaluate_model(best, "maccrobat", "dev", max_documents=1, device=device)["micro_f1"]
              for device in ("cpu", str(DEVICE))}
    assert scores["cpu"] == pytest.approx(scores[str(DEVICE)], abs=1e-3)
