"""The ``torch`` backend: a small ``Float8Linear`` on ``torch._scaled_mm``, no dependency beyond torch.

Numerics (those of torchao's dynamic scaling):

* each operand of each of the three matmuls (forward ``y = x W^T``, backward ``dx = dy W`` and
  ``dW = dy^T x``) is scaled by ``s = fp8_max / amax`` (amax clamped to ``1e-12``, scale in float32),
  saturated to ``[-fp8_max, fp8_max]`` and cast to FP8: ``float8_e4m3fn`` for activations and weights,
  ``float8_e5m2`` (or ``e4m3``) for the output gradient;
* ``tensorwise``: one scale per tensor; ``rowwise``: one scale per row of the left operand and per
  column of the right one (along the dimension each matmul does not contract), re-quantized for the
  backward matmuls from the high-precision tensors, each scale rounded down to a power of 2;
* the product of two FP8 operands is accumulated in float32 and rescaled by ``1 / (s_a s_b)``
  (``torch._scaled_mm``), returned in the input's dtype; the bias is added in high precision.

The module keeps ``weight`` and ``bias`` as ordinary high-precision parameters with the names of
``nn.Linear`` (converting swaps the class only), so optimizers, FSDP2 sharding, checkpoints, the HF
export and meta-device loading see the same model. ``emulate=True`` computes the same quantized
values and does the matmul as dequantize-then-``matmul`` in float32 instead of ``torch._scaled_mm``
(for hardware without FP8 matmuls, and on CPU, where ``torch._scaled_mm`` runs but is a slow
reference kernel; the two paths give the same values, see the tests).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
DTYPES = {"e4m3": E4M3, "e5m2": E5M2}
EPS = 1e-12


def quantize(t: torch.Tensor, dtype: torch.dtype, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t * s)`` saturated and cast to ``dtype``, and ``1 / s`` (float32): ``dim=None`` one scale for
    the tensor (0-dim), else one scale per slice along ``dim`` (amax over ``dim``, kept as size 1),
    rounded down to a power of 2 (as torchao's rowwise recipe: exact rescaling)."""
    a = t.detach().abs()
    amax = a.amax() if dim is None else a.amax(dim=dim, keepdim=True)
    fmax = torch.finfo(dtype).max
    scale = (fmax / amax.to(torch.float64).clamp(min=EPS)).to(torch.float32)
    if dim is not None:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    q = (t.to(torch.float32) * scale).clamp(-fmax, fmax).to(dtype)
    return q, scale.reciprocal()


