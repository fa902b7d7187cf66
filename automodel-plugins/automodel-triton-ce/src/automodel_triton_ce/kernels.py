"""Triton kernels: row-wise softmax statistics and the in-place cross-entropy gradient of a logits chunk.

Both kernels run one program per row of a ``[rows, vocab]`` logits chunk and walk the vocabulary in
blocks of ``BLOCK_V`` (masked, so any vocabulary size works), accumulating in fp32 whatever the
logits dtype. Import this module only when Triton can run (a GPU, or ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # tanh through exp (portable: the CUDA backend and the CPU interpreter); saturates cleanly to +-1.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _row_stats_kernel(
    z_ptr, stride_z, tgt_ptr, max_ptr, sumexp_ptr, ztgt_ptr, zsum_ptr,
    V, softcap,
    HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Per row: running max, sum(exp(z - max)), the (capped) target logit and the sum of logits.

    ``tgt`` is the target's column in this chunk's vocabulary (or -1 when it lives elsewhere, as with a
    vocab-parallel shard): its logit is reported as 0 then, so shards can simply be summed.
    """
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    tgt = tl.load(tgt_ptr + row)
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    zt = tl.zeros((), tl.float32)
    zs = tl.zeros((), tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        mask = offs < V
        x = tl.load(z_row + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            x = softcap * _tanh(x / softcap)
        zs += tl.sum(tl.where(mask, x, 0.0), axis=0)
        zt += tl.sum(tl.where(offs == tgt, x, 0.0), axis=0)
        x = tl.where(mask, x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    tl.store(max_ptr + row, m)
    tl.store(sumexp_ptr + row, s)
    tl.store(ztgt_ptr + row, zt)
    tl.store(zsum_ptr + row, zs)


@triton.jit
def _row_grad_kernel(
    z_ptr, stride_z, tgt_ptr, lse_ptr, scale_ptr,
    V, softcap, target_coef, uniform_coef, z_loss,
    HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Overwrite the logits row with d(loss)/d(logits), ``loss = scale * token_loss``:

    ``g_j = scale * (p_j * (1 + 2 z_loss lse) - uniform_coef - target_coef [j == tgt])``, times
    ``1 - tanh^2`` when the logits are soft-capped.
    """
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    tgt = tl.load(tgt_ptr + row)
    lse = tl.load(lse_ptr + row)
    scale = tl.load(scale_ptr).to(tl.float32)
    p_coef = scale * (1.0 + 2.0 * z_loss * lse)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        mask = offs < V
        x = tl.load(z_row + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            t = _tanh(x / softcap)
            x = softcap * t
        g = tl.exp(x - lse) * p_coef - scale * uniform_coef
        g = g - tl.where(offs == tgt, scale * target_coef, 0.0)
        if HAS_SOFTCAP:
            g = g * (1.0 - t * t)
        tl.store(z_row + offs, g.to(z_ptr.dtype.element_ty), mask=mask)


def _block(V: int) -> int:
    return min(4096 if torch.cuda.is_available() else 128, triton.next_power_of_2(V))


def _warps(block: int) -> int:
    return 8 if block >= 2048 else 4


def row_stats(z: torch.Tensor, tgt: torch.Tensor, softcap: float | None) -> tuple[torch.Tensor, ...]:
    """(max, sumexp, target logit, logit sum), fp32 ``[rows]`` each, of the logits chunk ``z``."""
    rows, V = z.shape
    out = torch.empty(4, rows, dtype=torch.float32, device=z.device)
    if rows:
        _row_stats_kernel[(rows,)](
            z, z.stride(0), tgt, out[0], out[1], out[2], out[3], V, float(softcap or 1.0),
            HAS_SOFTCAP=softcap is not None, BLOCK_V=_block(V), num_warps=_warps(_block(V)),
        )
    return out[0], out[1], out[2], out[3]


def row_grad_(z: torch.Tensor, tgt: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor, softcap: float | None,
              target_coef: float, uniform_coef: float, z_loss: float) -> torch.Tensor:
    """Overwrite the logits chunk ``z`` with the gradient of ``scale * sum(token losses)``."""
    rows, V = z.shape
    if rows:
        _row_grad_kernel[(rows,)](
            z, z.stride(0), tgt, lse, scale, V, float(softcap or 1.0), float(target_coef), float(uniform_coef),
            float(z_loss), HAS_SOFTCAP=softcap is not None, BLOCK_V=_block(V), num_warps=_warps(_block(V)),
        )
    return z
