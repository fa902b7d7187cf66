"""A local automodel plugin for the benchmarks (``automodel run cfg.yaml --plugin _steptimer``): records the
wall-clock time at the end of every step and writes them, with the losses logged, as JSON to the file named
by ``$BENCH_STEP_TIMES`` when training ends."""

from __future__ import annotations

import json
import os
import time

from automodel import hookimpl

_times: list[float] = []
_losses: list[float] = []


@hookimpl
def on_step_end(ctx, step, metrics):
    _times.append(time.time())
    if "loss" in metrics:
        _losses.append(metrics["loss"])


@hookimpl
def on_train_end(ctx, metrics):
    path = os.environ.get("BENCH_STEP_TIMES")
    if path and ctx.is_main:
        with open(path, "w") as f:
            json.dump({"times": _times, "losses": _losses, "last": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}, f)
