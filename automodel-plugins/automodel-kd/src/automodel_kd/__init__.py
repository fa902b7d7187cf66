"""automodel-kd: knowledge distillation from a frozen teacher model.

Registers the ``kd`` loss (``uses_hidden_states = True``): the teacher is loaded through any
registered model loader in the loss's ``setup``, frozen and sharded like the student; the KD loss
(forward KL, reverse KL or JSD, with temperature, mixed with the student's cross-entropy) is computed
chunk by chunk over tokens, fused with both lm_head projections, so neither model's
``[tokens, vocab]`` logits are ever held. Registration only: no torch import here.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_losses(register):
    register("kd", "automodel_kd.loss:KnowledgeDistillation",
             description="distil a frozen teacher (forward/reverse KL, JSD) + CE, fused with both lm_heads, no full logits")
