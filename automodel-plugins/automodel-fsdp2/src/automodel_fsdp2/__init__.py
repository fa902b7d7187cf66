"""automodel-fsdp2: the ``fsdp2`` parallelizer (torch ``fully_shard`` on ``dp_shard``) and
``fsdp2_replicate`` (the replica dimension of HSDP). Registration only: no torch import here."""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_parallelizers(register):
    register("fsdp2", "automodel_fsdp2.parallel:FSDP2",
             description="FSDP2 fully_shard per decoder block + root on dp_shard; meta-device init, mixed precision")
    register("fsdp2_replicate", "automodel_fsdp2.parallel:FSDP2Replicate",
             description="HSDP replica dimension (dp_replicate) for fsdp2: shard within, replicate across")
