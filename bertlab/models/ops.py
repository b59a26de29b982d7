"""Fast CPU kernels that compute the same maths as the plain PyTorch ops.

What is here, and why (docs/performance.md has the measurements):

- ``linear``: on x86 CPUs with AVX-512 (e.g. AMD EPYC), ``F.linear`` goes to MKL's sgemm, which
  there runs an AVX2 code path (~110-190 GFLOP/s on 2 cores), while oneDNN's fp32 matmul uses
  AVX-512 (~250-330 GFLOP/s). Results differ only by float reassociation (~1e-6 relative).
- ``linear_gelu`` / ``linear_add``: inference only (no autograd graph): the GELU or the residual
  add runs inside the GEMM as a oneDNN post-op, saving a pass over the activations.
- ``dropout`` / ``keep_mask``: torch's CPU dropout draws a float Bernoulli per element (the
  slowest part of a training step after the GEMMs). Here the keep mask comes from the 16-bit
  lanes of 64-bit random words, so p is quantised to k/65536 (p = 0.1 -> 0.100006); the kept
  values are scaled by the exact 1/(1 - k/65536), so E[dropout(x)] = x still holds exactly.
- bf16 on CPUs without bf16 GEMMs (``_ONEDNN_BF16`` False: AVX2-only CPUs such as AMD Zen 3):
  ATen falls back to a scalar bf16 GEMM, ~8x slower than float32 there. Under bf16 autocast,
  ``linear`` and ``attention``'s dropout path (forward and backward) then run float32 GEMMs on
  the bf16-rounded operands and round each result to bf16: autocast's arithmetic (bf16 operands,
  float32 accumulation, one rounding), at float32's speed; results differ from the native kernel
  only by the order of the float32 sums (at most one bf16 unit in the last place, rarely). SDPA
  keeps its own bf16 kernel (it rounds inside, so float32 on rounded inputs would differ more).
- ``attention``: training with attention dropout, where ``F.scaled_dot_product_attention`` on CPU
  falls back to its math path (extra scaling passes, a "safe" softmax, float Bernoulli dropout);
  here: one scaled QKᵀ, softmax, the 16-bit keep mask, and the 1/(1-p) scale folded into V (a
  [T, d] tensor instead of the [T, T] probabilities). Everything else goes to SDPA (its fused
  flash kernel at inference).

Every fast path here is switchable, for studies that need the plain path::

    from bertlab.models import ops
    ops.use_fast_kernels(False)                    # all of them, globally
    ops.use_fast_kernels(True, dropout=False)      # all but one (names: PATHS)
    with ops.fast_kernels(False): ...              # for a block
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

# each fast path by name; all on by default
PATHS = ("gemm", "dropout", "inference_fusions", "bf16_gemm")
# removed (docs/performance.md): "fused_qkv" (one [3H, H] GEMM for Q, K, V) bought under 3%
# (train 1.01x, inference 0.96x in bench --only paths)
_state = {name: True for name in PATHS}


def _set(enabled: bool | None, paths: dict) -> None:
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise ValueError(f"unknown fast path(s) {sorted(unknown)}; choose from {PATHS}")
    if enabled is not None:
        _state.update({name: bool(enabled) for name in PATHS})
    _state.update({name: bool(v) for name, v in paths.items()})


def use_fast_kernels(enabled: bool | None = True, **paths: bool) -> None:
    """Turn the fast paths on or off for the whole process: all of them (``enabled``), then any
    named one, e.g. ``use_fast_kernels(True, dropout=False)``. Names: :data:`PATHS`."""
    _set(enabled, paths)


@contextlib.contextmanager
def fast_kernels(enabled: bool | None = None, **paths: bool):
    """Context manager form of :func:`use_fast_kernels`; restores the previous settings."""
    old = dict(_state)
    _set(enabled, paths)
    try:
        yield
    finally:
        _state.update(old)


def fast_kernels_enabled(path: str | None = None) -> bool:
    """Whether fast path ``path`` is on (``None``: whether any is)."""
    if path is None:
        return any(_state.values())
    return _state[path]


def _onednn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_linear_available()


def _onednn_bf16_available() -> bool:
    # oneDNN's bf16 GEMM with post-ops needs AVX512BW/VL/DQ or AVX-NE-CONVERT; without them (e.g.
    # AVX2-only CPUs) the call raises, so the bf16 fusions are left to autocast's composed ops there
    try:
        return _ONEDNN and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_BF16 = _onednn_bf16_available()


def onednn_bf16() -> bool:
    """Whether this CPU's oneDNN runs bf16 GEMMs (natively with AVX512-BF16/AMX, by its own
    emulation on other AVX-512 CPUs); False where ``linear`` emulates them (``_emulates_bf16``)."""
    return _ONEDNN_BF16


def _mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    # y = x @ w.T + b through oneDNN; accepts strided (transposed) operands without copies
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = x Wᵀ + b with all three GEMMs (forward, dL/dx = g W, dL/dW = gᵀ x) on oneDNN."""

    @staticmethod
    def forward(ctx, x2d, weight, bias):
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None
        return _mm(x2d, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x2d, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(grad, weight.t(), None)
        if ctx.needs_input_grad[1]:
            gw = _mm(grad.t(), x2d.t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb


def _emulates_bf16(x: torch.Tensor) -> bool:
    """Whether a GEMM on ``x`` would run in bf16 (bf16 autocast, or a bf16 tensor) on a CPU whose
    oneDNN has no bf16 GEMM, and the ``bf16_gemm`` path is on: there it runs in float32 on the
    bf16-rounded operands instead (``_in_float32``)."""
    if not _state["bf16_gemm"] or _ONEDNN_BF16 or x.device.type != "cpu":
        return False
    return x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _in_float32(fn, *tensors: torch.Tensor | None) -> torch.Tensor:
    """``fn`` of the tensors rounded to bf16, computed in float32 with autocast off, its result
    rounded to bf16. Autograd goes through the casts, so each gradient is a float32 GEMM rounded
    once to bf16 (then cast to its input's dtype), as autocast's bf16 backward computes it."""
    with torch.autocast("cpu", enabled=False):
        return fn(*(None if t is None else t.to(torch.bfloat16).float() for t in tensors)).to(torch.bfloat16)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_state["gemm"] and _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with the oneDNN fast path for fp32 CPU tensors (any leading dims), and bf16
    autocast's GEMM in float32 on CPUs without bf16 GEMMs (``_emulates_bf16``)."""
    if _emulates_bf16(x):
        return _in_float32(linear, x, weight, bias)
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose forward uses :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _bf16_inference(x: torch.Tensor, *tensors) -> bool:
    """Whether x goes through a GEMM under CPU bf16 autocast with no gradient wanted, on a CPU whose
    oneDNN does bf16: there the post-op fusions run on bf16 operands (oneDNN accumulates in float32
    and rounds once)."""
    return (_ONEDNN_BF16 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not _needs_grad(x, *tensors))


def _bf16(*tensors):
    return [None if t is None else t.to(torch.bfloat16) for t in tensors]


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``gelu(linear(x))`` (erf GELU); one oneDNN GEMM with a GELU post-op when no gradient is needed
    (float32, or bf16 under CPU autocast)."""
    if _state["inference_fusions"]:
        if _use_onednn(x, weight) and not _needs_grad(x, weight, bias):
            y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, "gelu", [None], "none")
            return y.view(*x.shape[:-1], weight.shape[0])
        if _bf16_inference(x, weight, bias):
            xb, wb, bb = _bf16(x.reshape(-1, x.shape[-1]), weight, bias)
            y = torch.ops.mkldnn._linear_pointwise(xb, wb, bb, "gelu", [None], "none")
            return y.view(*x.shape[:-1], weight.shape[0])
    return F.gelu(linear(x, weight, bias))


def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, other: torch.Tensor) -> torch.Tensor:
    """``linear(x) + other`` (a residual); the add is a oneDNN post-op when no gradient is needed
    (float32; under CPU bf16 autocast the sum is bf16, where autocast's would be float32)."""
    if _state["inference_fusions"] and other.shape == (*x.shape[:-1], weight.shape[0]):
        if (_use_onednn(x, weight) and not _needs_grad(x, weight, bias, other)
                and other.dtype == torch.float32):
            y = torch.ops.mkldnn._linear_pointwise.binary(x.reshape(-1, x.shape[-1]), other.reshape(-1, weight.shape[0]),
                                                          weight, bias, "add")
            return y.view(other.shape)
        if _bf16_inference(x, weight, bias, other):
            xb, ob, wb, bb = _bf16(x.reshape(-1, x.shape[-1]), other.reshape(-1, weight.shape[0]), weight, bias)
            return torch.ops.mkldnn._linear_pointwise.binary(xb, ob, wb, bb, "add").view(other.shape)
    return linear(x, weight, bias) + other


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------------------------
# dropout from 16-bit random integers


def _drop_count(p: float) -> int:
    return min(65536, max(0, round(p * 65536)))


def effective_dropout_p(p: float) -> float:
    """The drop probability the fast dropout really uses for a requested ``p``: k/65536."""
    return _drop_count(p) / 65536


def keep_mask(shape, p: float, device=None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, float]:
    """A Bernoulli keep mask (0/1, in ``dtype``) with P(drop) = k/65536, k = round(65536 p), and the
    scale 1 / (1 - k/65536) that makes E[mask * scale] = 1 exactly.

    The bits: ``random_(-2**63, None)`` fills int64 words with all 64 bits random (plain
    ``random_()`` draws from [0, 2^63), whose top bit is always 0); each word is four int16 lanes
    r, uniform on [-32768, 32767]. Keep iff r >= t, t = k - 32768, computed without a bool tensor
    (bool ops are not vectorised on CPU): clamp(r, t-1, t) - (t-1) is exactly 0 or 1 in int16,
    then one conversion to ``dtype`` (0 and 1 are exact in every float type, bf16 included).
    """
    k = _drop_count(p)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    lanes = words.view(torch.int16)[:n]
    if k == 0:  # t - 1 would leave int16; nothing is dropped
        mask = torch.ones(n, dtype=dtype, device=device)
    elif k == 65536:
        mask = torch.zeros(n, dtype=dtype, device=device)
    else:
        t = k - 32768
        mask = lanes.clamp(t - 1, t).sub_(t - 1).to(dtype)
    return mask.view(shape), (math.inf if k == 65536 else 65536 / (65536 - k))


def _use_fast_dropout(x: torch.Tensor) -> bool:
    # CUDA has its own fused (Philox) dropout; this path is for CPUs
    return _state["dropout"] and x.device.type == "cpu" and x.is_floating_point()


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the mask from :func:`keep_mask` (p quantised to k/65536)."""
    if not training or p <= 0:
        return x
    if not _use_fast_dropout(x) or p >= 1:
        return F.dropout(x, p, training)
    if x.dtype == torch.float32:
        mask, scale = keep_mask(x.shape, p, x.device)
        return x * mask.mul_(scale)  # autograd saves the scaled mask: grad = g * mask * scale
    # bf16/fp16 (autocast): the mask in x's dtype, no float32 copies; x * mask is exact, and the
    # scale is applied in float32 opmath with one rounding, as torch's own dropout does
    mask, scale = keep_mask(x.shape, p, x.device, x.dtype)
    return (x * mask).mul_(scale)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (no parameters) whose forward uses :func:`dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d) + bias) v with dropout on the probabilities; q, k, v ``[B, heads, T, d]``,
    ``bias`` broadcastable to ``[B, heads, T, T]`` (additive, e.g. from a padding mask).

    ``dropout_p`` > 0 (training) on CPU with fast kernels: the explicit path described at the top
    of this module. Otherwise ``F.scaled_dot_product_attention``.
    """
    if dropout_p <= 0 or dropout_p >= 1 or not _use_fast_dropout(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    # under autocast, softmax would run in float32 and every [T, T] tensor would be cast back and forth;
    # here a half-precision q stays half: softmax takes bf16 in and gives bf16 out (float32 inside, one
    # rounding, the values autocast's cast would give), the 0/1 mask is exact in bf16
    with torch.autocast(q.device.type, enabled=False):
        matmul = (lambda a, b: _in_float32(torch.matmul, a, b)) if _emulates_bf16(q) else torch.matmul
        scores = matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-1, -2))
        if bias is not None:
            scores = scores + bias.to(scores.dtype)
        probs = scores.softmax(-1)
        mask, scale = keep_mask(probs.shape, dropout_p, probs.device, probs.dtype)
        # (P ⊙ mask / (1-p)) v = (P ⊙ mask) (v / (1-p)): the scale touches [T, d], not [T, T]
        return matmul(probs * mask, v * scale)
