"""Secrets: never written resolved to a file or a logger (:func:`redacted`)."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

_SECRET_KEY = re.compile(
    r"secret|password|passwd|credential|(?:^|_)(?:api|access|private|auth)_?key$|^apikey$"
    r"|^(?:[a-z]+_)?(?:hf|hub|auth|access|api|bearer|refresh|id|wandb|github|gh)_token$|^token$",
    re.IGNORECASE,
)
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE)
#: prefix of the environment variables that carry a masked literal secret to the processes a run starts
SECRET_ENV_PREFIX = "AUTOMODEL_SECRET_"
MASK = "***"


def is_secret_key(name: str) -> bool:
    """Whether a config key names a credential (``token``, ``hf_token``, ``api_key``, ``password``,
    ``*secret*``...). Special-token keys such as ``pad_token`` are not secrets."""
    return bool(_SECRET_KEY.search(str(name).replace("-", "_")))


def redacted(cfg: Any) -> Any:
    """A copy of ``cfg`` that is safe to write or log: no credential in it.

    * A string that contains the value of an environment variable whose name names a secret
      (``HF_TOKEN``, ``WANDB_API_KEY``, ``*_PASSWORD``...; what ``${env:HF_TOKEN}`` resolved to) gets
      the interpolation back: ``${env:HF_TOKEN}``.
    * A literal string under a key that names a secret (:func:`is_secret_key`) becomes
      ``${env:AUTOMODEL_SECRET_<KEY_PATH>,***}`` and the value goes into this process's environment under
      that name: the processes a run starts (torchrun workers, a Slurm job) inherit it and resolve the
      saved config to the real value; anywhere else it reads as ``***``.
    """
    env = sorted(((k, v) for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6
                  and not k.startswith(SECRET_ENV_PREFIX)), key=lambda kv: -len(kv[1]))

    def walk(node: Any, path: str, key: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k), str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}", key) for i, v in enumerate(node)]
        if not isinstance(node, str) or not node:
            return node
        for name, value in env:
            if value in node:
                node = node.replace(value, f"${{env:{name}}}")
        if is_secret_key(key) and "${env:" not in node:
            name = SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", path).upper()
            os.environ[name] = node
            node = f"${{env:{name},{MASK}}}"
        return node

    return walk(copy.deepcopy(cfg), "", "")

