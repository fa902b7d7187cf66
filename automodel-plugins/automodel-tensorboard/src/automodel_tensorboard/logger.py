"""The ``tensorboard`` logger: scalars per step in TensorBoard event files, continued on resume."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

_SECRET = re.compile(r"(^|[_.-])(token|key|password|passwd|secret|credentials?)s?($|[_.-])", re.I)


def safe_config(config: dict[str, Any]) -> Any:
    """The config as it may be logged: :func:`automodel.config.redacted` (credentials masked, ``${env:...}``
    kept unresolved), or, with an automodel-core that predates it, :func:`mask_secrets`."""
    try:
        from automodel.config import redacted
    except ImportError:
        return mask_secrets(config)
    return redacted(config)

def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy of ``value`` (a config) with the value of every key naming a token, key, password or secret
    replaced by ``"***"``."""
    if isinstance(value, dict):
        return {k: "***" if _SECRET.search(str(k)) and not isinstance(v, (dict, list)) else mask_secrets(v, str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    return value


def tag(key: str, training: bool) -> str:
    """The TensorBoard tag of a metric: ``train/<key>`` in a training record (it has ``loss``),
    ``val/<key>`` (``val_`` prefix dropped) in a validation record."""
    if training:
        return f"train/{key}"
    return f"val/{key[4:] if key.startswith('val_') else key}"


class TensorBoardLogger:
    """Writes every numeric metric as a scalar at its optimizer step, training records under ``train/``
    (``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s``, ...) and validation records
    under ``val/`` (``val/loss``, ``val/tokens``), plus the resolved config (secrets masked) as text.
    Built on rank 0 only.

    ``log_dir`` defaults to ``<output_dir>/tensorboard``. A resumed run (``ctx.train_state.step`` = S > 0)
    opens its writer with ``purge_step=S+1``: TensorBoard then hides what the interrupted attempt logged
    after the checkpoint it resumed from, so every step has exactly one value.
    """

    path_args = ("log_dir",)

    def __init__(self, ctx: Any, log_dir: str | None = None, flush_secs: int = 10, log_config: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(log_dir) if log_dir else Path(ctx.output_dir) / "tensorboard"
        self.dir.mkdir(parents=True, exist_ok=True)
        resumed = int(getattr(ctx.train_state, "step", 0) or 0)
        self.writer = SummaryWriter(str(self.dir), purge_step=resumed + 1 if resumed else None, flush_secs=flush_secs)
        if log_config and ctx.config and not resumed:
            text = yaml.safe_dump(safe_config(ctx.config), sort_keys=False)
            self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), global_step=0)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        training = "loss" in metrics
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tag(key, training), value, global_step=step)

    def close(self) -> None:
        self.writer.close()
