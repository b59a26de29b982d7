"""Fast CPU kernels that compute the same maths as the plain PyTorch ops.

Why: on x86 CPUs with AVX-512 (e.g. AMD EPYC), ``F.linear`` goes to MKL's sgemm, which there
runs an AVX2 code path (~110-190 GFLOP/s on 2 cores), while oneDNN's fp32 matmul uses AVX-512
(~250-330 GFLOP/s). Results differ only by float reassociation (~1e-6 relative).

Every fast path here is switchable, for studies that need the plain path::

    from bertlab.models import ops
    ops.use_fast_kernels(False)            # globally
    with ops.fast_kernels(False): ...      # for a block
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

_state = {"fast": True}


def use_fast_kernels(enabled: bool = True) -> None:
    """Turn the fast CPU kernels on or off for the whole process."""
    _state["fast"] = bool(enabled)


@contextlib.contextmanager
def fast_kernels(enabled: bool):
    """Context manager form of :func:`use_fast_kernels`; restores the previous setting."""
    old = _state["fast"]
    _state["fast"] = bool(enabled)
    try:
        yield
    finally:
        _state["fast"] = old


def fast_kernels_enabled() -> bool:
    return _state["fast"]


def _onednn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_linear_available()


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


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_state["fast"] and _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with the oneDNN fast path for fp32 CPU tensors (any leading dims)."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose forward uses :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
