"""Reading the MoE fields of a model's config before launch, without torch."""

from __future__ import annotations

from typing import Any

#: Config fields that hold the number of routed experts, by family.
EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def expert_count(config: dict[str, Any]) -> int | None:
    """The number of routed experts the config names, ``None`` if it names none."""
    for field in EXPERT_FIELDS:
        value = config.get(field)
        if isinstance(value, int) and value > 0:
            return value
    return None
