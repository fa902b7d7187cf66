"""Render the sbatch script of a job. Pure text: no Slurm needed, so ``dry_run`` works anywhere.

Two ways to start the processes, chosen by :func:`plan`:

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
from dataclasses import dataclass, field
from typing import Any

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


def plan(
    nodes: int = 1,
    ntasks_per_node: int | None = None,
    nproc_per_node: int | None = None,
    gpus_per_node: int | None = None,
    container_image: str | None = None,
) -> Plan:
    """Choose the layout from the config.

    ``ntasks_per_node`` asks for one Slurm task per process; ``nproc_per_node`` for one torchrun per
    node. With neither, there is one process per GPU (or one per node without GPUs): one task per
    GPU inside a container (pyxis starts one container per task), one torchrun per node otherwise.
    """
    if ntasks_per_node:
        return Plan("srun", nodes, ntasks_per_node)
    if nproc_per_node:
        return Plan("torchrun", nodes, nproc_per_node)
    procs = gpus_per_node or 1
    if procs == 1 or container_image:
        return Plan("srun", nodes, procs)
    return Plan("torchrun", nodes, procs)


@dataclass
class ScriptSpec:
    """Everything the script needs, already validated."""

    plan: Plan
    worker_command: list[str]  # ["-m", "automodel", "run", "<saved config>", ...]
    python: str
    workdir: str
    log_path: str  # with %j
    config_path: str
    output_dir: str
    job_name: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    container_image: str | None = None
    container_mounts: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    sbatch_args: list[str] = field(default_factory=list)
    srun_args: list[str] = field(default_factory=list)
    requeue: bool = True
    signal_grace: int | None = 120
    max_requeues: int | None = None
    master_port: int | None = None
    version: str = ""


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        value = int(value)
    return _q(value)


def sbatch_directives(spec: ScriptSpec) -> list[str]:
    p = spec.plan
    lines = [
        f"--job-name={spec.job_name}",
        f"--nodes={p.nodes}",
        f"--ntasks-per-node={p.tasks_per_node}",
    ]
    if spec.cpus_per_task:
        lines.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.gpus_per_node:
        lines.append(f"--gpus-per-node={spec.gpus_per_node}")
    if spec.mem:
        lines.append(f"--mem={spec.mem}")
    for key in ("partition", "account", "qos", "time"):
        value = getattr(spec, key)
        if value:
            lines.append(f"--{key}={value}")
    lines += [f"--output={spec.log_path}", "--open-mode=append", f"--chdir={spec.workdir}"]
    lines.append("--requeue" if spec.requeue else "--no-requeue")
    if spec.signal_grace is not None:
        lines.append(f"--signal=B:USR1@{spec.signal_grace}")
    lines += spec.sbatch_args
    return lines


def srun_command(spec: ScriptSpec) -> list[str]:
    """The ``srun`` command as shell lines (already quoted): srun options, then what each task runs."""
    p = spec.plan
    srun = ["srun", "--kill-on-bad-exit=1", f"--nodes={p.nodes}", f"--ntasks-per-node={p.tasks_per_node}"]
    if spec.cpus_per_task:  # Slurm 22.05-23.02 srun does not inherit it from sbatch
        srun.append(f"--cpus-per-task={spec.cpus_per_task}")
    lines = [" ".join(srun)]
    if spec.container_image:
        container = [f"--container-image={_q(spec.container_image)}"]
        if spec.container_mounts:
            container.append(f"--container-mounts={_q(','.join(spec.container_mounts))}")
        container.append(f"--container-workdir={_q(spec.workdir)}")
        lines.append(" ".join(container))
    if spec.srun_args:
        lines.append(" ".join(_q(a) for a in spec.srun_args))
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
    """The complete batch script."""
    p = spec.plan
    out = ["#!/bin/bash"]
    out += [f"#SBATCH {line}" for line in sbatch_directives(spec)]
    what = (f"{p.nodes} node(s) x {p.procs_per_node} process(es) = world size {p.world_size}, "
            + ("one torchrun per node" if p.mode == "torchrun" else "one srun task per process"))
    out += [
        f"# Written by automodel-slurm {spec.version}: {what}.",
        f"# Runs the saved, validated config {spec.config_path}",
        "# Submit again with: sbatch <this file>",
        "",
        f"export {LAUNCHED_ENV}=1",
        f'export PYTHONPATH={_q(spec.workdir)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
    ]
    for key, value in spec.env.items():
        out.append(f"export {key}={_env_value(value)}")
    if spec.plan.mode == "torchrun":
        out += [
            "# torchrun forwards these signals to its workers and waits for them before SIGKILL",
            f"export PET_SIGNALS_TO_HANDLE={TORCHRUN_SIGNALS}",
            f"export PET_SHUTDOWN_TIMEOUT={spec.signal_grace or 30}",
        ]
    if spec.setup:
        out += ["", "# setup (launcher.setup)"] + list(spec.setup)
    port = str(spec.master_port) if spec.master_port else "$((20000 + SLURM_JOB_ID % 20000))"
    out += [
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
    if spec.requeue:
        limit = ""
        if spec.max_requeues is not None:
            limit = (f'    if [ "${{SLURM_RESTART_COUNT:-0}}" -ge {spec.max_requeues} ]; then\n'
                     f'        echo "automodel-slurm: not requeuing: already restarted {spec.max_requeues} time(s)'
                     ' (launcher.max_requeues)"; exit "$rc"\n'
                     "    fi\n")
        out += [
            f"# {REQUEUE_EXIT_CODE}: the run checkpointed and asks to be requeued; it resumes from the checkpoint.",
            f'if [ -z "$got_term" ] && {{ [ "$rc" -eq {REQUEUE_EXIT_CODE} ] || {{ [ -n "$got_usr1" ] && [ "$rc" -ne 0 ]; }}; }}; then',
            *([limit.rstrip("\n")] if limit else []),
            '    echo "automodel-slurm: requeuing job $SLURM_JOB_ID"',
            "    trap '' TERM USR1",
            '    scontrol requeue "$SLURM_JOB_ID" || echo "automodel-slurm: scontrol requeue failed"',
            "    exit 0",
            "fi",
        ]
    out.append('exit "$rc"')
    return "\n".join(out) + "\n"
