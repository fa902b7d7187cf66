"""Reading the MoE fields of a model's config before launch, without torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Config fields that hold the number of routed experts, by family.
EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def read_model_config(model_cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The architecture fields of the ``model:`` section: the inline ``config`` dict, or the
    ``config.json`` of a local ``pretrained`` directory (``None`` when neither is readable)."""
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


def expert_count(config: dict[str, Any]) -> int | None:
    """The number of routed experts the config names, ``None`` if it names none."""
    for field in EXPERT_FIELDS:
        value = config.get(field)
        if isinstance(value, int) and value > 0:
            return value
    return None
