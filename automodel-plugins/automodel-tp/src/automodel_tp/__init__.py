"""automodel-tp: tensor (and sequence) parallelism for Hugging Face decoder LLMs.

    parallel:
      - {name: tp, size: 2, sequence_parallel: true, loss_parallel: true}
      - {name: fsdp2}        # optional: 2-D mesh, FSDP2 over the remaining ranks

Registration only: nothing here imports torch.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_parallelizers(register):
    register(
        "tp",
        "automodel_tp.parallel:TensorParallel",
        description="tensor (+ sequence, loss) parallelism on the 'tp' mesh dim (torch.distributed.tensor.parallel)",
    )
