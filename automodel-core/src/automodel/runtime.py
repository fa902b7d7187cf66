"""Process-level helpers of the training loop: device, process group, gradient-sync control, memory."""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Any

import torch
import torch.distributed as dist

from automodel.contracts import Parallelizer, member
from automodel.errors import AutomodelError


def device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise AutomodelError("device: 'cuda' was requested but no CUDA device is available; use device: auto or cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: torch.device) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group when launched by torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def distributed() -> bool:
    """Whether this process is one of several in a process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(value: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``value`` in place over all ranks (``op``: sum, min, max) when :func:`distributed`, else
    leave it as it is: the core's one "collective if distributed"."""
    if distributed():
        dist.all_reduce(value, op=getattr(dist.ReduceOp, op.upper()))
    return value


def barrier() -> None:
    """Wait for every rank when :func:`distributed`; nothing to wait for otherwise."""
    if distributed():
        dist.barrier()


def grad_sync(model: Any, enabled: bool, parallelizers: Any = ()) -> Any:
    """A context for one micro-batch's forward + backward: gradient synchronisation on (the last micro-batch
    of a step) or off (the others), as each parallelizer declares it (``Parallelizer.grad_sync``)."""
    stack = contextlib.ExitStack()
    for p in parallelizers:
        hook = member(p, Parallelizer, "grad_sync")
        if hook is not None and (cm := hook(model, enabled)) is not None:
            stack.enter_context(cm)
    return stack


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux


def quiet_libraries() -> None:
    """Our console logger reports progress: silence the libraries' progress bars, the single-process DCP
    warning, and import-time noise of optional libraries that transformers pulls in (torchao's missing
    CUDA kernels on a CPU machine, torch's pytree deprecation notes). ``AUTOMODEL_VERBOSE=1`` keeps them."""
    import logging
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
