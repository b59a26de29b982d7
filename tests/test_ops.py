"""The fast CPU paths (bertlab.models.ops) compute the same function as the plain PyTorch ops,
and the switches really switch.

Deterministic paths (GEMMs, inference fusions) are compared with the plain path within
1e-5 relative to the largest value; the random ones (dropout) are compared with the plain formula
evaluated on the same mask, and their masks are checked against their stated distribution.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bertlab.models import ops
from bertlab.models.bert import BertConfig, BertModel


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)
    assert err < tol, f"max relative error {err:.2e} >= {tol:.0e}"


@pytest.fixture(autouse=True)
def restore_switches():
    old = dict(ops._state)
    yield
    ops._state.update(old)


# ---------------------------------------------------------------------------------------------
# switches


def test_switches_all_and_by_name():
    ops.use_fast_kernels(False)
    assert not ops.fast_kernels_enabled() and not any(ops.fast_kernels_enabled(p) for p in ops.PATHS)
    ops.use_fast_kernels(True, dropout=False)
    assert ops.fast_kernels_enabled("gemm") and not ops.fast_kernels_enabled("dropout")
    with ops.fast_kernels(False):
        assert not ops.fast_kernels_enabled()
        with ops.fast_kernels(gemm=True):
            assert ops.fast_kernels_enabled("gemm") and not ops.fast_kernels_enabled("dropout")
        assert not ops.fast_kernels_enabled("gemm")
    assert ops.fast_kernels_enabled("gemm") and not ops.fast_kernels_enabled("dropout")  # restored
    with pytest.raises(ValueError, match="unknown fast path"):
        ops.use_fast_kernels(True, flash=True)


@pytest.mark.skipif(not ops._ONEDNN, reason="no oneDNN linear in this torch build")
def test_switch_really_switches_the_gemm():
    x = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(3, 8, requires_grad=True)

    def graph(y):  # names of the autograd nodes behind y
        names, todo = set(), [y.grad_fn]
        while todo:
            f = todo.pop()
            if f is not None:
                names.add(type(f).__name__)
                todo += [g for g, _ in f.next_functions]
        return names
    assert "_OneDNNLinearBackward" in graph(ops.linear(x, w))
    with ops.fast_kernels(False):
        assert "_OneDNNLinearBackward" not in graph(ops.linear(x, w))
    with ops.fast_kernels(True, gemm=False):
        assert "_OneDNNLinearBackward" not in graph(ops.linear(x, w))


def test_switch_really_switches_dropout():
    x = torch.ones(64, 64, requires_grad=True)
    assert "Bernoulli" not in str(ops.dropout(x, 0.5).grad_fn)
    with ops.fast_kernels(False):
        torch.manual_seed(0)
        plain = ops.dropout(x, 0.5)
        torch.manual_seed(0)
        assert torch.equal(plain, F.dropout(x, 0.5))


# ---------------------------------------------------------------------------------------------
# GEMMs


@pytest.mark.parametrize("shape,out,bias", [((7, 13), 5, True), ((2, 9, 48), 33, True), ((3, 4, 64), 128, False),
                                            ((1, 1), 1, True)])
def test_linear_matches_plain_forward_and_gradients(shape, out, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(out, shape[-1], requires_grad=True)
    b = torch.randn(out, requires_grad=True) if bias else None
    g = torch.randn(*shape[:-1], out)
    grads = []
    for fast in (True, False):
        with ops.fast_kernels(fast):
            y = ops.linear(x, w, b)
        (gx, gw, *gb) = torch.autograd.grad(y, [x, w] + ([b] if bias else []), g)
        grads.append((y, gx, gw, *gb))
    for a, ref in zip(*grads):
        close(a, ref)


def test_linear_module_keeps_nn_linear_state_dict():
    lin = ops.Linear(4, 3)
    assert isinstance(lin, torch.nn.Linear) and set(lin.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 4)
    close(lin(x), F.linear(x, lin.weight, lin.bias))


def test_inference_fusions_match_the_composed_ops():
    torch.manual_seed(0)
    x, w, b, r = torch.randn(2, 16, 64), torch.randn(96, 64) / 8, torch.randn(96), torch.randn(2, 16, 96)
    with torch.inference_mode():
        close(ops.linear_gelu(x, w, b), F.gelu(F.linear(x, w, b)))
        close(ops.linear_add(x, w, b, r), F.linear(x, w, b) + r)
    w.requires_grad_(True)  # with a gradient wanted they fall back to the composed ops (and backprop)
    ops.linear_gelu(x, w, b).sum().backward()
    assert w.grad is not None


# ---------------------------------------------------------------------------------------------
# dropout


def test_keep_mask_distribution_and_exact_scale():
    torch.manual_seed(0)
    p = 0.1
    mask, scale = ops.keep_mask((1000, 1000), p)
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) <= {0.0, 1.0}
    p_eff = ops.effective_dropout_p(p)
    assert p_eff == round(p * 65536) / 65536 and abs(p_eff - p) < 1 / 65536
    assert scale == 1 / (1 - p_eff)
    n = mask.numel()
    sd = math.sqrt(p_eff * (1 - p_eff) / n)
    assert abs((1 - mask.mean().item()) - p_eff) < 5 * sd
    # each of the four 16-bit lanes of a 64-bit word is uniform (plain int64 random_() is not)
    lanes = mask.view(-1, 4)
    for lane in range(4):
        assert abs(1 - lanes[:, lane].mean().item() - p_eff) < 5 * sd * 2


def test_keep_mask_is_reproducible_under_a_seed():
    torch.manual_seed(3)
    a, _ = ops.keep_mask((17, 5), 0.3)
    torch.manual_seed(3)
    b, _ = ops.keep_mask((17, 5), 0.3)
    assert torch.equal(a, b)


def test_dropout_is_unbiased_and_its_gradient_is_the_mask():
    torch.manual_seed(0)
    x = torch.full((500, 400), 2.0, requires_grad=True)
    y = ops.dropout(x, 0.25)
    kept = y != 0
    scale = 1 / (1 - ops.effective_dropout_p(0.25))
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0 * scale))
    assert abs(y.mean().item() - 2.0) < 0.02  # E[dropout(x)] = x
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * scale)
    assert ops.dropout(x, 0.25, training=False) is x and ops.dropout(x, 0.0) is x


@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_with_dropout_matches_the_formula_on_the_same_mask(with_bias):
    torch.manual_seed(0)
    B, H, T, d, p = 2, 3, 7, 8, 0.2
    q, k, v = (torch.randn(B, H, T, d, requires_grad=True) for _ in range(3))
    bias = None
    if with_bias:
        keep = torch.ones(B, T)
        keep[1, 5:] = 0
        bias = ((1 - keep) * torch.finfo(torch.float32).min)[:, None, None, :]
    g = torch.randn(B, H, T, d)
    torch.manual_seed(7)
    y = ops.attention(q, k, v, bias, dropout_p=p)
    got = torch.autograd.grad(y, (q, k, v), g)
    torch.manual_seed(7)
    mask, scale = ops.keep_mask((B, H, T, T), p)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d) + (0 if bias is None else bias)
    ref = (scores.softmax(-1) * mask * scale) @ v
    want = torch.autograd.grad(ref, (q, k, v), g)
    close(y, ref)
    for a, b in zip(got, want):
        close(a, b)


def test_keep_mask_in_bf16_is_the_float32_mask_and_the_edges_hold():
    torch.manual_seed(5)
    a, sa = ops.keep_mask((33, 7), 0.1)
    torch.manual_seed(5)
    b, sb = ops.keep_mask((33, 7), 0.1, dtype=torch.bfloat16)
    assert b.dtype == torch.bfloat16 and torch.equal(a, b.float()) and sa == sb
    ones, s1 = ops.keep_mask((10,), 1e-7)  # k = 0: nothing dropped
    zeros, s0 = ops.keep_mask((10,), 1 - 1e-7)  # k = 65536: everything dropped
    assert torch.equal(ones, torch.ones(10)) and s1 == 1.0
    assert torch.equal(zeros, torch.zeros(10)) and s0 == math.inf


def test_bf16_dropout_rounds_once_like_the_float32_formula():
    torch.manual_seed(0)
    x = torch.randn(300, 70).bfloat16().requires_grad_(True)
    torch.manual_seed(9)
    y = ops.dropout(x, 0.1)
    torch.manual_seed(9)
    mask, scale = ops.keep_mask(x.shape, 0.1)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, (x.detach().float() * (mask * scale)).bfloat16())
    g = torch.randn(300, 70).bfloat16()
    y.backward(g)
    assert torch.equal(x.grad, (g.float() * mask * scale).bfloat16())


@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_with_dropout_under_bf16_autocast_stays_bf16_and_matches_float64(with_bias):
    """bf16 tolerance: 2% of the largest value, against the formula in float64 on the same bf16
    inputs and mask (autocast's own path, float32 softmax plus casts, is as far from it)."""
    torch.manual_seed(0)
    B, H, T, d, p = 2, 3, 16, 8, 0.2
    q, k, v = (torch.randn(B, H, T, d).bfloat16().requires_grad_(True) for _ in range(3))
    bias = None
    if with_bias:
        keep = torch.ones(B, T)
        keep[1, 11:] = 0
        bias = ((1 - keep) * torch.finfo(torch.bfloat16).min)[:, None, None, :].bfloat16()
    g = torch.randn(B, H, T, d).bfloat16()
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.attention(q, k, v, bias, dropout_p=p)
    assert y.dtype == torch.bfloat16
    got = torch.autograd.grad(y, (q, k, v), g)
    torch.manual_seed(7)
    mask, scale = ops.keep_mask((B, H, T, T), p)
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    scores = q64 @ k64.transpose(-1, -2) / math.sqrt(d) + (0 if bias is None else bias.double().clamp(min=-1e30))
    ref = (scores.softmax(-1) * mask.double() * scale) @ v64
    want = torch.autograd.grad(ref, (q64, k64, v64), g.double())

    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()
    assert rel(y, ref) < 0.02
    for a, b in zip(got, want):
        assert rel(a, b) < 0.02


def within_one_bf16_ulp(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype; every element equal to ``want`` or one of its bf16 neighbours (the two differ only
    in the order of float32 sums before the one rounding), and almost all exactly equal."""
    assert got.dtype == want.dtype
    g, w = got.detach().float(), want.detach().float()
    ulp = torch.where(w == 0, torch.full_like(w, 2.0 ** -133), w.abs() * 2.0 ** -7)  # >= one bf16 step
    assert bool(((g - w).abs() <= ulp).all()), (g - w).abs().max()
    assert (g != w).float().mean().item() < 0.02


@pytest.mark.parametrize("case", ["linear", "attention_dropout"])
def test_bf16_gemms_in_float32_on_cpus_without_bf16_equal_autocasts_own_kernels(monkeypatch, case):
    """On CPUs whose oneDNN has no bf16 GEMM, bf16 autocast's GEMMs (forward and backward) run as
    float32 GEMMs on bf16-rounded operands (linear; attention when training with dropout): forced here (``_ONEDNN_BF16`` False) and compared with
    torch's own bf16 kernels (the ``bf16_gemm`` path off), outputs and every gradient."""
    torch.manual_seed(0)
    if case == "linear":
        x, w, b = torch.randn(6, 40, 48), torch.randn(72, 48) / 7, torch.randn(72)
        inputs, run = (x, w, b), (lambda x, w, b: ops.linear(x, w, b))
    else:
        q, k, v = (torch.randn(2, 3, 24, 16).bfloat16() for _ in range(3))  # as a bf16 linear gives them
        keep = torch.ones(2, 24)
        keep[1, 17:] = 0
        bias = ((1 - keep) * torch.finfo(torch.float32).min)[:, None, None, :]
        p = 0.2  # the explicit path: without dropout attention is SDPA's own bf16 kernel
        inputs, run = (q, k, v), (lambda q, k, v: ops.attention(q, k, v, bias, dropout_p=p))
    results = {}
    for emulate in (True, False):
        monkeypatch.setattr(ops, "_ONEDNN_BF16", False)
        ops.use_fast_kernels(True, bf16_gemm=emulate)
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        torch.manual_seed(7)  # the same dropout mask for both
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = run(*leaves)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.dtype)
        results[emulate] = (y, *torch.autograd.grad(y, leaves, g))
    assert results[True][0].dtype == torch.bfloat16
    for got, want in zip(results[True], results[False]):
        within_one_bf16_ulp(got, want)


@pytest.mark.parametrize("fused", [True, False])
def test_inference_fusions_under_bf16_autocast_match_the_composed_ops(monkeypatch, fused):
    """With oneDNN bf16 (AVX-512 CPUs) the GELU and the residual add are post-ops of a bf16 GEMM;
    on CPUs without it (AVX2 only, where that call raises) the same calls take autocast's composed
    ops, whose residual sum autocast leaves in float32."""
    if fused and not ops._ONEDNN_BF16:
        pytest.skip("this CPU's oneDNN has no bf16 GEMM")
    monkeypatch.setattr(ops, "_ONEDNN_BF16", fused)
    torch.manual_seed(0)
    x, w, b, r = torch.randn(2, 16, 64), torch.randn(96, 64) / 8, torch.randn(96), torch.randn(2, 16, 96)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused_out = ops.linear_gelu(x, w, b), ops.linear_add(x, w, b, r)
    with torch.inference_mode():
        ref = F.gelu(F.linear(x, w, b)), F.linear(x, w, b) + r
    for a, want, dtype in zip(fused_out, ref, (torch.bfloat16, torch.bfloat16 if fused else torch.float32)):
        assert a.dtype == dtype
        assert ((a.float() - want).abs().max() / want.abs().max()).item() < 0.02  # bf16: 8-bit mantissa


def test_attention_without_dropout_is_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    close(ops.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


# ---------------------------------------------------------------------------------------------
# the model: fast vs plain


def tiny_bert(**kw) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, **kw)
    return BertModel(cfg)


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[2, 6:] = 0
    return ids, mask


def test_model_inference_fast_equals_plain():
    model = tiny_bert().eval()
    ids, mask = batch()
    with torch.inference_mode():
        fast = model(ids, mask)
        with ops.fast_kernels(False):
            plain = model(ids, mask)
        close(fast, plain)
        full = torch.ones_like(mask)  # an all-ones mask is dropped on the fast path: same result
        close(model(ids, full), model(ids, None))


def test_model_training_gradients_fast_equal_plain_without_dropout():
    model = tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    ids, mask = batch()
    grads = []
    for fast in (True, False):
        model.zero_grad(set_to_none=True)
        with ops.fast_kernels(fast):
            model(ids, mask).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        close(grads[0][name], grads[1][name], 1e-4 if grads[1][name].abs().max() < 1e-3 else 1e-5)


def test_inference_follows_in_place_weight_changes_and_loaded_states():
    model = tiny_bert().eval()
    ids, mask = batch()
    with torch.no_grad():
        before = model(ids, mask)
        query = model.encoder.layer[0].attention.self.query.weight
        query.add_(torch.randn_like(query))  # in place: a version bump
        after = model(ids, mask)
        assert not torch.allclose(before, after)
        with ops.fast_kernels(False):
            close(after, model(ids, mask))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["encoder.layer.1.attention.self.value.bias"] += 1.0
        model.load_state_dict(state)
        with ops.fast_kernels(False):
            plain = model(ids, mask)
        close(model(ids, mask), plain)


def _manual_sgd(params):
    """A user's own update loop: ``p.data`` arithmetic, which autograd's version counter never sees."""
    class Manual:
        def step(self):
            for p in params:
                p.data.add_(p.grad, alpha=-0.5)

        def zero_grad(self, set_to_none=True):
            for p in params:
                p.grad = None
    return Manual()


@pytest.mark.parametrize("name, impl", [("adamw", "fused"), ("adamw", "foreach"), ("adamw", "plain"),
                                        ("sgd", "fused"), ("sgd", "foreach"), ("sgd", "plain"),
                                        ("manual", "data")])
def test_inference_after_optimizer_steps_matches_a_fresh_copy(name, impl):
    # evaluate, take optimizer steps, evaluate again: the second evaluation must see the new
    # weights, whatever optimizer made them (fused AdamW does not bump Tensor._version)
    import copy
    model = tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, mask = batch()
    params = list(model.parameters())
    if name == "manual":
        opt = _manual_sgd(params)
    else:
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
        opt = cls(params, lr=0.05, **({} if impl == "plain" else {impl: True}))
    model.eval()
    with torch.no_grad():
        first = model(ids, mask)
    for _ in range(3):
        model.train()
        model(ids, mask).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        second = model(ids, mask)
        fresh = copy.deepcopy(model)  # new tensors: nothing cached can survive
        reference = fresh(ids, mask)
        with ops.fast_kernels(False):
            plain = model(ids, mask)
    assert (second - first).abs().max() > 1e-3  # the steps did change the function
    close(second, reference, 1e-5)
    close(second, plain, 1e-5)


def test_model_training_with_dropout_runs_both_paths_and_is_seeded():
    model = tiny_bert().train()
    ids, mask = batch()
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(model(ids, mask))
    assert torch.equal(outs[0], outs[1])
    outs[0].sum().backward()
    with ops.fast_kernels(False):
        model(ids, mask).sum().backward()
