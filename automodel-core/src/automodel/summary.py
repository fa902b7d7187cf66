"""The end of a run in one line and in ``<output_dir>/summary.json`` (what ``automodel report`` shows).

    done: 6 steps, 12,288 tokens in 0:00:41 | best val_loss 2.3104 (step 4) | checkpoint runs/demo/checkpoints/step_6 | export runs/demo/hf

No torch import: the report reads the same file.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

FILE = "summary.json"


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunSummary:
    """Collects what the one-line summary needs while the loop runs (start time, best validation loss).

    The best validation loss is kept in ``train_state.metadata["summary"]``, which checkpoints carry, so a
    resumed run still knows the best of the steps before the resume.
    """

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.started_at = time.time()

    def validation(self, step: int, metrics: dict[str, Any], train_state: Any) -> None:
        value = metrics.get("val_loss")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        best = train_state.metadata.setdefault("summary", {})
        if best.get("best_val_loss") is None or value < best["best_val_loss"]:
            best.update(best_val_loss=float(value), best_val_step=step)

    def finish(self, trainer: Any, export: str | os.PathLike[str] | None) -> dict[str, Any]:
        """The facts of a finished run (written to ``summary.json`` on the main rank, printed as one line)."""
        from automodel import __version__

        ctx, state = trainer.ctx, trainer.train_state
        best = state.metadata.get("summary", {})
        if trainer.saved_path:
            checkpoint = str(trainer.saved_path)
        elif trainer.saved_step is not None:
            checkpoint = f"step {trainer.saved_step} (resumed from it)"
        else:
            checkpoint = None
        layout = trainer.layout.plan.sizes if trainer.layout.plan is not None else {}
        facts = {
            "steps": state.step, "tokens": state.tokens_seen, "time_s": round(time.monotonic() - self.start, 3),
            "resumed_from": trainer.resumed, "best_val_loss": best.get("best_val_loss"),
            "best_val_step": best.get("best_val_step"), "checkpoint": checkpoint,
            "export": str(export) if export else None, "world_size": ctx.world_size,
            "mesh": {str(k): int(v) for k, v in layout.items()}, "device": str(ctx.device),
            "components": trainer.run_plan.providers(),
            "parameters": trainer.n_params, "trainable_parameters": sum(p.numel() for p in trainer.params),
            "automodel_version": __version__, "started_at": self.started_at, "finished_at": time.time(),
        }
        if ctx.is_main:
            path = Path(ctx.output_dir) / FILE
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(facts, indent=2) + "\n")
            tmp.replace(path)
            print(line(facts), flush=True)
        return facts


def line(facts: dict[str, Any]) -> str:
    """``done: 6 steps, 12,288 tokens in 0:00:41 | best val_loss 2.3104 (step 4) | checkpoint ... | export ...``"""
    resumed = f" (resumed from step {facts['resumed_from']})" if facts.get("resumed_from") else ""
    parts = [f"done: {facts['steps']} steps{resumed}, {facts['tokens']:,} tokens in {hms(facts['time_s'])}"]
    if facts.get("best_val_loss") is not None:
        parts.append(f"best val_loss {facts['best_val_loss']:.4f} (step {facts['best_val_step']})")
    parts.append(f"checkpoint {facts['checkpoint']}" if facts.get("checkpoint") else "no checkpoint")
    parts.append(f"export {facts['export']}" if facts.get("export") else "not exported")
    return " | ".join(parts)


def read(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``<run_dir>/summary.json``, or None when the run did not finish (or predates it)."""
    try:
        return json.loads((Path(run_dir) / FILE).read_text())
    except (OSError, ValueError):
        return None
