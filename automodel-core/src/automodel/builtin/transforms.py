"""Builtin model transforms."""

from __future__ import annotations

from typing import Any

from automodel.blocks import checkpoint_blocks, find_blocks
from automodel.errors import AutomodelError


class ActivationCheckpointing:
    """Recompute every decoder block's activations in backward: activation memory falls to about one
    block's worth, for roughly a third more compute. Works with any layout (one process, ddp, tp,
    fsdp2), since it is applied before the parallelizers.

    Args:
        block_classes: class names of the blocks to checkpoint (default: the model's ``_no_split_modules``).
    """

    def __init__(self, block_classes: list[str] | None = None):
        self.block_classes = list(block_classes) if block_classes else None

    def apply(self, model: Any, ctx: Any) -> Any:
        blocks = find_blocks(model, self.block_classes, key="transforms.activation_checkpointing.block_classes")
        if not blocks:
            raise AutomodelError(f"transforms.activation_checkpointing: found no decoder blocks in {type(model).__name__}; "
                                 "name them with block_classes: [<class name>]")
        checkpoint_blocks(blocks)
        ctx.print(f"activation checkpointing: {len(blocks)} {type(blocks[0]).__name__} blocks")
        return model
