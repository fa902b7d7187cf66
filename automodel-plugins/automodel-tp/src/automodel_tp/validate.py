"""Checks that run before launch, without torch: the model's head counts against the TP size."""

from __future__ import annotations

from typing import Any


def head_problems(config: dict[str, Any], size: int) -> list[tuple[str, str]]:
    """(message, hint) for every attention dimension that ``size`` ranks cannot split evenly."""
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    out = []
    for field, value in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        if isinstance(value, int) and value % size:
            divisors = [d for d in range(1, value + 1) if value % d == 0 and (not isinstance(heads, int) or heads % d == 0)]
            if isinstance(kv_heads, int):
                divisors = [d for d in divisors if kv_heads % d == 0]
            out.append((
                f"tensor parallelism over {size} ranks needs {field} ({value}) divisible by {size}",
                f"use a tp size that divides the head counts: one of {divisors}",
            ))
    return out
