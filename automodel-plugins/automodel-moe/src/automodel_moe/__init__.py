"""automodel-moe: Mixture-of-Experts fine-tuning for Hugging Face MoE decoders.

    transforms:
      - {name: moe, aux_loss_weight: 0.01, freeze_router: false}   # router loss + routing statistics
    parallel:
      - {name: ep, size: 2}    # experts sharded over the 'ep' mesh dim, tokens exchanged by all-to-all
      - {name: fsdp2}          # the rest (attention, router, embeddings) sharded over dp_shard x ep

Registration only: nothing here imports torch.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_parallelizers(register):
    register(
        "ep",
        "automodel_moe.parallel:ExpertParallel",
        description="expert parallelism on the 'ep' mesh dim: experts sharded, tokens dispatched/combined by all-to-all",
    )


@hookimpl
def register_model_transforms(register):
    register(
        "moe",
        "automodel_moe.transform:MoE",
        description="MoE router: load-balancing aux loss (weighted, logged apart), tokens per expert, router freezing",
    )
