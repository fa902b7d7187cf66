"""automodel-pp: the ``pp`` parallelizer, pipeline parallelism on ``torch.distributed.pipelining``.

    parallel:
      - {name: pp, size: 2, schedule: 1f1b, microbatches: 4}
      - {name: fsdp2}            # optional: data parallel (sharded) across pipeline replicas

Registration only: no torch import here.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_parallelizers(register):
    register("pp", "automodel_pp.parallel:Pipeline",
             description="pipeline parallel (pp): decoder blocks split into stages; GPipe, 1F1B, interleaved 1F1B, zero bubble")
