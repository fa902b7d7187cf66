"""Fused linear cross-entropy: loss and both gradients from hidden states and the lm_head weight,
chunk by chunk over the vocabulary, without ever holding the ``[tokens, vocab]`` logits.

Only label tokens (``labels != ignore_index``) are computed. With ``z = h @ W_c^T`` the logits of
one vocabulary chunk ``c`` (``[tokens, chunk]``, in the weight dtype as the lm_head would make them)::

    pass 1, every chunk:  max, sumexp, z_target, z_sum = row statistics of z   (fp32; Triton or torch)
                          merged online into each token's logsumexp
                          (vocab-parallel TP: then all-reduced over the tp group: max, then sums)
    pass 2, every chunk:  z <- d loss / d z in place                           (fp32 math; Triton or torch)
                          dW_c = z^T @ h          (written once: one fp32-accumulated GEMM per chunk)
                          dh  += z @ W_c          (fp32 accumulator)

Both gradients are computed in the forward pass; backward only multiplies them by the incoming
gradient. Peak memory is ``dW + dh + one chunk`` instead of several fp32 ``[tokens, vocab]`` tensors;
the price is one more GEMM than the unfused loss (the logits are recomputed in pass 2).

Token loss (``eps`` = label smoothing, ``V`` = vocabulary size, ``z`` soft-capped when asked)::

    (1 - eps) * (lse - z_target) + eps * (lse - sum_j z_j / V) + z_loss * lse^2
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

CHUNK_BYTES = 32 * 2**20  # default budget for one logits chunk
ROWS = 2048  # token rows per step when a [tokens, hidden] temporary is needed


@dataclass(frozen=True)
class Options:
    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    chunk_size: int | None = None
    backend: str = "triton"  # "triton" or "torch"


# --------------------------------------------------------------------------------------------------
# Backends: row statistics and in-place gradient of one logits chunk
# --------------------------------------------------------------------------------------------------


def _capped_fp32(z: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """A fresh fp32 copy of ``z``, soft-capped in place when asked (one chunk-sized temporary)."""
    zc = z.float() if z.dtype != torch.float32 else z.clone()
    if softcap is not None:
        zc.div_(softcap).tanh_().mul_(softcap)
    return zc


def _torch_row_stats(z: torch.Tensor, tgt: torch.Tensor, softcap: float | None) -> tuple[torch.Tensor, ...]:
    zc = _capped_fp32(z, softcap)
    m = zc.amax(dim=1)
    zs = zc.sum(dim=1)
    zt = torch.where(tgt >= 0, zc.gather(1, tgt.clamp(min=0)[:, None])[:, 0], 0.0)
    s = zc.sub_(m[:, None]).exp_().sum(dim=1)
    return m, s, zt, zs


def _torch_row_grad_(z: torch.Tensor, tgt: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor, softcap: float | None,
                     target_coef: float, uniform_coef: float, z_loss: float) -> torch.Tensor:
    g = _capped_fp32(z, softcap)
    dcap = None
    if softcap is not None:  # d(cap * tanh(x / cap)) / dx = 1 - tanh^2
        dcap = (g / softcap).square_().neg_().add_(1.0)
    g.sub_(lse[:, None]).exp_().mul_((1.0 + 2.0 * z_loss * lse)[:, None])
    if uniform_coef:
        g.sub_(uniform_coef)
    if _is_fake(tgt):  # `automodel plan`: the same memory, without the data-dependent row selection
        g.scatter_add_(1, tgt.clamp(min=0)[:, None], torch.full_like(g[:, :1], -target_coef))
    else:
        rows = torch.nonzero(tgt >= 0)[:, 0]
        g[rows, tgt[rows]] -= target_coef
    if dcap is not None:
        g.mul_(dcap)
        del dcap
    z.copy_(g.mul_(scale))
    return z


_warned = False


def triton_usable(device: torch.device) -> bool:
    """Triton can run on ``device``: CUDA, or any device under ``TRITON_INTERPRET=1``."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if not interpret and device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if interpret and not _interpreted_stdlib():
        raise RuntimeError(
            "triton_ce: TRITON_INTERPRET=1 was set after triton had been imported (by this process or a "
            "library it loaded, e.g. bitsandbytes), so Triton's own tl.* helpers were built for a GPU and the "
            "interpreter cannot call them. Set TRITON_INTERPRET=1 in the environment before starting Python."
        )
    return True


