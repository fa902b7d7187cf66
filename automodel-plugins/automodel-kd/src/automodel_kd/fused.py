"""Fused linear knowledge distillation: loss and student gradients from both models' final hidden
states and lm_head weights, chunk by chunk over tokens, without ever holding ``[tokens, vocab]``
logits of either model.

Only loss-bearing tokens (``labels != ignore_index``) are computed. For a chunk of ``C`` of them::

    zs = hs_c @ Ws^T,  zt = ht_c @ Wt^T                       [C, V] fp32 (student, teacher)
    q = softmax(zs / T), p = softmax(zt / T)                  (vocab-parallel TP: lse all-reduced)
    kd   = forward KL(p || q)  |  reverse KL(q || p)  |  JSD_beta(p, q)     per token
    ce   = logsumexp(zs) - zs[label]                                           per token
    loss += scale * ((1 - w) * ce + w * T^2 * kd)
    g     = d loss / d zs                                     [C, V], computed in closed form
    dWs  += g^T @ hs_c ;  dhs_c = g @ Ws

Both gradients are produced in the forward pass (as Liger's fused linear JSD and the triton-ce plugin
do); backward only scales them by the incoming gradient. Peak loss memory is the gradients of the
inputs (``dWs``, ``dhs``, which any loss needs) plus a few ``[C, V]`` fp32 chunks, whatever the number
of tokens. The teacher gets no gradient and is never differentiated through.

Gradients with respect to the student's tempered logits ``u = zs / T`` (``log q``, ``log p`` at ``T``)::

    forward KL  sum p (log p - log q)                     dL/du = q - p
    reverse KL  sum q (log q - log p) = L                 dL/du = q * (log q - log p - L)
    JSD_beta    b KL(p || m) + (1 - b) KL(q || m),        dL/du = q * (g - sum q g),
                m = b p + (1 - b) q                         g = (1 - b) (log q - log m)

and ``dL/dzs = dL/du / T``; with the usual ``T^2`` factor (Hinton et al.) the KD term's gradient
scale does not depend on the temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

KINDS = ("forward_kl", "reverse_kl", "jsd")
CHUNK_BYTES = 32 * 2**20  # one [rows, vocab] fp32 chunk; a handful of them are alive at once


@dataclass(frozen=True)
class KDOptions:
    """What the fused loss computes.

    Attributes:
        kind: ``forward_kl`` (KL(teacher || student), Hinton), ``reverse_kl`` (KL(student || teacher),
            mode-seeking, MiniLLM) or ``jsd`` (generalized Jensen-Shannon with ``beta``; GKD).
        temperature: both distributions are softened by it; the KD term is multiplied by ``T^2``.
        kd_weight: ``w`` in ``(1 - w) * CE + w * T^2 * KD`` (1: pure distillation, 0: plain CE).
        beta: the JSD mixture weight (``m = beta * p_teacher + (1 - beta) * q_student``), in (0, 1).
        ignore_index: label value of tokens that carry no loss (prompt, padding, packing boundaries).
        chunk_size: token rows per chunk (default: rows whose ``[rows, vocab]`` fp32 logits fit 32 MiB).
    """

    kind: str = "forward_kl"
    temperature: float = 1.0
    kd_weight: float = 0.5
    beta: float = 0.5
    ignore_index: int = -100
    chunk_size: int | None = None


@dataclass
class VocabShard:
    """This rank holds vocabulary rows ``[start, start + local)`` of ``size`` over ``group`` (TP)."""

    start: int
    size: int
    group: Any
    reduce_hidden_grad: bool  # hidden states are a plain replicated tensor: all-reduce dh ourselves


# --------------------------------------------------------------------------------------------------
# One chunk of tokens
# --------------------------------------------------------------------------------------------------


def _logsumexp(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Row logsumexp of ``x`` [C, V_local]; over the whole vocabulary when ``group`` is a TP group."""
    if group is None:
        return torch.logsumexp(x, dim=1)
    m = x.amax(dim=1)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    s = (x - m[:, None]).exp_().sum(dim=1)
    dist.all_reduce(s, group=group)
    return m + s.log()


