"""The ``slurm`` launcher: write an sbatch script for the validated job, submit it, report the job id.

The ``launcher:`` section is this class's signature, the fields of :class:`SlurmOptions` (the core
validates keys and types against it), plus :meth:`SlurmLauncher.validate_args`. ``world_size`` (nodes x processes per node) lets the core
check the parallel layout and batch sizes before anything is submitted.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automodel.errors import AutomodelError

from automodel_slurm import __version__
from automodel_slurm.script import Plan, ScriptSpec, SlurmOptions, render, strip_sbatch
from automodel_slurm.slurm import SlurmError, submit, wait_for_job

_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|UNLIMITED|INFINITE)$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORD = re.compile(r"^[^\s'\"\\;&|<>`$]+$")  # a plain Slurm name: no spaces or shell characters


@dataclass(eq=False)
class SlurmLauncher(SlurmOptions):
    """Submit the run as a Slurm batch job. Its arguments, the ``launcher:`` keys, are the fields of
    :class:`~automodel_slurm.script.SlurmOptions` (documented there), which the script is rendered from."""

    def __post_init__(self) -> None:
        problems = self.validate_args(dict(vars(self)))
        if problems:
            key, message, hint = problems[0]
            raise AutomodelError(f"launcher.{key}: {message}" + (f"\n    -> {hint}" if hint else ""))
        self.plan: Plan = self.layout()

    @property
    def world_size(self) -> int:
        return self.plan.world_size

    # ----------------------------------------------------------------------------------------------

    def script_spec(self, job: Any) -> ScriptSpec:
        out = Path(job.config["output_dir"]).resolve()
        log_dir = Path(self.log_dir).resolve() if self.log_dir else out / "slurm"
        return ScriptSpec(
            options=self,
            plan=self.plan,
            worker_command=job.worker_command(),
            python=self.python or ("python" if self.container_image else sys.executable),
            workdir=str(Path(self.workdir).resolve()) if self.workdir else os.getcwd(),
            log_path=str(log_dir / "slurm-%j.out"),
            config_path=str(job.config_path),
            output_dir=str(out),
            job_name=self.job_name or f"automodel-{out.name}",
            version=__version__,
        )

    def _write_script(self, job: Any) -> tuple[Any, str, Path]:
        spec = self.script_spec(job)
        text = render(spec)
        script = Path(job.config["output_dir"]).resolve() / "slurm" / "job.sbatch"
        script.parent.mkdir(parents=True, exist_ok=True)
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text)
        return spec, text, script

    def preview(self, job: Any) -> None:
        """``automodel run --dry-run``: print the script; write nothing, submit nothing."""
        text = render(self.script_spec(job))
        script = Path(job.config["output_dir"]).resolve() / "slurm" / "job.sbatch"
        print(text, end="")
        print(f"# dry run: nothing written, nothing submitted. launcher.dry_run=true writes this script to {script}\n"
              f"# (and {job.config_path}) without submitting it; then: sbatch {script}", flush=True)

    def launch(self, job: Any) -> int:
        if self.dry_run:  # launcher.dry_run=true: write config.yaml (the CLI did) and the script, submit nothing
            _, text, script = self._write_script(job)
            print(text, end="")
            print(f"# dry run: not submitted. Script: {script}\n# submit with: sbatch {script}", flush=True)
            return 0
        spec, _, script = self._write_script(job)
        if self.requeue and (job.config.get("checkpoint") or {}).get("resume") == "never":
            print("warning: launcher.requeue is on but checkpoint.resume is 'never': a requeued job starts over",
                  file=sys.stderr, flush=True)
        job_id = submit(script, cwd=spec.workdir)
        log = spec.log_path.replace("%j", job_id)
        p = self.plan
        print(f"submitted Slurm job {job_id} ({spec.job_name}): {p.nodes} node(s) x {p.procs_per_node} "
              f"process(es), {'torchrun per node' if p.mode == 'torchrun' else 'one task per process'}", flush=True)
        print(f"  script: {script}\n  log:    {log}\n  watch:  squeue -j {job_id}    cancel: scancel {job_id}", flush=True)
        if not self.wait:
            return 0
        state, code = wait_for_job(job_id, log=log)
        print(f"Slurm job {job_id} ended: {state}, exit code {code}", flush=True)
        return code if code else (0 if state == "COMPLETED" else 1)

    # ----------------------------------------------------------------------------------------------

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Checks beyond types, run by ``automodel validate`` / ``run`` before anything is submitted."""
        problems: list[tuple[str, str, str]] = []
        for key in ("nodes", "ntasks_per_node", "nproc_per_node", "gpus_per_node", "cpus_per_task"):
            value = args.get(key)
            if isinstance(value, int) and value < 1:
                problems.append((key, f"must be >= 1, got {value}", ""))
        if args.get("ntasks_per_node") and args.get("nproc_per_node"):
            problems.append(("nproc_per_node", "give ntasks_per_node (one Slurm task per process) or nproc_per_node "
                             "(one torchrun per node), not both", "remove one of them"))
        time = args.get("time")
        if isinstance(time, int) and not isinstance(time, bool):
            problems.append(("time", f"got the number {time}: YAML reads an unquoted 4:00:00 as 14400",
                             "quote it: time: \"04:00:00\" (or \"30\" for 30 minutes)"))
        elif isinstance(time, str) and not _TIME.match(time):
            problems.append(("time", f"{time!r} is not a Slurm time limit",
                             "use \"MM\", \"HH:MM:SS\" or \"D-HH:MM:SS\", e.g. \"04:00:00\""))
        for key in ("partition", "account", "qos", "job_name", "mem"):
            value = args.get(key)
            if isinstance(value, str) and not _WORD.match(value):
                problems.append((key, f"{value!r} contains spaces or shell characters", ""))
        if args.get("container_mounts") and not args.get("container_image"):
            problems.append(("container_mounts", "container_mounts needs container_image", "add container_image: <image>"))
        for i, mount in enumerate(args.get("container_mounts") or []):
            if not isinstance(mount, str) or not mount or "," in mount:
                problems.append((f"container_mounts.{i}", f"expected one 'src:dst[:flags]' string, got {mount!r}", ""))
        for key, value in (args.get("env") or {}).items():
            if not _ENV_KEY.match(str(key)):
                problems.append((f"env.{key}", "not a valid environment variable name", ""))
            elif not isinstance(value, (str, int, float, bool)):
                problems.append((f"env.{key}", f"expected a string or number, got {type(value).__name__}", ""))
        for key in ("sbatch_args", "srun_args", "setup"):
            for i, item in enumerate(args.get(key) or []):
                if not isinstance(item, str):
                    problems.append((f"{key}.{i}", f"expected a string, got {type(item).__name__} {item!r}", ""))
                elif key != "setup" and not strip_sbatch(item).startswith("-"):
                    problems.append((f"{key}.{i}", f"{item!r} is not an option", "write options like --exclusive or --constraint=h100"))
        grace = args.get("signal_grace")
        if isinstance(grace, int) and not 0 <= grace <= 65535:
            problems.append(("signal_grace", f"must be between 0 and 65535 seconds, got {grace}", ""))
        port = args.get("master_port")
        if isinstance(port, int) and not 1024 <= port <= 65535:
            problems.append(("master_port", f"must be between 1024 and 65535, got {port}", ""))
        n = args.get("max_requeues")
        if isinstance(n, int) and n < 0:
            problems.append(("max_requeues", f"must be >= 0, got {n}", ""))
        mode = args.get("mode", "auto")
        if mode == "torchrun" and args.get("ntasks_per_node"):
            problems.append(("mode", "mode torchrun starts one task per node; ntasks_per_node asks for one task per process",
                             "use nproc_per_node with torchrun"))
        return problems


__all__ = ["SlurmLauncher", "SlurmError"]
