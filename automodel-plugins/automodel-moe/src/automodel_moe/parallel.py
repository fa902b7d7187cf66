"""The ``ep`` parallelizer: shard the experts of a Hugging Face MoE model over the ``ep`` mesh dimension."""

from __future__ import annotations

from types import MethodType
from typing import Any

from automodel.errors import AutomodelError

from automodel_moe.config import expert_count


class ExpertParallel:
    """Expert parallelism: each of the ``size`` ranks of an ``ep`` group holds ``num_experts / size``
    experts (the 3-D expert weights become ``Shard(0)`` DTensors); each rank routes its own tokens and
    an all-to-all sends them to the experts' owners and the results back.

    The ``ep`` ranks train on different data, so every parameter outside the experts (attention,
    router, embeddings, shared experts) is data parallel over them: ``fsdp2`` is required and shards
    those over ``dp_shard x ep``; the experts are FSDP-sharded over ``dp_shard`` only (ep x dp).

    * ``size``: ranks per expert-parallel group (``None``: the ranks the others leave); must divide the
      number of experts.
    """

    dim = "ep"
    meta_init = True

    def __init__(self, size: int | None = None):
        self.size = size

    # -- before launch ------------------------------------------------------------------------------

    @staticmethod
    def validate_args(args: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str, str]]:
        names = [p.get("name") for p in config.get("parallel") or [] if isinstance(p, dict)]
        out = []
        if "fsdp2" not in names:
            out.append(("", "expert parallelism needs fsdp2 for the parameters outside the experts (each ep rank "
                        "trains on its own tokens, so attention, router and embeddings are data parallel over ep)",
                        "add {name: fsdp2} to parallel: (it takes the ranks ep leaves)"))
        for other in ("tp", "ddp", "cp", "fsdp2_replicate"):
            if other in names:
                out.append(("", f"ep with {other} is not supported", f"remove {{name: {other}}} or the ep parallelizer"))
        return out

    def validate_model(self, model_cfg: dict[str, Any], architecture: dict[str, Any] | None = None) -> list[tuple[str, str]]:
        """The number of experts must split evenly over ``size`` ranks (when the loader declares the
        model's architecture before launch)."""
        config = architecture
        if not config or not self.size:
            return []
        n = expert_count(config)
        if n is None:
            return [("the model config names no number of experts (num_local_experts / num_experts / "
                     "n_routed_experts): is it a Mixture-of-Experts model?", "use ep with an MoE model such as Mixtral or Qwen3-MoE")]
        if n % self.size:
            divisors = [d for d in range(1, n + 1) if n % d == 0]
            return [(f"expert parallelism over {self.size} ranks needs the number of experts ({n}) divisible by {self.size}",
                     f"use an ep size in {divisors}")]
        return []

    # -- in each process ------------------------------------------------------------------------------

    def apply(self, model: Any, mesh: Any, ctx: Any) -> Any:
        from torch import nn
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import Shard, distribute_tensor

        from automodel_moe.experts import EPState, ep_forward, find_moe_layers

        ep_mesh = mesh[self.dim]
        size = ep_mesh.size()
        hf = _base_model(model)
        layers = find_moe_layers(hf)
        names = tuple(mesh.mesh_dim_names or ())
        shard_mesh = mesh["dp_shard"] if "dp_shard" in names else None
        full_bytes = local_bytes = 0
        for layer in layers:
            experts = layer.experts
            if layer.num_experts % size:
                raise AutomodelError(f"parallel.ep: {layer.name} has {layer.num_experts} experts, not divisible by ep size {size}")
            for pname in ("gate_up_proj", "down_proj"):
                p = getattr(experts, pname)
                dt = distribute_tensor(p.data, ep_mesh, [Shard(0)], src_data_rank=None)
                experts.register_parameter(pname, nn.Parameter(dt, requires_grad=p.requires_grad))
                full_bytes += p.numel() * p.element_size()
                local_bytes += dt.to_local().numel() * p.element_size()
            experts._automodel_ep = EPState(ep_mesh.get_group(), size, ep_mesh.get_local_rank(), layer.num_experts,
                                            grad_scale=1.0 / size)
            experts.forward = MethodType(ep_forward, experts)
            if shard_mesh is not None:  # nested FSDP unit: fsdp2's block-level fully_shard skips these
                fully_shard(experts, mesh=shard_mesh, reshard_after_forward=True)
        if ctx.is_main:
            n = layers[0].num_experts
            print(f"ep: {len(layers)} MoE layers, {n} experts each, {n // size} per rank over {size} ranks "
                  f"(all-to-all dispatch){', experts FSDP-sharded over dp_shard' if shard_mesh is not None and shard_mesh.size() > 1 else ''}; "
                  f"expert weights {local_bytes / 2**20:.2f} MiB per ep rank ({full_bytes / 2**20:.2f} MiB unsharded)",
                  flush=True)
        return model


def _base_model(model: Any) -> Any:
    """The transformers model inside wrappers (PEFT, DDP)."""
    from automodel.weights import unwrap

    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return unwrap(model)
