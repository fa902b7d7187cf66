"""The repeated decoder blocks of a model, and activation checkpointing on them.

Used by parallelizers (FSDP2 shards block by block) and by the builtin ``activation_checkpointing``
transform, which any layout (single process, DDP, TP, FSDP2) can use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from automodel.errors import AutomodelError


def block_class_names(model: Any) -> set[str]:
    """``_no_split_modules`` of every Hugging Face (sub)model inside ``model`` (PEFT wrappers included)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def find_blocks(model: Any, class_names: Iterable[str] | None = None, key: str = "block_classes") -> list[Any]:
    """The decoder blocks of ``model``, outermost first (pre-order), the root excluded: modules of the
    classes ``class_names`` (default: the model's ``_no_split_modules``), else the children of the
    largest ``nn.ModuleList``. ``key`` names the config key of ``class_names`` in errors."""
    import torch

    names = set(class_names or ()) or block_class_names(model)
    blocks = [m for m in model.modules() if m is not model and type(m).__name__ in names]
    if class_names and not blocks:
        found = sorted({type(m).__name__ for m in model.modules()})
        raise AutomodelError(f"{key}: no module of class {sorted(names)} in the model; classes present: {', '.join(found)}")
    if blocks:
        return blocks
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        return []
    largest = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    return list(largest)


def checkpoint_blocks(blocks: Sequence[Any]) -> None:
    """Recompute each block's activations in backward instead of keeping them (composable
    ``torch.distributed._composable.checkpoint``: parameter names are unchanged, so checkpoints,
    sharding plans and exports see the same model)."""
    from torch.distributed._composable import checkpoint

    for block in blocks:
        checkpoint(block)
