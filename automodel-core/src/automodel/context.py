"""What every component sees during a run: where it runs and where it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Context:
    """Per-process run context, passed to loaders, datasets, transforms, parallelizers and hooks.

    Attributes:
        rank, world_size, local_rank: this process in the job (0, 1, 0 for a single process).
        device: the ``torch.device`` this rank computes on.
        output_dir: the run directory (config.yaml, metrics.jsonl, checkpoints/, hf/).
        config: the resolved config (plain dict).
        mesh: the ``DeviceMesh`` (None in a single, non-distributed process).
        dp_rank, dp_size: this rank's data-parallel coordinate and the data-parallel degree.
        meta_init: a parallelizer asked for the model to be built on the meta device.
        plugins: the loaded :class:`automodel.plugins.Plugins`.
        extras: free space for plugins to share per-run objects (key them by plugin name).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = "cpu"
    output_dir: Path = Path("runs/default")
    config: dict[str, Any] = field(default_factory=dict)
    mesh: Any = None
    dp_rank: int = 0
    dp_size: int = 1
    meta_init: bool = False
    plugins: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.mesh is not None

    def print(self, *args: Any, **kwargs: Any) -> None:
        """print() on the main rank only."""
        if self.is_main:
            print(*args, **kwargs, flush=True)
