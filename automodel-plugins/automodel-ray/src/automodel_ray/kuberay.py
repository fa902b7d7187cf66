"""A KubeRay ``RayJob`` manifest for the run (``automodel run --dry-run`` with ``launcher.name=ray``).

KubeRay (the Ray operator for Kubernetes) starts a Ray cluster for a ``RayJob``, runs its ``entrypoint``
on it with the Jobs API and (``shutdownAfterJobFinishes``) deletes the cluster afterwards. The manifest
asks for one head pod (no training on it: ``num-cpus: 0``) and one worker group with one pod per training
worker, each with the worker's CPUs/GPUs/custom resources. The config and ``output_dir`` must live on storage
every pod mounts (add it under ``volumes`` / ``volumeMounts``); the image must contain automodel and the
plugins the config names. Rendered as plain data with PyYAML: the structure follows the ``ray.io/v1``
RayJob CRD; it is not validated against the CRD's OpenAPI schema (no package ships it).
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml


def _k8s_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:53].strip("-")
    return name or "automodel"


def rayjob(launcher: Any, job: Any) -> dict[str, Any]:
    from pathlib import Path

    name = _k8s_name(f"automodel-{Path(job.config['output_dir']).name}")
    res = launcher.worker_resources()
    cpu = max(math.ceil(res.get("CPU", 1)), 1)
    limits: dict[str, Any] = {"cpu": str(cpu), "memory": "8Gi"}
    params: dict[str, str] = {"num-cpus": str(cpu)}
    if res.get("GPU"):
        limits["nvidia.com/gpu"] = str(math.ceil(res["GPU"]))
        params["num-gpus"] = str(math.ceil(res["GPU"]))
    custom = {k: v for k, v in res.items() if k not in ("CPU", "GPU")}
    if custom:
        params["resources"] = "'" + yaml.safe_dump(custom, default_flow_style=True).strip().replace("'", '"') + "'"
    env = [{"name": k, "value": str(v)} for k, v in sorted((launcher.env or {}).items())]
    container = {"name": "ray-worker", "image": launcher.image, "resources": {"limits": limits, "requests": dict(limits)}}
    if env:
        container["env"] = env
    head = {"name": "ray-head", "image": launcher.image,
            "ports": [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                      {"containerPort": 10001, "name": "client"}],
            "resources": {"limits": {"cpu": "1", "memory": "4Gi"}, "requests": {"cpu": "1", "memory": "4Gi"}}}
    runtime_env: dict[str, Any] = {"env_vars": {k: str(v) for k, v in (launcher.env or {}).items()}}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/created-by": "automodel-ray"}},
        "spec": {
            "entrypoint": launcher.entrypoint(job),
            "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=True),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "backoffLimit": 0,
            "rayClusterSpec": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                                  "template": {"spec": {"containers": [head]}}},
                "workerGroupSpecs": [{
                    "groupName": "train",
                    "replicas": launcher.num_workers,
                    "minReplicas": launcher.num_workers,
                    "maxReplicas": launcher.num_workers,
                    "rayStartParams": params,
                    "template": {"spec": {"containers": [container]}},
                }],
            },
        },
    }


def render_rayjob(launcher: Any, job: Any) -> str:
    return yaml.safe_dump(rayjob(launcher, job), sort_keys=False)
