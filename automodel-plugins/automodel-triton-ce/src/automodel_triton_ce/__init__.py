"""automodel-triton-ce: fused linear cross-entropy that never materializes the [tokens, vocab] logits.

Registers two losses (both ``uses_hidden_states = True``):

* ``triton_ce``: Triton kernels for the softmax statistics and the gradient (GPU, or CPU with
  ``TRITON_INTERPRET=1``); falls back to ``chunked_ce`` with a warning where Triton cannot run.
* ``chunked_ce``: the same algorithm in plain PyTorch ops.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_losses(register):
    register("triton_ce", "automodel_triton_ce.loss:FusedLinearCrossEntropy",
             description="fused linear cross-entropy, Triton kernels, no full logits")
    register("chunked_ce", "automodel_triton_ce.loss:ChunkedCrossEntropy",
             description="fused linear cross-entropy, pure PyTorch chunks, no full logits")
