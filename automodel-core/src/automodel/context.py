"""What every component sees during a run: where it runs, where it writes, how long it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Context:
    """Per-process run context, passed to loaders, datasets, transforms, parallelizers, checkpointers,
    loggers and lifecycle hooks.

    Attributes:
        rank, world_size, local_rank: this process in the job (0, 1, 0 for a single process).
        device: the ``torch.device`` this rank computes on.
        output_dir: the run directory (config.yaml, metrics.jsonl, checkpoints/, hf/).
        config: the resolved config (plain dict: every section present, components named; a component's
            own argument defaults are not filled in).
        mesh: the ``DeviceMesh`` (None in a single, non-distributed process).
        dp_rank, dp_size: this rank's data-parallel coordinate and the data-parallel degree.
        meta_init: a parallelizer asked for the model to be built on the meta device.
        plugins: the loaded :class:`automodel.plugins.Plugins`.
        total_steps: optimizer steps this run trains for (set once the data is known; None before).
        train_state: the :class:`automodel.state.TrainState` (step, data position, ``metadata`` that
            checkpoints carry); restored before loggers are built, so a logger can read what it stored.
        export_options: the ``automodel export`` options given on the command line, by name, among
            those the run's components declare (a factory's ``export_options``, see
            :class:`automodel.contracts.ExportOption`); empty in a run's own final export.
        extras: deprecated for new code: an untyped dict no core feature uses except ``extras["plan"]``
            (True while ``automodel plan`` builds the model). Keep per-run state on your component
            (a transform's ``after_optimizer_step`` sees the model; ``train_state.metadata`` persists).
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
    total_steps: int | None = None
    train_state: Any = None
    export_options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """True on rank 0: the rank that prints, logs and writes shared files."""
        return self.rank == 0

    def print(self, *args: Any, **kwargs: Any) -> None:
        """print() on the main rank only."""
        if self.is_main:
            print(*args, **kwargs, flush=True)
