"""Step scheduling and the resumable train state (no torch import at module level)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StepScheduler:
    """The ``step_scheduler:`` section: batch sizes and when to stop, log, validate and checkpoint.

    ``global_batch_size`` sequences make one optimizer step; each rank processes ``local_batch_size`` at
    a time, accumulating gradients over ``global / (local * data_parallel_size)`` micro-batches.
    Training stops after ``max_steps`` optimizer steps; without ``max_steps``, after ``num_epochs``
    passes over the data.
    """

    global_batch_size: int = 8
    local_batch_size: int = 8
    max_steps: int | None = None
    num_epochs: int = 1
    log_every_steps: int = 1
    val_every_steps: int | None = None
    val_max_batches: int | None = None
    ckpt_every_steps: int | None = None

    def grad_accum_steps(self, dp_size: int) -> int:
        return self.global_batch_size // (self.local_batch_size * dp_size)

    def problems(self, dp_size: int | None) -> list[tuple[str, str, str]]:
        """(key, message, hint) for every inconsistency; ``dp_size`` None when unknown yet."""
        out = []
        for key in ("global_batch_size", "local_batch_size", "num_epochs", "log_every_steps"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}", ""))
        for key in ("max_steps", "val_every_steps", "val_max_batches", "ckpt_every_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                out.append((key, f"must be >= 1 or null, got {value}", ""))
        if dp_size and self.local_batch_size >= 1:
            per_step = self.local_batch_size * dp_size
            if self.global_batch_size % per_step:
                lo = max(per_step, self.global_batch_size // per_step * per_step)
                out.append(
                    (
                        "global_batch_size",
                        f"{self.global_batch_size} is not a multiple of local_batch_size x data-parallel size "
                        f"= {self.local_batch_size} x {dp_size} = {per_step}",
                        f"use global_batch_size={lo} or {lo + per_step}, or change local_batch_size",
                    )
                )
        return out


@dataclass
class TrainState:
    """Counters that a checkpoint must restore to continue a run exactly.

    ``epoch`` and ``epoch_samples`` are the data position: the pass over the training set (it seeds the
    shuffle) and how many sequences of it all data-parallel ranks together have consumed. Counting
    global sequences, not per-rank batches, lets a run resume at another data-parallel size.
    """

    step: int = 0
    epoch: int = 0
    tokens_seen: int = 0
    epoch_samples: int = 0
    #: JSON-able facts a resumed run must see again, owned by plugins and keyed by plugin name
    #: (e.g. ``{"wandb": {"run_id": ...}}``). Set on the main rank; the loop shares it with every rank
    #: before the first save.
    metadata: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["metadata"] = json.dumps(self.metadata, sort_keys=True)  # one entry: DCP loads only known keys
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, json.loads(value) if key == "metadata" else value)


def rng_state() -> dict[str, Any]:
    """The random generators of this process: python, numpy (when installed), torch CPU and CUDA.

    Only tensors, numbers, strings and tuples: a checkpoint loads it with ``torch.load(weights_only=True)``
    (data, never code). numpy's state is stored as its parts (the key array as a tensor)."""
    import random

    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (generators missing here or there are left alone)."""
    import random

    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        try:
            import numpy as np

            name, keys, pos, has_gauss, gauss = state["numpy"]
            keys = keys.numpy() if hasattr(keys, "numpy") else keys
            np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        except ImportError:
            pass
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
