"""What a launcher receives, and how a worker process runs a job."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Set by launchers in the environment of the processes they start: "train here, do not launch again".
LAUNCHED_ENV = "AUTOMODEL_LAUNCHED"


@dataclass
class Job:
    """A validated run, handed to ``launcher.launch(job)``.

    Attributes:
        config: the resolved, validated config.
        config_path: where that config was saved (``<output_dir>/config.yaml``); workers run it.
        plugin_modules: local plugin modules (``--plugin``) that workers must load too.
        plugins: the loaded plugins of this process (for in-process training).
        layout: the validated :class:`automodel.mesh.Layout` (for in-process training).
        run: the bound :class:`automodel.bound.RunPlan` of this process (for in-process training: the
            loop builds from it; a launched process validates the saved config itself).
    """

    config: dict[str, Any]
    config_path: Path
    plugin_modules: list[str] = field(default_factory=list)
    plugins: Any = None
    layout: Any = None
    run: Any = None

    def worker_command(self) -> list[str]:
        """The command a launched process runs: ``automodel run <config_path>`` plus local plugins."""
        cmd = ["-m", "automodel", "run", str(self.config_path)]
        for module in self.plugin_modules:
            cmd += ["--plugin", module]
        return cmd

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[LAUNCHED_ENV] = "1"
        # local plugin modules are importable from the directory the user launched in
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
        return env


def in_worker() -> bool:
    """True inside a process a launcher (or torchrun / srun with torchrun env) started."""
    return os.environ.get(LAUNCHED_ENV) == "1" or "TORCHELASTIC_RUN_ID" in os.environ


#: Exit code of a run that stopped on SIGTERM/SIGUSR1 after checkpointing: "requeue me".
#: Launchers (Slurm) requeue the job on it; the next run resumes from the checkpoint.
REQUEUE_EXIT_CODE = 75


def exit_now(code: int) -> None:
    """Leave this process with ``code`` without interpreter teardown. A worker that stops with its
    process group still up (an error, a ``SystemExit``) can otherwise abort in a C++ static destructor
    ("terminate called without an active exception"), and torchrun reports SIGABRT, not ``code``."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
