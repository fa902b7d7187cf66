"""automodel-slurm: the ``slurm`` launcher.

``automodel run cfg.yaml launcher.name=slurm`` writes an sbatch script from the ``launcher:`` section,
submits it and prints the job id and log path. This module only registers; it imports nothing heavy.
"""

from __future__ import annotations

from automodel.hookspecs import Register, hookimpl

__version__ = "0.1.0"


@hookimpl
def register_launchers(register: Register) -> None:
    register(
        "slurm",
        "automodel_slurm.launcher:SlurmLauncher",
        description="submit with sbatch: multi-node torchrun or one task per GPU, requeue on preemption",
    )
