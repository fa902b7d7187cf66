"""A metrics logger writing ``<output_dir>/metrics.csv``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class CsvLogger:
    """One row per step; training and validation records of the same step share the row.

    Config: ``loggers: [{name: console}, {name: csv}]``. Built on the main rank only, as
    ``CsvLogger(ctx, **cfg)``.
    """

    def __init__(self, ctx: Any, filename: str = "metrics.csv"):
        self.path = Path(ctx.output_dir) / filename
        self.rows: dict[int, dict[str, Any]] = {}

    def log(self, metrics: dict[str, Any], step: int) -> None:
        # training records (loss, lr, ...) and, on validation steps, a separate validation-only
        # record (val_loss, val_tokens) for the same step: merge them
        self.rows.setdefault(step, {"step": step}).update(metrics)
        self._write()

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        columns = ["step"] + sorted({k for row in self.rows.values() for k in row} - {"step"})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows[s] for s in sorted(self.rows))
