"""The architecture fields of a run's model (``num_attention_heads``, ``num_local_experts``, ...), read from
the ``model:`` section before launch: no torch, no weights, no network.

For parallelizers' ``validate_model`` checks (tp: heads divisible by the tp size; ep: experts divisible
by the ep size) and anything else that must look at the model's shape before it exists. The loaders that
ship with automodel (``hf``, ``hf_vlm``, ``hf_quantized``) describe the model with an inline ``config``
mapping or a local ``pretrained`` directory; both are read here, once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_model_config(model_cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The architecture fields of the ``model:`` section: the inline ``config`` dict, or the ``config.json``
    of a local ``pretrained`` directory; a vision-language model's ``text_config``. ``None`` when neither
    is readable (a hub id): check again on the loaded model then."""
    spec = model_cfg.get("config")
    if isinstance(spec, dict):
        data = dict(spec)
    else:
        path = model_cfg.get("pretrained")
        if not isinstance(path, str):
            return None
        file = Path(path).expanduser() / "config.json"
        if not file.is_file():
            return None
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            return None
    text = data.get("text_config")
    return dict(text) if isinstance(text, dict) else data
