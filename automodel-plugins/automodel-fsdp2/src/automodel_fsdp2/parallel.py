"""FSDP2 for any Hugging Face causal LM: ``fully_shard`` on every decoder block, then on the root.

The decoder block classes come from the model's ``_no_split_modules`` (what ``transformers`` itself
never splits across devices) or, failing that, the children of the largest ``nn.ModuleList``. With
``meta_init`` (the default) the core builds the model on the meta device, this plugin shards it, and
``automodel.weights.materialize`` gives each rank storage for its shards only and reads only its
slices of the safetensors files.
"""

from __future__ import annotations

from typing import Any, Literal

from automodel.blocks import checkpoint_blocks, find_blocks
from automodel.errors import AutomodelError

DTYPES = ("float32", "bfloat16", "float16")


class FSDP2:
    """Shard parameters, gradients and optimizer state over ``dp_shard`` (HSDP with ``fsdp2_replicate``).

    Config keys:

    * ``size``: ranks to shard over; ``None`` (default) takes the ranks the other parallelizers leave.
    * ``param_dtype`` / ``reduce_dtype`` / ``output_dtype``: ``MixedPrecisionPolicy`` (``float32``,
      ``bfloat16``, ``float16``); ``None`` keeps the parameters' own dtype.
    * ``reshard_after_forward``: free gathered parameters after forward (``True``, default), keep them
      (``False``, faster, more memory), or an int: reshard to that smaller group size.
    * ``reduce_every_micro_batch``: with gradient accumulation, reduce-scatter the gradients after every
      micro-batch, so they stay sharded (1/n of them per rank) at the cost of one reduce-scatter per
      micro-batch. The default (``False``) reduces once per step, on the last micro-batch: one
      reduce-scatter, but each rank holds the whole model's unsharded gradients until then.
    * ``cpu_offload``: keep sharded parameters, gradients and optimizer state in host memory.
    * ``activation_checkpointing``: recompute each block's activations in backward.
    * ``block_classes``: class names to shard one by one, instead of ``_no_split_modules``.
    * ``meta_init``: build on the meta device and load only this rank's shards (default ``True``).
    """

    dim = "dp_shard"

    def __init__(
        self,
        size: int | None = None,
        param_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        reduce_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        output_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        reshard_after_forward: bool | int = True,
        reduce_every_micro_batch: bool = False,
        cpu_offload: bool = False,
        activation_checkpointing: bool = False,
        block_classes: list[str] | None = None,
        meta_init: bool = True,
    ):
        for key, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype), ("output_dtype", output_dtype)):
            if value is not None and value not in DTYPES:
                raise AutomodelError(f"parallel.fsdp2.{key}: expected one of {', '.join(DTYPES)}, got {value!r}")
        self.size = size
        self.param_dtype = param_dtype
        self.reduce_dtype = reduce_dtype
        self.output_dtype = output_dtype
        self.reshard_after_forward = reshard_after_forward
        self.reduce_every_micro_batch = reduce_every_micro_batch
        self.cpu_offload = cpu_offload
        self.activation_checkpointing = activation_checkpointing
        self.block_classes = list(block_classes) if block_classes else None
        self.meta_init = meta_init
        self.param_device = "cpu" if cpu_offload else None  # sharded parameters live on the host

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Checks run before launch (types and dtype names are checked from the signature)."""
        out = []
        reshard = args.get("reshard_after_forward", True)
        if isinstance(reshard, int) and not isinstance(reshard, bool) and reshard < 2:
            out.append(("reshard_after_forward", f"an int is the group size to reshard to and must be >= 2, got {reshard}",
                        "use true, false, or a divisor of the dp_shard size such as the GPUs per node"))
        if args.get("block_classes") is not None and not args["block_classes"]:
            out.append(("block_classes", "empty list", "leave it out to use the model's _no_split_modules"))
        return out

    # -- the contract -----------------------------------------------------------------------------

    def apply(self, model: Any, mesh: Any, ctx: Any) -> Any:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        dp_mesh = self._dp_mesh(mesh)
        mp = MixedPrecisionPolicy(
            param_dtype=_dtype(self.param_dtype), reduce_dtype=_dtype(self.reduce_dtype),
            output_dtype=_dtype(self.output_dtype),
        )
        offload = CPUOffloadPolicy(pin_memory=ctx.device.type == "cuda") if self.cpu_offload else OffloadPolicy()
        if not self.cpu_offload and not any(p.is_meta for p in model.parameters()):
            model.to(ctx.device)

        blocks = find_blocks(model, self.block_classes, key="parallel.fsdp2.block_classes")
        if self.activation_checkpointing:  # the same as transforms: [{name: activation_checkpointing}]
            checkpoint_blocks(blocks)
        # Bottom-up: nested blocks (if any) before their parents, the root last. The last block is kept
        # gathered after forward because backward needs it at once.
        for i, block in enumerate(reversed(blocks)):
            reshard = self.reshard_after_forward if i > 0 else False
            fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=offload)
        # The root (embeddings, final norm, lm_head) stays gathered from forward to backward: backward
        # starts there, and a fused loss reads the lm_head weight after the forward has returned.
        fully_shard(model, mesh=dp_mesh, reshard_after_forward=False, mp_policy=mp, offload_policy=offload)
        precision = ""
        if self.param_dtype or self.reduce_dtype:
            precision = (f", mixed precision: compute in {self.param_dtype or 'the loaded dtype'}, "
                         f"reduce gradients in {self.reduce_dtype or self.param_dtype}")
        ctx.print(
            f"fsdp2: {len(blocks)} blocks + root sharded over {dict(zip(dp_mesh.mesh_dim_names, dp_mesh.shape))}"
            f"{precision}"
            f"{', gradients reduced every micro-batch' if self.reduce_every_micro_batch else ''}"
            f"{', cpu offload' if self.cpu_offload else ''}{', activation checkpointing' if self.activation_checkpointing else ''}"
        )
        return model

    def _dp_mesh(self, mesh: Any) -> Any:
        names = tuple(mesh.mesh_dim_names or ())
        shard = "dp_shard"
        if "ep" in names:  # expert parallel (automodel-moe): the ep ranks hold other data, so everything
            # but the experts (sharded over ep by the ep parallelizer, applied before) shards over both
            shard = "dp_shard_ep"
            flat = mesh["dp_shard", "ep"]._flatten(shard)  # made once, then found by name
            if "dp_replicate" not in names:
                return flat  # (slicing a flattened dim from the root mesh is deprecated in torch)
        if "dp_replicate" not in names:
            return mesh[shard]
        return mesh["dp_replicate", shard]  # HSDP: replicate on dim 0, shard on dim 1

    def grad_sync(self, model: Any, enabled: bool) -> None:
        """Reduce-scatter gradients (also across HSDP replicas) on the last micro-batch of a step only, or
        on every micro-batch with ``reduce_every_micro_batch``."""
        from torch.distributed.fsdp import FSDPModule

        if isinstance(model, FSDPModule):
            model.set_requires_gradient_sync(enabled or self.reduce_every_micro_batch)


class FSDP2Replicate:
    """The replica dimension of HSDP: ``fsdp2`` shards within ``dp_shard`` groups and, because this
    parallelizer puts ``dp_replicate`` in the mesh, replicates (all-reduces) across them. It must be
    used together with ``fsdp2``; it does nothing to the model itself."""

    dim = "dp_replicate"

    def __init__(self, size: int | None = None):
        self.size = size

    def apply(self, model: Any, mesh: Any, ctx: Any) -> Any:
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(model, FSDPModule):
            raise AutomodelError(
                "parallel: fsdp2_replicate is the replica dimension of HSDP and needs {name: fsdp2} on dp_shard "
                "too, e.g. parallel: [{name: fsdp2_replicate, size: 2}, {name: fsdp2}]"
            )
        return model


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _dtype(name: str | None) -> Any:
    import torch

    return getattr(torch, name) if name else None
