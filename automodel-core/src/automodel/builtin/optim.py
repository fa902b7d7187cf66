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


# -- value checks, run by `automodel validate` before anything starts ----------------------------------


def _check_optimizer(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    lr = args.get("lr")
    if isinstance(lr, (int, float)) and lr <= 0:
        out.append(("lr", f"must be > 0, got {lr}", "typical fine-tuning values: 1e-5 to 3e-4"))
    wd = args.get("weight_decay")
    if isinstance(wd, (int, float)) and wd < 0:
        out.append(("weight_decay", f"must be >= 0, got {wd}", "0.0 turns it off"))
    betas = args.get("betas")
    if isinstance(betas, (list, tuple)) and (len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        out.append(("betas", f"must be two numbers in [0, 1), got {list(betas)}", "the default is [0.9, 0.999]"))
    eps = args.get("eps")
    if isinstance(eps, (int, float)) and eps <= 0:
        out.append(("eps", f"must be > 0, got {eps}", "the default is 1e-8"))
    momentum = args.get("momentum")
    if isinstance(momentum, (int, float)) and not 0 <= momentum < 1:
        out.append(("momentum", f"must be in [0, 1), got {momentum}", ""))
    return out


def _check_schedule(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    warmup = args.get("warmup_steps")
    if isinstance(warmup, int) and warmup < 0:
        out.append(("warmup_steps", f"must be >= 0, got {warmup}", "0 = no warmup"))
    ratio = args.get("min_lr_ratio")
    if isinstance(ratio, (int, float)) and not 0 <= ratio <= 1:
        out.append(("min_lr_ratio", f"must be in [0, 1] (a fraction of optimizer.lr), got {ratio}", "e.g. 0.1"))
    return out


for _factory in (adamw, sgd):
    _factory.validate_args = _check_optimizer  # type: ignore[attr-defined]
for _factory in (constant, cosine, linear):
    _factory.validate_args = _check_schedule  # type: ignore[attr-defined]