def dequantize(q: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * inv_scale


def scaled_mm(a: torch.Tensor, a_inv: torch.Tensor, b: torch.Tensor, b_inv: torch.Tensor,
              out_dtype: torch.dtype, emulate: bool) -> torch.Tensor:
    """``(a / s_a) @ (b / s_b)`` for FP8 ``a`` (M, K), ``b`` (K, N): ``a_inv`` is 0-dim or (M, 1),
    ``b_inv`` 0-dim or (1, N). ``torch._scaled_mm`` wants ``a`` row-major and ``b`` column-major."""
    if emulate:
        return (dequantize(a, a_inv) @ dequantize(b, b_inv)).to(out_dtype)
    return torch._scaled_mm(a.contiguous(), b.t().contiguous().t(), scale_a=_dense(a_inv), scale_b=_dense(b_inv),
                            out_dtype=out_dtype)


def _dense(scale: torch.Tensor) -> torch.Tensor:
    """The same scales with row-major strides (a transposed (1, N) is (N, 1) with stride 1 on dim 1
    that ``torch._scaled_mm`` refuses)."""
    return scale.flatten().view(scale.shape)


def _pad_rows(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero rows appended so that dim 0 is a multiple of ``multiple`` (``_scaled_mm`` on CUDA needs the
    contracted dimension divisible by 16; zero rows add nothing to the product)."""
    extra = -t.shape[0] % multiple
    if not extra:
        return t
    return torch.cat([t, t.new_zeros((extra, *t.shape[1:]))])


class _Float8MatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, rowwise: bool, grad_dtype: torch.dtype,
                emulate: bool) -> torch.Tensor:
        dim = -1 if rowwise else None
        x_q, x_inv = quantize(x, E4M3, dim)  # per row of x (token) / per tensor
        w_q, w_inv = quantize(weight, E4M3, dim)  # per output feature / per tensor
        out = scaled_mm(x_q, x_inv, w_q.t(), w_inv.t() if rowwise else w_inv, x.dtype, emulate)
        if rowwise:  # the backward matmuls scale along other dimensions: re-quantize from these
            ctx.save_for_backward(x, weight)
        else:  # one scale per tensor serves every matmul: keep the FP8 copies (half the memory of bf16)
            ctx.save_for_backward(x_q, x_inv, w_q, w_inv)
        ctx.config = (rowwise, grad_dtype, emulate, x.dtype, weight.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        rowwise, grad_dtype, emulate, x_dtype, w_dtype = ctx.config
        grad = grad.contiguous()
        grad_x = grad_w = None
        pad = 1 if emulate or grad.device.type != "cuda" else 16
        if rowwise:
            x, weight = ctx.saved_tensors
            if ctx.needs_input_grad[0]:
                g_q, g_inv = quantize(grad, grad_dtype, -1)  # (M, N), per row
                w_q, w_inv = quantize(weight, E4M3, 0)  # (N, K), per column
                grad_x = scaled_mm(g_q, g_inv, w_q, w_inv, x_dtype, emulate)
            if ctx.needs_input_grad[1]:
                g_q, g_inv = quantize(_pad_rows(grad, pad), grad_dtype, 0)  # (M, N), per column
                x_q, x_inv = quantize(_pad_rows(x, pad), E4M3, 0)  # (M, K), per column
                grad_w = scaled_mm(g_q.t(), g_inv.t(), x_q, x_inv, w_dtype, emulate)
        else:
            x_q, x_inv, w_q, w_inv = ctx.saved_tensors
            g_q, g_inv = quantize(grad, grad_dtype)
            if ctx.needs_input_grad[0]:
                grad_x = scaled_mm(g_q, g_inv, w_q, w_inv, x_dtype, emulate)
            if ctx.needs_input_grad[1]:
                g_t = _pad_rows(g_q.view(torch.uint8), pad).view(g_q.dtype).t()
                x_p = _pad_rows(x_q.view(torch.uint8), pad).view(x_q.dtype)
                grad_w = scaled_mm(g_t, g_inv, x_p, x_inv, w_dtype, emulate)
        return grad_x, grad_w, None, None, None


def float8_matmul(x: torch.Tensor, weight: torch.Tensor, rowwise: bool = False, grad_dtype: torch.dtype = E5M2,
                  emulate: bool = False) -> torch.Tensor:
    """``x @ weight.T`` with FP8 operands in forward and backward; ``x`` is (..., K), ``weight`` (N, K)."""
    lead = x.shape[:-1]
    out = _Float8MatMul.apply(x.reshape(-1, x.shape[-1]), weight, rowwise, grad_dtype, emulate)
    return out.reshape(*lead, weight.shape[0])


class Float8Linear(nn.Linear):
    """``nn.Linear`` whose matmuls run in FP8 (see the module docstring); same parameters, same names."""

    rowwise: bool = False
    grad_dtype: torch.dtype = E5M2
    emulate: bool = False

    @classmethod
    def convert(cls, linear: nn.Linear, rowwise: bool = False, grad_dtype: torch.dtype = E5M2,
                emulate: bool = False) -> Float8Linear:
        """Turn ``linear`` (an exact ``nn.Linear``) into a ``Float8Linear`` in place: its parameters
        (real or on the meta device) are kept as they are."""
        if type(linear) is not nn.Linear:
            raise TypeError(f"Float8Linear.convert expects an nn.Linear, got {type(linear).__name__}")
        linear.__class__ = cls
        linear.rowwise, linear.grad_dtype, linear.emulate = rowwise, grad_dtype, emulate
        return linear  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = float8_matmul(x, self.weight, self.rowwise, self.grad_dtype, self.emulate)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        grad = "e5m2" if self.grad_dtype == E5M2 else "e4m3"
        return (f"{super().extra_repr()}, fp8={'rowwise' if self.rowwise else 'tensorwise'}, grad={grad}"
                + (", emulate=True" if self.emulate else ""))
