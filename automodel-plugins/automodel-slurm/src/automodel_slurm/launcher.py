"""The ``slurm`` launcher: write an sbatch script for the validated job, submit it, report the job id.

The ``launcher:`` section is this class's signature (the core validates keys and types against it)
plus :meth:`SlurmLauncher.validate_args`. ``world_size`` (nodes x processes per node) lets the core
check the parallel layout and batch sizes before anything is submitted.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from automodel.errors import AutomodelError

from automodel_slurm import __version__
from automodel_slurm.script import Plan, ScriptSpec, plan, render
from automodel_slurm.slurm import SlurmError, submit, wait_for_job

_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|UNLIMITED|INFINITE)$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORD = re.compile(r"^[^\s'\"\\;&|<>`$]+$")  # a plain Slurm name: no spaces or shell characters


class SlurmLauncher:
    """Submit the run as a Slurm batch job.

    Args:
        nodes: number of nodes.
        ntasks_per_node: one Slurm task per training process, this many per node (``srun`` starts
            them; ``RANK`` = ``SLURM_PROCID``). Exclusive with ``nproc_per_node``.
        nproc_per_node: one ``torchrun`` per node starting this many processes (c10d rendezvous on
            the first node).
        gpus_per_node: GPUs to allocate per node (``--gpus-per-node``). Alone, it also sets the
            processes per node: one task per GPU in a container, one torchrun per node otherwise.
        cpus_per_task: CPUs per Slurm task (per process with ``ntasks_per_node``, per node with
            torchrun).
        mem: memory per node, Slurm syntax (``"64G"``).
        partition, account, qos: as in ``sbatch``.
        time: time limit, Slurm syntax as a *quoted* string (``"04:00:00"``, ``"1-00:00:00"``,
            ``"30"`` minutes).
        job_name: default ``automodel-<output_dir name>``.
        container_image, container_mounts: run in a pyxis/enroot container
            (``srun --container-image --container-mounts``; mounts are ``src:dst`` strings).
        env: environment variables exported in the job (values are literal, not shell-expanded).
        setup: shell lines run before training (``module load ...``, ``source venv/bin/activate``).
        sbatch_args: extra ``#SBATCH`` options (``--exclusive``, ``--constraint=h100``); they come
            last, so they override the rendered ones.
        srun_args: extra ``srun`` options.
        requeue: ``#SBATCH --requeue``, and requeue the job when training exits with the requeue
            code (75) after checkpointing on a signal.
        signal_grace: seconds before the time limit at which Slurm sends USR1 to the batch script
            (``--signal=B:USR1@<grace>``); ``null`` for no signal. Must cover a step plus a checkpoint.
        max_requeues: stop requeuing after this many restarts (``SLURM_RESTART_COUNT``).
        log_dir: where the job log goes, default ``<output_dir>/slurm``.
        workdir: the job's working directory (``--chdir``), default the current directory (it is put
            on ``PYTHONPATH`` so local ``--plugin`` modules import on the nodes).
        python: the interpreter on the compute nodes; default this one (``python`` in a container).
        master_port: rendezvous port; default derived from the job id (20000-39999).
        dry_run: print the script (written to ``<output_dir>/slurm/job.sbatch``), do not submit.
        wait: after submitting, wait for the job to finish and exit with its exit code.
        mode: ``auto`` (see above), ``torchrun`` or ``srun``: override the choice of launch mode.
    """

    def __init__(
        self,
        nodes: int = 1,
        ntasks_per_node: int | None = None,
        nproc_per_node: int | None = None,
        gpus_per_node: int | None = None,
        cpus_per_task: int | None = None,
        mem: str | None = None,
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        time: str | int | None = None,
        job_name: str | None = None,
        container_image: str | None = None,
        container_mounts: list[str] | None = None,
        env: dict[str, Any] | None = None,
        setup: list[str] | None = None,
        sbatch_args: list[str] | None = None,
        srun_args: list[str] | None = None,
        requeue: bool = True,
        signal_grace: int | None = 120,
        max_requeues: int | None = None,
        log_dir: str | None = None,
        workdir: str | None = None,
        python: str | None = None,
        master_port: int | None = None,
        dry_run: bool = False,
        wait: bool = False,
        mode: Literal["auto", "torchrun", "srun"] = "auto",
    ):
        problems = self.validate_args(dict(locals()))
        if problems:
            key, message, hint = problems[0]
            raise AutomodelError(f"launcher.{key}: {message}" + (f"\n    -> {hint}" if hint else ""))
        self.plan: Plan = plan(nodes, ntasks_per_node, nproc_per_node, gpus_per_node, container_image)
        if mode != "auto":
            self.plan = Plan(mode, nodes, self.plan.procs_per_node)
        self.world_size = self.plan.world_size
        self.gpus_per_node = gpus_per_node
        self.cpus_per_task = cpus_per_task
        self.mem = mem
        self.partition, self.account, self.qos, self.time = partition, account, qos, time
        self.job_name = job_name
        self.container_image = container_image
        self.container_mounts = list(container_mounts or [])
        self.env = dict(env or {})
        self.setup = list(setup or [])
        self.sbatch_args = [_strip_sbatch(a) for a in sbatch_args or []]
        self.srun_args = list(srun_args or [])
        self.requeue = requeue
        self.signal_grace = signal_grace
        self.max_requeues = max_requeues
        self.log_dir = log_dir
        self.workdir = workdir
        self.python = python or ("python" if container_image else sys.executable)
        self.master_port = master_port
        self.dry_run = dry_run
        self.wait = wait

    # ----------------------------------------------------------------------------------------------

    def script_spec(self, job: Any) -> ScriptSpec:
        out = Path(job.config["output_dir"]).resolve()
        log_dir = Path(self.log_dir).resolve() if self.log_dir else out / "slurm"
        return ScriptSpec(
            plan=self.plan,
            worker_command=job.worker_command(),
            python=self.python,
            workdir=str(Path(self.workdir).resolve()) if self.workdir else os.getcwd(),
            log_path=str(log_dir / "slurm-%j.out"),
            config_path=str(job.config_path),
            output_dir=str(out),
            job_name=self.job_name or f"automodel-{out.name}",
            partition=self.partition, account=self.account, qos=self.qos, time=self.time,
            gpus_per_node=self.gpus_per_node, cpus_per_task=self.cpus_per_task, mem=self.mem,
            container_image=self.container_image, container_mounts=self.container_mounts,
            env=self.env, setup=self.setup, sbatch_args=self.sbatch_args, srun_args=self.srun_args,
            requeue=self.requeue, signal_grace=self.signal_grace, max_requeues=self.max_requeues,
            master_port=self.master_port, version=__version__,
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
        """``automodel run --dry-run``: write and print the script, submit nothing."""
        _, text, script = self._write_script(job)
        print(text, end="")
        print(f"# dry run: not submitted. Script: {script}\n# submit with: sbatch {script}", flush=True)

    def launch(self, job: Any) -> int:
        if self.dry_run:
            self.preview(job)
            return 0
        spec, _, script = self._write_script(job)
        self._warn_about_resume(job.config)
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

    def _warn_about_resume(self, config: dict[str, Any]) -> None:
        ckpt = config.get("checkpoint") or {}
        if self.requeue and ckpt.get("resume") == "never":
            print("warning: launcher.requeue is on but checkpoint.resume is 'never': a requeued job starts over",
                  file=sys.stderr, flush=True)

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
                elif key != "setup" and not _strip_sbatch(item).startswith("-"):
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


def _strip_sbatch(arg: str) -> str:
    arg = arg.strip()
    return arg[len("#SBATCH"):].strip() if arg.startswith("#SBATCH") else arg


__all__ = ["SlurmLauncher", "SlurmError"]