def _interpreted_stdlib() -> bool:
    """Triton decorated its tl.* helpers as interpreted functions (TRITON_INTERPRET was set at its import)."""
    from triton.language import standard

    return type(standard.cdiv).__name__ == "InterpretedFunction"


def _backend(name: str, device: torch.device) -> tuple[Any, Any]:
    global _warned
    if name == "triton":
        if triton_usable(device):
            from automodel_triton_ce import kernels

            return kernels.row_stats, kernels.row_grad_
        if not _warned:
            _warned = True
            warnings.warn(
                f"triton_ce: Triton cannot run on {device} (no GPU and TRITON_INTERPRET is not set); "
                "using the pure-PyTorch chunked implementation (chunked_ce) instead",
                stacklevel=3,
            )
    return _torch_row_stats, _torch_row_grad_


# --------------------------------------------------------------------------------------------------
# The chunk loop
# --------------------------------------------------------------------------------------------------


@dataclass
class VocabShard:
    """This rank holds rows ``[start, start + local)`` of a vocabulary of ``size`` over ``group``."""

    start: int
    size: int
    group: Any
    reduce_hidden_grad: bool  # hidden states are a plain replicated tensor: all-reduce dh ourselves


def _chunk_columns(opts: Options, vocab: int, elt: int, n: int, torch_ops: bool) -> int:
    """Vocabulary entries per chunk: ``n x chunk`` logits fit ``CHUNK_BYTES`` (a multiple of 128)."""
    if opts.chunk_size:
        return opts.chunk_size
    if torch_ops:
        elt = 4  # the torch ops make an fp32 temporary of the chunk
    cols = CHUNK_BYTES // max(1, n * elt) // 128 * 128
    return max(1, min(vocab, max(128, cols)))


