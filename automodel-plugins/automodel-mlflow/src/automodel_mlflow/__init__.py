"""automodel-mlflow: the ``mlflow`` logger (MLflow tracking).

    loggers:
      - {name: console}
      - {name: mlflow, tracking_uri: http://127.0.0.1:5000, experiment_name: llama-sft, run_name: lr-3e-4}

Registration only: nothing here imports mlflow.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_loggers(register):
    register(
        "mlflow",
        "automodel_mlflow.logger:MlflowLogger",
        description="MLflow tracking: config params, metrics per step, config and model artifacts, plugin tags, resumable run",
    )


def check_requirements() -> list[str]:
    """``automodel plugins --check``: mlflow must be importable."""
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        return [f"mlflow is not importable ({e}): pip install mlflow"]
    return []
