"""automodel-wandb: the ``wandb`` logger (Weights & Biases).

    loggers:
      - {name: console}
      - {name: wandb, project: my-project, run_name: first-try, tags: [llama], log_model: true}

Registration only: nothing here imports wandb.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_loggers(register):
    register(
        "wandb",
        "automodel_wandb.logger:WandbLogger",
        description="Weights & Biases: config, metrics, validation, resumable run id, model artifact (log_model)",
    )
