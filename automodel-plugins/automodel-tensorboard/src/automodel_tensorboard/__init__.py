"""automodel-tensorboard: the ``tensorboard`` logger (TensorBoard event files).

    loggers:
      - {name: console}
      - {name: tensorboard}            # <output_dir>/tensorboard; `tensorboard --logdir runs`

Registration only: nothing here imports torch or tensorboard.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_loggers(register):
    register(
        "tensorboard",
        "automodel_tensorboard.logger:TensorBoardLogger",
        description="TensorBoard event files: train/* and val/* scalars per step, the config as text; resume purges replayed steps",
    )


def check_requirements() -> list[str]:
    """``automodel plugins --check``: the tensorboard package must be importable (torch's writer needs it)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError as e:
        return [f"the tensorboard package is not importable ({e}): pip install tensorboard"]
    return []
