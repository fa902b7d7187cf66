"""The ``wandb`` logger: one Weights & Biases run per training run, continued on resume."""

from __future__ import annotations

import netrc
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse


def has_credentials() -> bool:
    """WANDB_API_KEY is set, or ``wandb login`` stored a key in ~/.netrc (or $NETRC) for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    """Logs the resolved config, every metric record (training and validation) at its step, and with
    ``log_model`` the exported ``<output_dir>/hf`` as a ``model`` artifact. Built on rank 0 only.

    The run id is kept in the checkpoint (``train_state.metadata["wandb"]``), so a resumed run
    (``checkpoint.resume=auto``) continues the same W&B run. ``run_name`` is the W&B run name
    (``name`` selects this logger). ``mode`` defaults to WANDB_MODE; with neither a mode nor
    credentials it logs offline (no login prompt) and says so once.
    """

    path_args = ("dir",)

    def __init__(
        self,
        ctx: Any,
        project: str | None = None,
        entity: str | None = None,
        run_name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        mode: Literal["online", "offline", "disabled", None] = None,
        dir: str | None = None,
        log_model: bool = False,
    ):
        import wandb
        from automodel.config import redacted  # credentials never reach the run's config

        self.wandb, self.ctx, self.log_model = wandb, ctx, log_model
        self.started = time.time()
        directory = Path(dir) if dir else Path(ctx.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        if mode is None and not os.environ.get("WANDB_MODE") and not has_credentials():
            mode = "offline"
            print(f"wandb: no WANDB_API_KEY, WANDB_MODE or `wandb login`: logging offline to {directory / 'wandb'} "
                  "(`wandb sync` uploads it later; log in or set WANDB_MODE=online to log online)", flush=True)
        metadata = getattr(ctx.train_state, "metadata", None)
        run_id = (metadata or {}).get("wandb", {}).get("run_id")
        self.run = wandb.init(
            project=project, entity=entity, name=run_name, group=group, tags=tags, notes=notes, mode=mode,
            dir=str(directory), config=redacted(ctx.config or {}), id=run_id, resume="allow" if run_id else None,
        )
        if metadata is not None:
            metadata["wandb"] = {"run_id": self.run.id}

    def log(self, metrics: dict[str, Any], step: int) -> None:
        # A training and a validation record of the same step merge into one row (committed by the
        # next step or finish()); wandb drops a step lower than one already logged.
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        hf = Path(self.ctx.output_dir) / "hf"
        files = [p for p in hf.rglob("*") if p.is_file()] if self.log_model else []
        if files and max(p.stat().st_mtime for p in files) >= self.started:  # exported by this run
            artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model",
                                           metadata={"step": getattr(self.ctx.train_state, "step", None)})
            artifact.add_dir(str(hf))
            self.run.log_artifact(artifact)
        elif self.log_model:
            print(f"wandb: log_model: {hf} was not exported by this run; no model artifact", flush=True)
        # The loop closes loggers from its exception handler when training fails: mark the run failed.
        self.run.finish(exit_code=1 if sys.exc_info()[0] is not None else 0)
