"""Builtin loggers: a progress line on the console and ``metrics.jsonl`` in the run directory."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _fmt(key: str, value: Any) -> str:
    if key == "lr":
        return f"lr {value:.2e}"
    if key == "tokens_per_s":
        return f"{value:,.0f} tok/s"
    if key == "label_tokens_per_s":
        return f"{value:,.0f} label tok/s"
    if key == "peak_mem_gb":
        return f"mem {value:.2f} GB"
    if key == "mfu":
        return f"mfu {100 * value:.1f}%"
    if key in ("grad_norm",):
        return f"gnorm {value:.3f}"
    if isinstance(value, float):
        return f"{key} {value:.4f}"
    return f"{key} {value}"


class ConsoleLogger:
    """``step 12/100 [##------] loss 2.1 | lr 1e-4 | ... | eta 0:01:02`` on every logged step."""

    SHOWN = ("loss", "val_loss", "grad_norm", "lr", "tokens_per_s", "label_tokens_per_s", "peak_mem_gb", "mfu")

    def __init__(self, ctx: Any, width: int = 20):
        self.total = ctx.total_steps
        self.width = width
        self.start = time.monotonic()
        self.first_step: int | None = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        parts = [_fmt(k, metrics[k]) for k in self.SHOWN if metrics.get(k) is not None]
        head = f"step {step}"
        if "loss" not in metrics:  # validation and other side metrics: no progress bar
            print(f"{head} " + " | ".join(parts), file=sys.stdout, flush=True)
            return
        if self.total:
            done = int(self.width * step / self.total)
            head = f"step {step:>{len(str(self.total))}}/{self.total} [{'#' * done}{'-' * (self.width - done)}]"
            if self.first_step is None:
                self.first_step, self.start = step, time.monotonic()
            elif step > self.first_step:
                rate = (time.monotonic() - self.start) / (step - self.first_step)
                parts.append(f"eta {_hms(rate * (self.total - step))}")
        print(head + " " + " | ".join(parts), file=sys.stdout, flush=True)

    def close(self) -> None:
        pass


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class JsonlLogger:
    """One JSON object per logged step in ``path`` (default ``<output_dir>/metrics.jsonl``).

    A resumed run (``ctx.train_state.step`` > 0 when loggers are built) keeps the records up to that
    step and drops the later ones, which the killed run wrote after its last checkpoint and this run
    writes again: the file ends with exactly one record per step (a fresh run starts an empty file).
    """

    def __init__(self, ctx: Any, path: str | None = None):
        self.path = Path(path) if path else Path(ctx.output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = getattr(ctx, "train_state", None)
        dropped = self._keep_until(int(getattr(state, "step", 0) or 0))
        if dropped and getattr(ctx, "is_main", True):
            step = int(getattr(state, "step", 0) or 0)
            print(f"{self.path.name}: dropped {dropped} record(s) after step {step} "
                  f"({'the step resumed from' if step else 'a fresh run'})", flush=True)
        self.file = self.path.open("a")

    def _keep_until(self, step: int) -> int:
        """Rewrite the file (atomically) without the records after ``step``; the number dropped."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                record_step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):  # a line cut short by the kill
                dropped += 1
                continue
            if isinstance(record_step, int) and record_step <= step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        return dropped

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
