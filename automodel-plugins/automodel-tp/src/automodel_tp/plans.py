"""Sharding plans: module-name pattern -> style name, and the torch ``ParallelStyle`` behind each name.

Style names follow transformers' ``tp_plan`` vocabulary (``colwise``, ``rowwise``,
``colwise_gather_output``, ``embedding_rowwise``, ``replicated_with_grad_allreduce``, ...), so a model's
own ``_tp_plan`` is used as is; a few more names cover sequence and loss parallelism.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, SequenceParallel

# -- custom styles -----------------------------------------------------------------------------------


def _replicate_params(module: nn.Module, mesh: Any) -> None:
    for name, param in list(module.named_parameters(recurse=False)):
        if not isinstance(param, DTensor):
            dt = distribute_tensor(param.data, mesh, [Replicate()], src_data_rank=None)
            module.register_parameter(name, nn.Parameter(dt, requires_grad=param.requires_grad))


class ReplicateParallel(ParallelStyle):
    """Keep the module whole on every rank, with its parameters as replicated DTensors (so that gradient
    clipping and the optimizer see one kind of tensor). Positional tensor inputs are taken as replicated
    (``input_dim=None``) or as sharded on ``input_dim`` (per-head norms between a colwise and a rowwise
    layer); the output is returned as a local tensor. When the input is sharded, the parameter
    gradients are partial sums and DTensor all-reduces them."""

    def __init__(self, input_dim: int | None = None):
        self.input_dim = input_dim

    def _input_fn(self, module: nn.Module, inputs: tuple[Any, ...], mesh: Any) -> tuple[Any, ...]:
        out = []
        for x in inputs:
            if isinstance(x, torch.Tensor) and not isinstance(x, DTensor):
                placement = Replicate() if self.input_dim is None else Shard(self.input_dim % x.ndim)
                x = DTensor.from_local(x, mesh, [placement], run_check=False)
            out.append(x)
        return tuple(out)

    @staticmethod
    def _output_fn(module: nn.Module, output: Any, mesh: Any) -> Any:
        if isinstance(output, DTensor):
            return output.to_local()
        if isinstance(output, tuple):
            return tuple(o.to_local() if isinstance(o, DTensor) else o for o in output)
        return output

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        return distribute_module(
            module, device_mesh, lambda name, mod, mesh: _replicate_params(mod, mesh), self._input_fn, self._output_fn
        )


def _hidden_states_hook(transform: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    """A forward pre-hook (with kwargs) applying ``transform`` to the module's hidden-states input:
    the first positional argument, else the ``hidden_states`` keyword."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args and isinstance(args[0], torch.Tensor):
            return (transform(args[0]), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, {**kwargs, "hidden_states": transform(kwargs["hidden_states"])}
        return None

    return hook


class ShardSequence(ParallelStyle):
    """Sequence parallelism entry point (the first decoder layer): the full hidden states become this
    rank's slice of the sequence (no communication; the backward all-gathers)."""

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        def shard(x: torch.Tensor) -> torch.Tensor:
            if isinstance(x, DTensor):
                return x.redistribute(device_mesh, [Shard(1)]).to_local()
            return DTensor.from_local(x, device_mesh, [Replicate()], run_check=False).redistribute(device_mesh, [Shard(1)]).to_local()

        module.register_forward_pre_hook(_hidden_states_hook(shard), with_kwargs=True)
        return module


class GatherSequence(ParallelStyle):
    """Before attention / MLP under sequence parallelism: all-gather the sequence-sharded hidden states
    (the backward reduce-scatters)."""

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        def gather(x: torch.Tensor) -> torch.Tensor:
            if not isinstance(x, DTensor):
                x = DTensor.from_local(x, device_mesh, [Shard(1)], run_check=False)
            return x.redistribute(device_mesh, [Replicate()]).to_local()

        module.register_forward_pre_hook(_hidden_states_hook(gather), with_kwargs=True)
        return module


# -- the style table -------------------------------------------------------------------------------------

#: style name -> factory of a fresh ``ParallelStyle``. ``None``: leave the module whole (replicated).
STYLES: dict[str, Callable[[], ParallelStyle]] = {
    # transformers' names
    "colwise": lambda: ColwiseParallel(),
    "rowwise": lambda: RowwiseParallel(),
    "colwise_gather_output": lambda: ColwiseParallel(output_layouts=Replicate()),
    "colwise_rep": lambda: ColwiseParallel(output_layouts=Replicate()),
    "rowwise_rep": lambda: RowwiseParallel(input_layouts=Replicate()),
    "rowwise_split_input": lambda: RowwiseParallel(input_layouts=Replicate()),
    "embedding_rowwise": lambda: RowwiseParallel(input_layouts=Replicate()),
    "embedding_colwise": lambda: ColwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
    "replicated_with_grad_allreduce": lambda: ReplicateParallel(input_dim=-2),
    "replicate": lambda: ReplicateParallel(),
    "sequence_parallel": lambda: SequenceParallel(),
    # loss parallel: vocabulary-sharded logits go to the loss as a DTensor, never gathered
    "colwise_loss_parallel": lambda: ColwiseParallel(output_layouts=Shard(-1), use_local_output=False),
    # sequence parallel
    "shard_sequence": lambda: ShardSequence(),
    "gather_sequence": lambda: GatherSequence(),
    "rowwise_sequence_output": lambda: RowwiseParallel(output_layouts=Shard(1)),
    "colwise_sequence_input": lambda: ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    "colwise_sequence_input_loss_parallel": lambda: ColwiseParallel(
        input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False
    ),
}

#: The plugin's own plan for the Llama family (Llama, Mistral, Qwen2, Qwen3 share these module names),
#: used when the model does not carry a ``_tp_plan`` of its own.
LLAMA_PLAN: dict[str, str] = {
    "lm_head": "colwise_gather_output",
    "model.embed_tokens": "embedding_rowwise",
    "model.layers.*.self_attn.q_proj": "colwise",
    "model.layers.*.self_attn.k_proj": "colwise",
    "model.layers.*.self_attn.v_proj": "colwise",
    "model.layers.*.self_attn.q_norm": "replicated_with_grad_allreduce",
    "model.layers.*.self_attn.k_norm": "replicated_with_grad_allreduce",
    "model.layers.*.self_attn.o_proj": "rowwise",
    "model.layers.*.mlp.gate_proj": "colwise",
    "model.layers.*.mlp.up_proj": "colwise",
    "model.layers.*.mlp.down_proj": "rowwise",
}

#: Sequence parallelism for the Llama family, laid over the plan: norms work on sequence shards; the
#: first layer shards the sequence (embeddings stay replicated so that transformers computes positions
#: and masks on the full sequence); attention and MLP gather it and their rowwise outputs scatter it.
SEQUENCE_PLAN: dict[str, str] = {
    "model.layers.0": "shard_sequence",
    "model.layers.*.input_layernorm": "sequence_parallel",
    "model.layers.*.post_attention_layernorm": "sequence_parallel",
    "model.layers.*.self_attn": "gather_sequence",
    "model.layers.*.mlp": "gather_sequence",
    "model.layers.*.self_attn.o_proj": "rowwise_sequence_output",
    "model.layers.*.mlp.down_proj": "rowwise_sequence_output",
    "model.norm": "sequence_parallel",
}

#: How the lm_head style changes under loss / sequence parallelism.
LM_HEAD_STYLE = {
    (False, False): "colwise_gather_output",
    (True, False): "colwise_loss_parallel",
    (False, True): "colwise_sequence_input",
    (True, True): "colwise_sequence_input_loss_parallel",
}


def match(patterns: dict[str, str], names: list[str]) -> dict[str, tuple[str, str]]:
    """module name -> (style, pattern) for the first pattern (in order) matching each name."""
    out: dict[str, tuple[str, str]] = {}
    for pattern, style in patterns.items():
        for name in names:
            if name not in out and fnmatch.fnmatchcase(name, pattern):
                out[name] = (style, pattern)
    return out


def resolve(
    model: nn.Module,
    lm_head: str | None,
    sequence_parallel: bool,
    loss_parallel: bool,
    overrides: dict[str, str] | None,
) -> tuple[dict[str, str], str, list[str]]:
    """The plan for ``model`` as module name -> style name, where it came from, and the override
    patterns that matched no module (likely typos).

    Layers, highest priority first: the user's ``plan:``; the sequence-parallel additions; the model's
    own ``_tp_plan`` (transformers) or else :data:`LLAMA_PLAN`. ``lm_head`` (the output embedding's
    module name) gets the style that sequence / loss parallelism need unless the user set it.
    """
    names = [n for n, _ in model.named_modules() if n]
    own = dict(getattr(model, "_tp_plan", None) or {})
    base, source = (own, "transformers _tp_plan") if own else (dict(LLAMA_PLAN), "automodel-tp llama plan")
    layered: dict[str, str] = {}
    if sequence_parallel:
        layered.update(SEQUENCE_PLAN)
    if lm_head is not None:
        layered[lm_head] = LM_HEAD_STYLE[(loss_parallel, sequence_parallel)]
    user = match(overrides or {}, names)
    unused = [p for p in (overrides or {}) if not any(pat == p for _, pat in user.values())]
    plan = {n: s for n, (s, _) in match(base, names).items()}
    plan.update({n: s for n, (s, _) in match(layered, names).items()})
    plan.update({n: s for n, (s, _) in user.items()})
    if sequence_parallel and not any(s == "shard_sequence" for s in plan.values()):
        source += " (sequence_parallel found no first decoder layer 'model.layers.0')"
    # "replicate" on a module without parameters (an activation a glob caught) has nothing to do
    empty = {n for n, m in model.named_modules() if n and next(m.parameters(), None) is None}
    return {n: plan[n] for n in names if n in plan and not (plan[n] == "replicate" and n in empty)}, source, unused