def _forward_backward(
    h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, opts: Options,
    shard: VocabShard | None, grad_h: bool, grad_w: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Loss (``scale * sum``) and, when asked, the gradients of ``h`` [N, D] and ``w`` [V, D].

    Two passes over chunks of the vocabulary (``z = h @ W_chunk^T``, ``[tokens, chunk]``): the first
    merges per-chunk softmax statistics into each token's logsumexp (online, like a blocked softmax),
    the second turns each logits chunk into its gradient in place and writes ``dW_chunk = g^T h`` once
    (one fp32-accumulated GEMM, no read-modify-write of dW) and accumulates ``dh += g W_chunk`` in fp32.
    """
    row_stats, row_grad_ = _backend(opts.backend, h.device)
    vocab = shard.size if shard else w.shape[0]
    tokens = _Tokens.select(h, w, labels, opts.ignore_index, vocab, shard.start if shard else 0)
    cols = _chunk_columns(opts, w.shape[0], w.element_size(), tokens.n, row_stats is _torch_row_stats)
    chunks = [(c0, min(c0 + cols, w.shape[0])) for c0 in range(0, w.shape[0], cols)] if tokens.n else []
    if len(chunks) > 3 and _is_fake(h):
        chunks = _planned_chunks(chunks)

    lse, zt, zs = _logsumexp(tokens, w, chunks, row_stats, opts, shard)
    eps, zl = float(opts.label_smoothing), float(opts.z_loss)
    token = (lse - zt) * (1.0 - eps)
    if eps:
        token = token + (lse - zs / vocab) * eps
    if zl:
        token = token + lse * lse * zl
    loss = token.sum() * scale

    dw = torch.empty_like(w) if grad_w else None
    if dw is not None and not chunks:
        dw.zero_()
    acc = torch.zeros(tokens.n, h.shape[1], dtype=torch.float32, device=h.device) if grad_h else None
    if grad_h or grad_w:
        lse = lse.contiguous()
        for c0, c1 in chunks:
            z, tc = tokens.logits(w, c0, c1)
            g = row_grad_(z, tc, lse, scale, opts.softcap, 1.0 - eps, eps / vocab, zl)
            del z
            if dw is not None:
                torch.mm(g.t(), tokens.hidden, out=dw[c0:c1])
            if acc is not None:
                _accumulate(acc, g, w[c0:c1])
            del g
    tokens.hidden = None  # free the gathered hidden states before dh is assembled
    if acc is None:
        return loss, None, dw
    if shard is not None and shard.reduce_hidden_grad:
        dist.all_reduce(acc, group=shard.group)
    return loss, tokens.scatter(acc, h), dw


def _planned_chunks(chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The chunks `automodel plan` simulates on fake tensors (thousands of identical ops otherwise):
    for its memory pass the first two and the last (each round frees what the previous one made, so
    the peak is reached by then), for its FLOP pass one chunk of the whole vocabulary (same FLOPs)."""
    try:
        from automodel.plan import plan_pass
    except ImportError:  # an automodel without it: simulate every chunk
        return chunks
    what = plan_pass()
    if what == "memory":
        return [*chunks[:2], chunks[-1]]
    if what == "flops":
        return [(chunks[0][0], chunks[-1][1])]
    return chunks


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


@dataclass
class _Tokens:
    """The tokens that carry a label: their hidden states (in the weight's dtype) and target columns."""

    hidden: torch.Tensor | None
    target: torch.Tensor  # target column in this rank's vocabulary (outside [0, vocab_local): elsewhere)
    index: torch.Tensor  # their rows in ``h``
    dense: bool  # every token carries a label: no gather, no scatter

    @property
    def n(self) -> int:
        return self.index.numel()

    @classmethod
    def select(cls, h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, ignore_index: int, vocab: int,
               start: int) -> _Tokens:
        if _is_fake(labels):  # `automodel plan` (fake tensors, no values): plan for every token carrying a label
            return cls(h.to(w.dtype), labels - start, torch.arange(h.shape[0], device=h.device), True)
        idx = torch.nonzero(labels != ignore_index)[:, 0]
        dense = idx.numel() == h.shape[0]
        tv = labels if dense else labels.index_select(0, idx)
        if idx.numel() and bool(((tv < 0) | (tv >= vocab)).any()):
            raise ValueError(f"labels must be in [0, {vocab}) or {ignore_index}; got {tv.min().item()}..{tv.max().item()}")
        return cls((h if dense else h.index_select(0, idx)).to(w.dtype), tv - start, idx, dense)

    def logits(self, w: torch.Tensor, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of vocabulary columns ``[c0, c1)`` and each token's target column in them (-1: not there)."""
        t = self.target - c0
        return self.hidden @ w[c0:c1].t(), torch.where((t >= 0) & (t < c1 - c0), t, -1)

    def scatter(self, acc: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``dh`` shaped and typed like ``h`` from the fp32 gradient rows of the labelled tokens."""
        if self.dense and h.dtype == torch.float32:
            return acc
        dh = torch.empty_like(h) if self.dense else torch.zeros_like(h)
        for r0 in range(0, self.n, ROWS):  # bounded low-precision temporary
            part = acc[r0:r0 + ROWS].to(h.dtype)
            if self.dense:
                dh[r0:r0 + ROWS] = part
            else:
                dh.index_copy_(0, self.index[r0:r0 + ROWS], part)
        return dh


def _logsumexp(tokens: _Tokens, w: torch.Tensor, chunks: list[tuple[int, int]], row_stats: Any, opts: Options,
               shard: VocabShard | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 1: every token's logsumexp, target logit and logit sum (over all shards' vocabularies)."""
    device = w.device
    m = torch.full((tokens.n,), float("-inf"), dtype=torch.float32, device=device)
    s = torch.zeros(tokens.n, dtype=torch.float32, device=device)
    zt = torch.zeros_like(s)
    zs = torch.zeros_like(s)
    for c0, c1 in chunks:
        z, tc = tokens.logits(w, c0, c1)
        cm, cs, czt, czs = row_stats(z, tc, opts.softcap)
        del z
        m_new = torch.maximum(m, cm)
        s = s * torch.exp(m - m_new) + cs * torch.exp(cm - m_new)
        m, zt, zs = m_new, zt + czt, zs + czs
    if shard is not None:  # vocab-parallel: combine the shards' statistics
        m_local = m
        m = m.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=shard.group)
        rest = torch.stack([s * torch.exp(m_local - m), zt, zs])
        dist.all_reduce(rest, group=shard.group)
        s, zt, zs = rest[0], rest[1], rest[2]
    return m + torch.log(s), zt, zs


def _accumulate(acc: torch.Tensor, g: torch.Tensor, w_chunk: torch.Tensor) -> None:
    """``acc += g @ w_chunk`` in fp32 (a low-precision ``g`` in bounded row blocks)."""
    if g.dtype == torch.float32:
        acc.addmm_(g, w_chunk)
    else:
        for r0 in range(0, g.shape[0], ROWS):
            acc[r0:r0 + ROWS] += g[r0:r0 + ROWS] @ w_chunk


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor,
                opts: Options, shard: VocabShard | None, w_grad_div: float) -> torch.Tensor:
        grad_h, grad_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, dh, dw = _forward_backward(h, w, labels, scale, opts, shard, grad_h, grad_w)
        ctx.save_for_backward(dh, dw)
        ctx.w_grad_div = w_grad_div
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        dh, dw = ctx.saved_tensors
        # The stored gradients belong to this call only: scale them in place (no second copy of dW).
        if dh is not None:
            dh.mul_(grad)
        if dw is not None:
            dw.mul_(grad / ctx.w_grad_div if ctx.w_grad_div != 1 else grad)
        return dh, dw, None, None, None, None, None


# --------------------------------------------------------------------------------------------------
# Entry point (plain tensors, DTensors from FSDP2 / vocab-parallel TP)
# --------------------------------------------------------------------------------------------------


def _prepare_weight(w: Any, h: Any) -> tuple[torch.Tensor, torch.Tensor, VocabShard | None, float]:
    """Turn (possibly DTensor) weight and hidden states into local tensors.

    * FSDP2 (``Shard(0)``/``Replicate`` on data-parallel mesh dims): all-gather the weight with
      autograd; its gradient comes back as ``Partial`` and is reduce-scattered (summed) onto the
      shards, so we pre-divide it by the data-parallel degree (FSDP2 averages, the loop scales the
      loss by that degree).
    * TP vocab-parallel (``Shard(0)`` on the ``tp`` mesh dim): keep the local vocabulary rows and
      combine the softmax statistics across the tp group (see :class:`VocabShard`).
    """
    try:
        from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
    except ImportError:  # pragma: no cover - torch without DTensor
        return w, h, None, 1.0
    shard = None
    div = 1.0
    tp_dim = None
    if isinstance(w, DTensor):
        mesh = w.device_mesh
        names = list(mesh.mesh_dim_names or [])
        placements = list(w.placements)
        tp_dim = names.index("tp") if "tp" in names and placements[names.index("tp")] == Shard(0) else None
        target = [Shard(0) if i == tp_dim else Replicate() for i in range(mesh.ndim)]
        grads = [Shard(0) if i == tp_dim else Partial() for i in range(mesh.ndim)]
        for i in range(mesh.ndim):
            if i != tp_dim:
                div *= mesh.size(i)
        vocab = w.shape[0]
        local = w.redistribute(mesh, target).to_local(grad_placements=grads)
        if tp_dim is not None:
            tp_mesh = mesh[names[tp_dim]]
            rank, size = tp_mesh.get_local_rank(), tp_mesh.size()
            per = -(-vocab // size)  # torch.chunk semantics: ceil-sized shards, the last one smaller
            shard = VocabShard(start=min(rank * per, vocab), size=vocab, group=tp_mesh.get_group(),
                               reduce_hidden_grad=not isinstance(h, DTensor))
        w = local
    if isinstance(h, DTensor):
        h = h.redistribute(h.device_mesh, [Replicate()] * h.device_mesh.ndim).to_local(
            grad_placements=[Partial()] * h.device_mesh.ndim)
    return w, h, shard, div


def fused_linear_cross_entropy(
    hidden_states: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
    num_label_tokens: torch.Tensor | float | None = None, opts: Options = Options(),
) -> torch.Tensor:
    """``sum(token losses) / num_label_tokens`` of ``hidden_states @ weight.T`` against ``labels``.

    ``hidden_states`` ``[..., D]``, ``weight`` ``[V, D]``, ``labels`` ``[...]`` (``ignore_index``
    skipped). ``num_label_tokens`` defaults to this call's label-token count (a mean).
    """
    w, h, shard, div = _prepare_weight(weight, hidden_states)
    if h.dim() == 3 and labels.dim() == 2 and h.shape[0] == labels.shape[0] and h.shape[1] > labels.shape[1]:
        # sequence parallelism pads the sequence at the end to a multiple of the TP size: drop the pad
        h = h[:, : labels.shape[1]]
    h2 = h.reshape(-1, h.shape[-1])
    lab = labels.reshape(-1).to(h2.device)
    if lab.shape[0] != h2.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden states {tuple(hidden_states.shape)}")
    if num_label_tokens is None:
        num_label_tokens = (lab != opts.ignore_index).sum().clamp(min=1)
    scale = (1.0 / torch.as_tensor(num_label_tokens, dtype=torch.float32, device=h2.device)).reshape(())
    if torch.is_grad_enabled() and (h2.requires_grad or w.requires_grad):
        return _FusedLinearCE.apply(h2, w, lab, scale, opts, shard, div)
    return _forward_backward(h2, w, lab, scale, opts, shard, False, False)[0]
