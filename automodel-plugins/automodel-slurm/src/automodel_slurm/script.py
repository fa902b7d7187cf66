"""Render the sbatch script of a job. Pure text: no Slurm needed, so ``dry_run`` works anywhere.

Two ways to start the processes, chosen by :meth:`SlurmOptions.layout`:

* ``torchrun``: ``srun`` starts one task per node, each running ``torchrun --nproc-per-node=P`` with a
  c10d rendezvous on the first node of the allocation (``scontrol show hostnames``).
* ``srun``: ``srun`` starts one task per process (per GPU); each task maps ``SLURM_PROCID`` /
  ``SLURM_LOCALID`` / ``SLURM_NTASKS`` to ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` for
  ``torch.distributed`` (env:// on the first node). This is what pyxis/enroot containers expect.

Preemption: ``--signal=B:USR1@<grace>`` sends USR1 to the batch shell only; its trap forwards the
signal to the training processes (through ``srun``, which signals every task on every node), waits,
and when training exits with the requeue code (75), or with an error after USR1, runs
``scontrol requeue``. SIGTERM is forwarded too but never leads to a requeue from the script: it
means Slurm itself is ending the job (``scancel``, time limit, its own requeue or preemption).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Literal

from automodel.launch import LAUNCHED_ENV, REQUEUE_EXIT_CODE
from automodel.signals import MARKER

#: Signals ``torchrun`` traps and forwards to its workers (it waits ``--shutdown-timeout`` for them).
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


@dataclass
class Plan:
    """How processes are laid out: ``mode`` (``torchrun`` or ``srun``), nodes, processes per node."""

    mode: str
    nodes: int
    procs_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def tasks_per_node(self) -> int:
        return self.procs_per_node if self.mode == "srun" else 1


@dataclass(eq=False)  # compared and hashed by identity, as launchers are
class SlurmOptions:
    """The ``launcher:`` section of the ``slurm`` launcher: these fields are its keys and types.

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
        mode: ``auto`` (see :meth:`layout`), ``torchrun`` or ``srun``: override the choice of launch mode.
    """

    nodes: int = 1
    ntasks_per_node: int | None = None
    nproc_per_node: int | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | int | None = None
    job_name: str | None = None
    container_image: str | None = None
    container_mounts: list[str] | None = None
    env: dict[str, Any] | None = None
    setup: list[str] | None = None
    sbatch_args: list[str] | None = None
    srun_args: list[str] | None = None
    requeue: bool = True
    signal_grace: int | None = 120
    max_requeues: int | None = None
    log_dir: str | None = None
    workdir: str | None = None
    python: str | None = None
    master_port: int | None = None
    dry_run: bool = False
    wait: bool = False
    mode: Literal["auto", "torchrun", "srun"] = "auto"

    def layout(self) -> Plan:
        """``ntasks_per_node`` asks for one Slurm task per process; ``nproc_per_node`` for one torchrun per
        node. With neither, there is one process per GPU (or one per node without GPUs): one task per
        GPU inside a container (pyxis starts one container per task), one torchrun per node otherwise."""
        procs = self.ntasks_per_node or self.nproc_per_node or self.gpus_per_node or 1
        mode = self.mode
        if mode == "auto":
            by_gpu = not self.nproc_per_node and (procs == 1 or bool(self.container_image))
            mode = "srun" if self.ntasks_per_node or by_gpu else "torchrun"
        return Plan(mode, self.nodes, procs)


@dataclass
class ScriptSpec:
    """Everything the script needs, already validated: the options as configured, and what one job
    resolves (the ``python``, ``workdir`` and ``job_name`` defaults, paths under ``output_dir``)."""

    options: SlurmOptions
    plan: Plan
    worker_command: list[str]  # ["-m", "automodel", "run", "<saved config>", ...]
    python: str
    workdir: str
    log_path: str  # with %j
    config_path: str
    output_dir: str
    job_name: str
    version: str = ""


def strip_sbatch(arg: str) -> str:
    """``"#SBATCH --exclusive"`` -> ``"--exclusive"`` (``sbatch_args`` may be copied from a script)."""
    arg = arg.strip()
    return arg[len("#SBATCH"):].strip() if arg.startswith("#SBATCH") else arg


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def sbatch_directives(spec: ScriptSpec) -> list[str]:
    p, o = spec.plan, spec.options
    lines = [
        f"--job-name={spec.job_name}",
        f"--nodes={p.nodes}",
        f"--ntasks-per-node={p.tasks_per_node}",
    ]
    if o.cpus_per_task:
        lines.append(f"--cpus-per-task={o.cpus_per_task}")
    if o.gpus_per_node:
        lines.append(f"--gpus-per-node={o.gpus_per_node}")
    if o.mem:
        lines.append(f"--mem={o.mem}")
    for key in ("partition", "account", "qos", "time"):
        value = getattr(o, key)
        if value:
            lines.append(f"--{key}={value}")
    lines += [f"--output={spec.log_path}", "--open-mode=append", f"--chdir={spec.workdir}"]
    lines.append("--requeue" if o.requeue else "--no-requeue")
    if o.signal_grace is not None:
        lines.append(f"--signal=B:USR1@{o.signal_grace}")
    lines += [strip_sbatch(a) for a in o.sbatch_args or []]
    return lines


def srun_command(spec: ScriptSpec) -> list[str]:
    """The ``srun`` command as shell lines (already quoted): srun options, then what each task runs."""
    p, o = spec.plan, spec.options
    srun = ["srun", "--kill-on-bad-exit=1", f"--nodes={p.nodes}", f"--ntasks-per-node={p.tasks_per_node}"]
    if o.cpus_per_task:  # Slurm 22.05-23.02 srun does not inherit it from sbatch
        srun.append(f"--cpus-per-task={o.cpus_per_task}")
    lines = [" ".join(srun)]
    if o.container_image:
        container = [f"--container-image={_q(o.container_image)}"]
        if o.container_mounts:
            container.append(f"--container-mounts={_q(','.join(o.container_mounts))}")
        container.append(f"--container-workdir={_q(spec.workdir)}")
        lines.append(" ".join(container))
    if o.srun_args:
        lines.append(" ".join(_q(a) for a in o.srun_args))
    worker = " ".join([_q(spec.python)] + [_q(a) for a in spec.worker_command])
    if p.mode == "torchrun":
        lines.append(f"{_q(spec.python)} -m torch.distributed.run --nnodes={p.nodes} --nproc-per-node={p.procs_per_node}")
        lines.append('--rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID"')
        lines.append(" ".join(_q(a) for a in spec.worker_command))
    else:
        setenv = ("export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS "
                  f"LOCAL_WORLD_SIZE={p.procs_per_node}")
        if p.procs_per_node > 1:  # like torchrun: do not let every process use every core
            setenv += " OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
        setenv += '; exec "$@"'
        lines.append(f"bash -c {_q(setenv)} automodel-worker")
        lines.append(worker)
    return lines


def render(spec: ScriptSpec) -> str:
    """The complete batch script: directives, environment, rendezvous and signal forwarding, the training
    step, and (with ``requeue``) the requeue decision."""
    out = ["#!/bin/bash"]
    out += [f"#SBATCH {line}" for line in sbatch_directives(spec)]
    out += _environment(spec) + _rendezvous(spec) + _training(spec)
    if spec.options.requeue:
        out += _requeue(spec.options)
    out.append('exit "$rc"')
    return "\n".join(out) + "\n"


def _environment(spec: ScriptSpec) -> list[str]:
    """What the script is, and the environment of the training processes (with launcher.setup)."""
    p, o = spec.plan, spec.options
    what = (f"{p.nodes} node(s) x {p.procs_per_node} process(es) = world size {p.world_size}, "
            + ("one torchrun per node" if p.mode == "torchrun" else "one srun task per process"))
    out = [
        f"# Written by automodel-slurm {spec.version}: {what}.",
        f"# Runs the saved, validated config {spec.config_path}",
        "# Submit again with: sbatch <this file>",
        "",
        f"export {LAUNCHED_ENV}=1",
        f'export PYTHONPATH={_q(spec.workdir)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
    ]
    for key, value in (o.env or {}).items():
        out.append(f"export {key}={_q(int(value) if isinstance(value, bool) else value)}")  # true -> 1
    if p.mode == "torchrun":
        out += [
            "# torchrun forwards these signals to its workers and waits for them before SIGKILL",
            f"export PET_SIGNALS_TO_HANDLE={TORCHRUN_SIGNALS}",
            f"export PET_SHUTDOWN_TIMEOUT={o.signal_grace or 30}",
        ]
    if o.setup:
        out += ["", "# setup (launcher.setup)"] + o.setup
    return out


def _rendezvous(spec: ScriptSpec) -> list[str]:
    """MASTER_ADDR/PORT from the allocation, and traps that forward USR1/TERM to the training processes."""
    port = str(spec.options.master_port) if spec.options.master_port else "$((20000 + SLURM_JOB_ID % 20000))"
    return [
        "",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MASTER_PORT={port}",
        "export MASTER_ADDR MASTER_PORT",
        'echo "automodel-slurm: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST,'
        ' rendezvous $MASTER_ADDR:$MASTER_PORT, $(date -u +%FT%TZ)"',
        "",
        "# Forward USR1 (Slurm's warning before a time limit or preemption) and TERM to the training",
        "# processes on every node; they checkpoint and exit with the requeue code.",
        'got_usr1=""; got_term=""; pid=""',
        "forward() {",
        '    echo "automodel-slurm: SIG$1 received, forwarding it to the training processes"',
        '    if [ -n "$pid" ]; then kill -s "$1" "$pid" 2>/dev/null || true; fi',
        "}",
        "trap 'got_usr1=1; forward USR1' USR1",
        "trap 'got_term=1; forward TERM' TERM",
    ]


def _training(spec: ScriptSpec) -> list[str]:
    """srun in the background (so the traps run), its exit code, and the requeue code when it stopped for a signal."""
    return [
        "",
        f"marker={_q(spec.output_dir + '/' + MARKER)}  # written by training when it stopped for a signal",
        'rm -f "$marker"',
        " \\\n    ".join(srun_command(spec)) + " &",
        "pid=$!",
        'wait "$pid"; rc=$?',
        'while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done  # a trap interrupted wait',
        'wait "$pid" 2>/dev/null; rc=$?',
        'echo "automodel-slurm: training exited with code $rc, $(date -u +%FT%TZ)"',
        f'if [ "$rc" -ne 0 ] && [ "$rc" -ne {REQUEUE_EXIT_CODE} ] && [ -f "$marker" ]; then',
        f'    echo "automodel-slurm: training checkpointed for a signal ($marker): exit code {REQUEUE_EXIT_CODE}"',
        f"    rc={REQUEUE_EXIT_CODE}  # torchrun and srun report their own code when workers exit {REQUEUE_EXIT_CODE}",
        "fi",
        "",
    ]


def _requeue(o: SlurmOptions) -> list[str]:
    """Requeue the job when the run checkpointed for a time limit / preemption (not for scancel's TERM)."""
    limit = []
    if o.max_requeues is not None:
        limit = [f'    if [ "${{SLURM_RESTART_COUNT:-0}}" -ge {o.max_requeues} ]; then\n'
                 f'        echo "automodel-slurm: not requeuing: already restarted {o.max_requeues} time(s)'
                 ' (launcher.max_requeues)"; exit "$rc"\n'
                 "    fi"]
    return [
        f"# {REQUEUE_EXIT_CODE}: the run checkpointed and asks to be requeued; it resumes from the checkpoint.",
        f'if [ -z "$got_term" ] && {{ [ "$rc" -eq {REQUEUE_EXIT_CODE} ] || {{ [ -n "$got_usr1" ] && [ "$rc" -ne 0 ]; }}; }}; then',
        *limit,
        '    echo "automodel-slurm: requeuing job $SLURM_JOB_ID"',
        "    trap '' TERM USR1",
        '    scontrol requeue "$SLURM_JOB_ID" || echo "automodel-slurm: scontrol requeue failed"',
        "    exit 0",
        "fi",
    ]