def _row_sum(x: torch.Tensor, group: Any) -> torch.Tensor:
    s = x.sum(dim=1)
    if group is not None:
        dist.all_reduce(s, group=group)
    return s


def _chunk(zs: torch.Tensor, zt: torch.Tensor, tgt: torch.Tensor, opts: KDOptions, group: Any,
           want_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(CE per token, KD per token (without T^2), d(w_ce * ce + w_kd * T^2 * kd)/d zs or None).

    ``zs``/``zt`` are fp32 ``[C, V_local]`` and are overwritten. ``tgt`` is the label's column in this
    rank's vocabulary, -1 where it lives on another rank.
    """
    T, w = float(opts.temperature), float(opts.kd_weight)
    has_tgt = tgt >= 0
    rows = torch.arange(zs.shape[0], device=zs.device)
    # cross-entropy at temperature 1
    lse1 = _logsumexp(zs, group) if w < 1.0 else None
    zt_label = torch.where(has_tgt, zs[rows, tgt.clamp(min=0)], 0.0)
    if group is not None:
        dist.all_reduce(zt_label, group=group)
    ce = lse1 - zt_label if lse1 is not None else torch.zeros_like(zt_label)
    g_ce = None
    if want_grad and w < 1.0:  # softmax(zs) - onehot, before zs is tempered
        g_ce = (zs - lse1[:, None]).exp_()
        g_ce[rows[has_tgt], tgt[has_tgt]] -= 1.0
    if T != 1.0:
        zs.div_(T)
        zt.div_(T)
    log_q = zs.sub_(_logsumexp(zs, group)[:, None])  # student log-probs at T (in place of zs)
    log_p = zt.sub_(_logsumexp(zt, group)[:, None])  # teacher log-probs at T (in place of zt)
    q = log_q.exp()
    if opts.kind == "forward_kl":
        p = log_p.exp()
        kd = _row_sum(p * (log_p - log_q), group)
        g = q.sub_(p) if want_grad else None
    elif opts.kind == "reverse_kl":
        diff = log_q - log_p
        kd = _row_sum(q * diff, group)
        g = q.mul_(diff.sub_(kd[:, None])) if want_grad else None
    else:  # jsd
        b = float(opts.beta)
        log_m = torch.logaddexp(log_p + math.log(b), log_q + math.log(1.0 - b))
        p = log_p.exp()
        kd = _row_sum(p * (log_p - log_m), group) * b + _row_sum(q * (log_q - log_m), group) * (1.0 - b)
        g = None
        if want_grad:
            gq = log_q.sub(log_m).mul_(1.0 - b)
            g = q.mul_(gq.sub_(_row_sum(q * gq, group)[:, None]))
    if g is not None:
        g.mul_(w * T)  # T^2 * (1 / T): the tempered logits' chain rule
        if g_ce is not None:
            g.add_(g_ce, alpha=1.0 - w)
    return ce, kd, g


# --------------------------------------------------------------------------------------------------
# The chunk loop
# --------------------------------------------------------------------------------------------------


def chunk_rows(opts: KDOptions, vocab_local: int, n: int) -> int:
    """Token rows per chunk: ``rows x vocab`` fp32 logits fit ``CHUNK_BYTES`` (at least 8)."""
    if opts.chunk_size:
        return max(1, int(opts.chunk_size))
    return max(8, min(max(n, 1), CHUNK_BYTES // (4 * max(1, vocab_local))))


def _forward_backward(
    hs: torch.Tensor, ws: torch.Tensor, ht: torch.Tensor, wt: torch.Tensor, labels: torch.Tensor,
    scale: torch.Tensor, opts: KDOptions, shard: VocabShard | None, grad_h: bool, grad_w: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(loss, ce sum, kd sum, d loss/d hs, d loss/d ws) for flat ``hs`` [N, Ds], ``ht`` [N, Dt]."""
    vocab_local = ws.shape[0]
    vocab = shard.size if shard else vocab_local
    start = shard.start if shard else 0
    group = shard.group if shard else None
    valid = labels != opts.ignore_index
    idx = torch.nonzero(valid)[:, 0]
    n = idx.numel()
    dense = n == hs.shape[0]
    tv = labels if dense else labels.index_select(0, idx)
    if n and bool(((tv < 0) | (tv >= vocab)).any()):
        raise ValueError(f"labels must be in [0, {vocab}) or {opts.ignore_index}; got {tv.min().item()}..{tv.max().item()}")
    tgt_all = tv - start
    tgt_all = torch.where((tgt_all >= 0) & (tgt_all < vocab_local), tgt_all, -1)
    hv = (hs if dense else hs.index_select(0, idx)).to(ws.dtype)
    tv_h = (ht if dense else ht.index_select(0, idx)).to(wt.dtype)
    want_grad = grad_h or grad_w
    rows = chunk_rows(opts, vocab_local, n)

    f32 = torch.float64 if ws.dtype == torch.float64 else torch.float32  # the math's dtype (fp32 at least)
    ce_sum = torch.zeros((), dtype=f32, device=hs.device)
    kd_sum = torch.zeros((), dtype=f32, device=hs.device)
    dw = None
    if grad_w:
        dw = torch.zeros(ws.shape, dtype=f32, device=ws.device)
    acc = torch.zeros(n, hs.shape[1], dtype=f32, device=hs.device) if grad_h else None
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        h_c = hv[r0:r1]
        zs = (h_c @ ws.t()).to(f32)
        zt = (tv_h[r0:r1] @ wt.t()).to(f32)
        ce, kd, g = _chunk(zs, zt, tgt_all[r0:r1], opts, group, want_grad)
        del zs, zt
        ce_sum += ce.sum()
        kd_sum += kd.sum()
        if g is not None:
            g.mul_(scale)
            gl = g if g.dtype == ws.dtype else g.to(ws.dtype)  # low-precision weights: GEMMs in their dtype
            if dw is not None:
                if gl.dtype == f32:
                    dw.addmm_(gl.t(), h_c)  # no [V, D] temporary
                else:
                    dw.add_(gl.t() @ h_c)
            if acc is not None:
                acc[r0:r1] = gl @ ws
            del gl
            del g
    w, T = float(opts.kd_weight), float(opts.temperature)
    loss = ((1.0 - w) * ce_sum + w * T * T * kd_sum) * scale
    dh = None
    if acc is not None:
        if shard is not None and shard.reduce_hidden_grad:
            dist.all_reduce(acc, group=group)
        if dense:
            dh = acc.to(hs.dtype)
        else:
            dh = torch.zeros_like(hs)
            dh.index_copy_(0, idx, acc.to(hs.dtype))
        del acc
    if dw is not None:
        dw = dw.to(ws.dtype)
    return loss, ce_sum, kd_sum, dh, dw


class _FusedLinearKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hs: torch.Tensor, ws: torch.Tensor, ht: torch.Tensor, wt: torch.Tensor, labels: torch.Tensor,
                scale: torch.Tensor, opts: KDOptions, shard: VocabShard | None, w_grad_div: float,
                parts: dict[str, torch.Tensor] | None) -> torch.Tensor:
        loss, ce, kd, dh, dw = _forward_backward(hs, ws, ht, wt, labels, scale, opts, shard,
                                                 ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if parts is not None:
            parts.update(ce_sum=ce, kd_sum=kd)
        ctx.save_for_backward(dh, dw)
        ctx.w_grad_div = w_grad_div
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        dh, dw = ctx.saved_tensors
        if dh is not None:
            dh = dh * grad
        if dw is not None:
            dw = dw * (grad / ctx.w_grad_div if ctx.w_grad_div != 1 else grad)
        return dh, dw, None, None, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------------
# Entry point (plain tensors, DTensors from FSDP2 / vocab-parallel TP)
# --------------------------------------------------------------------------------------------------


def _prepare_weight(w: Any, h: Any, with_grad: bool) -> tuple[torch.Tensor, VocabShard | None, float]:
    """A (possibly DTensor) lm_head weight as a local tensor.

    * FSDP2 (``Shard(0)``/``Replicate`` on data-parallel dims): all-gathered; with autograd its
      gradient comes back ``Partial`` and is summed onto the shards, so it is pre-divided by the
      data-parallel degree (FSDP2 averages and the loop multiplies the loss by that degree).
    * TP vocab-parallel (``Shard(0)`` on ``tp``): keep this rank's vocabulary rows and combine the
      softmax statistics over the tp group (:class:`VocabShard`).
    """
    try:
        from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
    except ImportError:  # pragma: no cover
        return w, None, 1.0
    if not isinstance(w, DTensor):
        return w, None, 1.0
    mesh = w.device_mesh
    names = list(mesh.mesh_dim_names or [])
    placements = list(w.placements)
    tp_dim = names.index("tp") if "tp" in names and placements[names.index("tp")] == Shard(0) else None
    target = [Shard(0) if i == tp_dim else Replicate() for i in range(mesh.ndim)]
    div = 1.0
    for i in range(mesh.ndim):
        if i != tp_dim:
            div *= mesh.size(i)
    vocab = w.shape[0]
    if with_grad:
        grads = [Shard(0) if i == tp_dim else Partial() for i in range(mesh.ndim)]
        local = w.redistribute(mesh, target).to_local(grad_placements=grads)
    else:
        local = w.detach().redistribute(mesh, target).to_local()
        div = 1.0
    shard = None
    if tp_dim is not None:
        tp_mesh = mesh[names[tp_dim]]
        rank, size = tp_mesh.get_local_rank(), tp_mesh.size()
        per = -(-vocab // size)
        shard = VocabShard(start=min(rank * per, vocab), size=vocab, group=tp_mesh.get_group(),
                           reduce_hidden_grad=not isinstance(h, DTensor))
    return local, shard, div


def _replicated(h: Any, with_grad: bool) -> torch.Tensor:
    try:
        from torch.distributed.tensor import DTensor, Partial, Replicate
    except ImportError:  # pragma: no cover
        return h
    if not isinstance(h, DTensor):
        return h
    full = [Replicate()] * h.device_mesh.ndim
    if with_grad:
        return h.redistribute(h.device_mesh, full).to_local(grad_placements=[Partial()] * h.device_mesh.ndim)
    return h.detach().redistribute(h.device_mesh, full).to_local()


def _flat(h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if h.dim() == 3 and labels.dim() == 2 and h.shape[0] == labels.shape[0] and h.shape[1] > labels.shape[1]:
        h = h[:, : labels.shape[1]]  # sequence parallelism pads the sequence to a multiple of the TP size
    return h.reshape(-1, h.shape[-1])


def fused_linear_kd(
    student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor, labels: torch.Tensor, num_label_tokens: torch.Tensor | float | None = None,
    opts: KDOptions = KDOptions(), parts: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``sum over label tokens of ((1 - w) * CE + w * T^2 * KD) / num_label_tokens``.

    ``student_hidden`` ``[..., Ds]`` with ``student_weight`` ``[V, Ds]`` (the student's lm_head),
    ``teacher_hidden`` ``[..., Dt]`` with ``teacher_weight`` ``[V, Dt]`` (no gradient), ``labels``
    ``[...]`` (shifted; ``ignore_index`` skipped). ``num_label_tokens`` defaults to this call's
    label-token count (a mean). ``parts``, when given, receives the unscaled sums ``ce_sum``/``kd_sum``.
    """
    grad = torch.is_grad_enabled() and (student_hidden.requires_grad or student_weight.requires_grad)
    ws, shard, div = _prepare_weight(student_weight, student_hidden, grad)
    with torch.no_grad():
        wt, tshard, _ = _prepare_weight(teacher_weight, teacher_hidden, False)
        ht = _replicated(teacher_hidden, False)
    if wt.shape[0] != ws.shape[0] or (shard is None) != (tshard is None) or (shard and shard.start != tshard.start):
        raise ValueError(f"the teacher's lm_head has {tuple(teacher_weight.shape)} rows/layout but the student's has "
                         f"{tuple(student_weight.shape)}: both must cover the same vocabulary, sharded the same way")
    hs = _replicated(student_hidden, grad)
    hs2, ht2 = _flat(hs, labels), _flat(ht, labels)
    lab = labels.reshape(-1).to(hs2.device)
    if lab.shape[0] != hs2.shape[0] or ht2.shape[0] != hs2.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden states {tuple(student_hidden.shape)} "
                         f"(student) / {tuple(teacher_hidden.shape)} (teacher)")
    if num_label_tokens is None:
        num_label_tokens = (lab != opts.ignore_index).sum().clamp(min=1)
    f32 = torch.float64 if ws.dtype == torch.float64 else torch.float32
    scale = (1.0 / torch.as_tensor(num_label_tokens, dtype=f32, device=hs2.device)).reshape(())
    ht2 = ht2.detach()
    wt = wt.detach()
    if grad:
        return _FusedLinearKD.apply(hs2, ws, ht2, wt, lab, scale, opts, shard, div, parts)
    with torch.no_grad():
        loss, ce, kd, _, _ = _forward_backward(hs2, ws, ht2, wt, lab, scale, opts, shard, False, False)
    if parts is not None:
        parts.update(ce_sum=ce, kd_sum=kd)
    return loss


# --------------------------------------------------------------------------------------------------
# The plain PyTorch reference (full logits): for tests and the benchmark's naive baseline
# --------------------------------------------------------------------------------------------------


def reference_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      num_label_tokens: torch.Tensor | float | None = None, opts: KDOptions = KDOptions()) -> torch.Tensor:
    """The same loss from full ``[..., V]`` logits with ``torch.nn.functional`` (autograd gives the
    gradient): what a naive KD step computes, holding both models' logits and log-probabilities."""
    import torch.nn.functional as F

    V = student_logits.shape[-1]
    f32 = torch.promote_types(student_logits.dtype, torch.float32)
    zs = student_logits.reshape(-1, V).to(f32)
    zt = teacher_logits.reshape(-1, V).to(f32).detach()
    lab = labels.reshape(-1)
    mask = lab != opts.ignore_index
    if num_label_tokens is None:
        num_label_tokens = mask.sum().clamp(min=1)
    T, w = opts.temperature, opts.kd_weight
    ce = F.cross_entropy(zs, lab, ignore_index=opts.ignore_index, reduction="none")
    log_q = F.log_softmax(zs / T, dim=-1)
    log_p = F.log_softmax(zt / T, dim=-1)
    if opts.kind == "forward_kl":
        kd = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    elif opts.kind == "reverse_kl":
        kd = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    else:
        b = opts.beta
        log_m = torch.logsumexp(torch.stack([log_p + math.log(b), log_q + math.log(1 - b)]), dim=0)
        kd = (b * F.kl_div(log_m, log_p, log_target=True, reduction="none").sum(-1)
              + (1 - b) * F.kl_div(log_m, log_q, log_target=True, reduction="none").sum(-1))
    token = (1 - w) * ce + w * T * T * kd
    return torch.where(mask, token, 0.0).sum() / num_label_tokens
