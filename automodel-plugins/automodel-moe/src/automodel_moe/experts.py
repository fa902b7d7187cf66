"""Finding the experts and routers of a Hugging Face MoE model, and the expert-parallel forward.

transformers (5.x) stores the experts of most MoE families as one module with two 3-D parameters,
``gate_up_proj [experts, 2 * intermediate, hidden]`` and ``down_proj [experts, hidden, intermediate]``,
called as ``experts(hidden_states [tokens, hidden], top_k_index [tokens, k], top_k_weights [tokens, k])``,
next to a router (``gate``) returning ``(router_logits, top_k_weights, top_k_index)``. Every family
with that layout works without per-model code; the layout flags transformers puts on the experts
class (``is_transposed``, ``has_bias``, ...) say when a family differs (gpt-oss), and those are refused
with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from automodel.errors import AutomodelError
from torch import nn

#: Families tested here (built from config, trained at ep=1/2); any other family with the same layout
#: works the same way.
TESTED_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3")

#: The layout flags transformers' ``use_experts_implementation`` puts on an experts module, and the
#: value this plugin's forward assumes.
LAYOUT_FLAGS = {"is_transposed": False, "has_bias": False, "has_gate": True, "is_concatenated": True,
                "has_post_expert_norm": False}


@dataclass
class MoeLayer:
    """One MoE block: its name, the experts module and the router (``None``: no router found)."""

    name: str
    block: nn.Module
    experts: nn.Module
    router: nn.Module | None

    @property
    def num_experts(self) -> int:
        return int(self.experts.gate_up_proj.shape[0])


def _unsupported(experts: nn.Module) -> str | None:
    """Why ``experts`` cannot run with this plugin's forward (``None``: it can)."""
    params = dict(experts.named_parameters(recurse=False))
    if set(params) != {"gate_up_proj", "down_proj"}:
        return f"expert parameters {sorted(params)}, expected exactly gate_up_proj and down_proj"
    if params["gate_up_proj"].dim() != 3 or params["down_proj"].dim() != 3:
        return "expert parameters are not 3-D [experts, out, in] tensors"
    for flag, want in LAYOUT_FLAGS.items():
        if getattr(experts, flag, want) != want:
            return f"{type(experts).__name__}.{flag} is {not want} (this plugin computes {flag}={want})"
    if not callable(getattr(experts, "act_fn", None)):
        return "no act_fn on the experts module"
    e, two_i, h = params["gate_up_proj"].shape
    if tuple(params["down_proj"].shape) != (e, h, two_i // 2):
        return f"down_proj {tuple(params['down_proj'].shape)} does not match gate_up_proj {(e, two_i, h)}"
    return None


def find_moe_layers(model: nn.Module) -> list[MoeLayer]:
    """Every MoE block of ``model`` (a block is a module with an ``experts`` child holding 3-D expert
    weights). Raises a clear error for a model without one, or with experts laid out otherwise."""
    layers, refused = [], []
    for name, module in model.named_modules():
        experts = getattr(module, "experts", None)
        if not isinstance(experts, nn.Module) or not hasattr(experts, "gate_up_proj") and not hasattr(experts, "down_proj"):
            if isinstance(experts, nn.ModuleList):
                refused.append((name, "experts are an nn.ModuleList of separate MLPs (older transformers layout)"))
            continue
        why = _unsupported(experts)
        if why:
            refused.append((name, why))
            continue
        router = getattr(module, "gate", None)
        router = router if isinstance(router, nn.Module) and getattr(router, "weight", None) is not None else None
        layers.append(MoeLayer(name, module, experts, router))
    family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if refused:
        name, why = refused[0]
        raise AutomodelError(
            f"model: the MoE layers of '{family}' ({type(model).__name__}) are laid out in a way automodel-moe does not "
            f"support: {name}.experts: {why}. Supported: experts with fused 3-D gate_up_proj/down_proj weights and a "
            f"top-k router (tested: {', '.join(TESTED_FAMILIES)})"
        )
    if not layers:
        raise AutomodelError(
            f"model: '{family}' ({type(model).__name__}) has no Mixture-of-Experts layers (no module with an 'experts' "
            f"child); the moe transform and the ep parallelizer need an MoE model such as {', '.join(TESTED_FAMILIES)}"
        )
    return layers


# -- expert parallel forward -------------------------------------------------------------------------------


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with uneven splits; the backward sends the gradients back the same way."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return grad * ctx.scale, None


@dataclass
class EPState:
    """What an expert-parallel experts module needs at forward time."""

    group: Any  # the ep process group (None: one rank)
    size: int
    rank: int
    num_experts: int
    grad_scale: float = 1.0  # expert gradients arrive summed over the ep ranks' tokens: undo the dp scaling

    @property
    def local(self) -> int:
        return self.num_experts // self.size


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


def compute_experts(experts: nn.Module, x: torch.Tensor, per_expert: list[int], w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` grouped by local expert (``per_expert`` rows each) through their expert MLPs."""
    outs = []
    for e, xe in enumerate(torch.split(x, per_expert)):
        if xe.shape[0] == 0:
            continue
        h = experts._apply_gate(F.linear(xe, w1[e])) if hasattr(experts, "_apply_gate") else _gate(experts, F.linear(xe, w1[e]))
        outs.append(F.linear(h, w2[e]))
    if not outs:  # no token for any local expert: still an (empty) output that depends on x and the weights, so
        # that every rank runs both backward all-to-alls and has (zero) expert gradients for FSDP to reduce
        return F.linear(_gate(experts, F.linear(x, w1[0])), w2[0])
    return torch.cat(outs)


def _gate(experts: nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return experts.act_fn(gate) * up


def ep_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """The experts forward under expert parallelism: this rank's (token, expert) assignments are sorted
    by expert, sent to the rank owning each expert (all-to-all), computed there, sent back and combined
    with the routing weights. Indices outside ``[0, num_experts)`` (a capacity router's "dropped") are
    skipped, as transformers does."""
    st: EPState = self._automodel_ep
    w1, w2 = _local(self.gate_up_proj), _local(self.down_proj)
    if st.grad_scale != 1.0:
        w1, w2 = _ScaleGrad.apply(w1, st.grad_scale), _ScaleGrad.apply(w2, st.grad_scale)
    w1, w2 = w1.to(hidden_states.dtype), w2.to(hidden_states.dtype)
    k = top_k_index.shape[-1]
    flat = top_k_index.reshape(-1)
    valid = (flat >= 0) & (flat < st.num_experts)
    order = torch.argsort(torch.where(valid, flat, st.num_experts), stable=True)[: int(valid.sum())]
    counts = torch.bincount(flat[order], minlength=st.num_experts)
    x = hidden_states[order // k]
    if st.size > 1:
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts, group=st.group)  # [source rank, local expert] counts
        send_splits = counts.view(st.size, st.local).sum(1).tolist()
        recv_splits = recv.view(st.size, st.local).sum(1).tolist()
        x = _AllToAll.apply(x, recv_splits, send_splits, st.group)
        local_ids = torch.arange(st.local, device=x.device).repeat(st.size).repeat_interleave(recv)
        perm = torch.argsort(local_ids, stable=True)  # source-major -> expert-major
        y = compute_experts(self, x[perm], recv.view(st.size, st.local).sum(0).tolist(), w1, w2)
        y = torch.zeros_like(y).index_copy(0, perm, y)
        y = _AllToAll.apply(y, send_splits, recv_splits, st.group)
    else:
        y = compute_experts(self, x, counts.tolist(), w1, w2)
    y = y * top_k_weights.reshape(-1)[order, None].to(y.dtype)
    return torch.zeros_like(hidden_states).index_add(0, order // k, y.to(hidden_states.dtype))
