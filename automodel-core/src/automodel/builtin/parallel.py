"""The builtin data-parallel parallelizer: torch DistributedDataParallel over ``dp_replicate``."""

from __future__ import annotations

from typing import Any


class DDP:
    """Replicate the model on every rank of ``dp_replicate`` and all-reduce (average) gradients."""

    dim = "dp_replicate"
    exclusive = ("DistributedDataParallel replicates a plain model and the others shard it; for data parallelism "
                 "next to tp use {name: fsdp2}; to replicate across fsdp2 groups use {name: fsdp2_replicate}")

    def __init__(self, size: int | None = None, bucket_cap_mb: int = 25, find_unused_parameters: bool = False):
        self.size = size
        self.bucket_cap_mb = bucket_cap_mb
        self.find_unused_parameters = find_unused_parameters

    def apply(self, model: Any, mesh: Any, ctx: Any) -> Any:
        from torch.nn.parallel import DistributedDataParallel

        model.to(ctx.device)
        return DistributedDataParallel(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            process_group=mesh[self.dim].get_group(),
            bucket_cap_mb=self.bucket_cap_mb,
            find_unused_parameters=self.find_unused_parameters,
        )

    @staticmethod
    def grad_sync(model: Any, enabled: bool) -> Any:
        """All-reduce gradients on the last micro-batch of a step only."""
        return None if enabled else model.no_sync()
