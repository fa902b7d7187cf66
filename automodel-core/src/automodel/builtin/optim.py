"""Optimizers and learning-rate schedules (torch imported when they are built, not at import)."""

from __future__ import annotations

import math
from typing import Any


def adamw(
    params: Any,
    lr: float = 1.0e-4,
    betas: list[float] = (0.9, 0.999),
    eps: float = 1.0e-8,
    weight_decay: float = 0.0,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> Any:
    """``torch.optim.AdamW``."""
    import torch

    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach, fused=fused)


def sgd(
    params: Any, lr: float = 1.0e-2, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False
) -> Any:
    """``torch.optim.SGD``."""
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def _lambda(optimizer: Any, fn: Any) -> Any:
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def constant(optimizer: Any, total_steps: int, warmup_steps: int = 0) -> Any:
    """Linear warmup over ``warmup_steps``, then the optimizer's lr."""
    return _lambda(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)


def cosine(optimizer: Any, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> Any:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` x lr at the last step."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _lambda(optimizer, fn)


def linear(optimizer: Any, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> Any:
    """Linear warmup, then linear decay to ``min_lr_ratio`` x lr at the last step."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1 - (1 - min_lr_ratio) * progress

    return _lambda(optimizer, fn)
