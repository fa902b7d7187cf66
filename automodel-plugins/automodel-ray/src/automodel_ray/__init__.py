"""automodel-ray: the ``ray`` launcher.

``automodel run cfg.yaml launcher.name=ray`` trains on a Ray cluster through Ray Train's ``TorchTrainer``:
N workers (Ray actors placed by a placement group) each run the same in-process training loop as the
``local`` launcher, with the process group Ray Train sets up (gloo on CPU, nccl on GPU). A dead worker
restarts the whole worker group (``launcher.max_failures``), which resumes from the newest checkpoint.
``launcher.job=true`` submits the same run through the Ray Jobs API and prints the job id.
This module only registers; it imports nothing heavy (no ray, no torch).
"""

from __future__ import annotations

from automodel.hookspecs import Register, hookimpl

__version__ = "0.1.0"


@hookimpl
def register_launchers(register: Register) -> None:
    register(
        "ray",
        "automodel_ray.launcher:RayLauncher",
        description="Ray Train TorchTrainer on a Ray cluster (or KubeRay): worker-group restarts, Ray Jobs API",
    )
