"""Talking to Slurm through its commands (sbatch, scontrol, sinfo), with errors a user can act on."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from automodel.errors import AutomodelError

#: Job states after which a job will not run again (a requeued job goes back to PENDING).
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED",
}


class SlurmError(AutomodelError):
    """A Slurm command failed or is missing; the message shows the command and its output."""


def _which(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SlurmError(
            f"'{program}' was not found on PATH, so the slurm launcher cannot submit the job.\n"
            f"    PATH={os.environ.get('PATH', '')}\n"
            "    -> run this on a Slurm login node (or add the Slurm client commands to PATH),\n"
            "       or preview the job script without submitting: automodel run ... --dry-run (launcher.dry_run=true)"
        )
    return path


def run_command(args: list[str], what: str, cwd: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a Slurm command; on failure raise :class:`SlurmError` with the command and its stderr."""
    exe = _which(args[0])
    try:
        proc = subprocess.run([exe, *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{what}: `{shlex.join(args)}` did not answer within {timeout:.0f} s "
                         "(is slurmctld up? `scontrol ping`)") from None
    if proc.returncode != 0:
        raise SlurmError(_failure(args, proc, what))
    return proc


def _failure(args: list[str], proc: subprocess.CompletedProcess[str], what: str) -> str:
    err = (proc.stderr or proc.stdout or "").strip() or "(no output)"
    lines = [f"{what}: `{shlex.join(args)}` exited with code {proc.returncode}:"]
    lines += [f"    {line}" for line in err.splitlines()]
    hint = _hint(err)
    if hint:
        lines.append(f"    -> {hint}")
    return "\n".join(lines)


def _hint(stderr: str) -> str | None:
    low = stderr.lower()
    if "partition" in low and ("invalid" in low or "not available" in low):
        names = partitions()
        return f"check launcher.partition; partitions here: {', '.join(names) or 'unknown (sinfo failed)'}"
    if "account" in low and ("invalid" in low or "association" in low):
        return "check launcher.account (`sacctmgr show assoc user=$USER` lists yours)"
    if "qos" in low:
        return "check launcher.qos"
    if any(m in low for m in ("node configuration is not available", "more processors requested",
                              "node count specification", "memory specification")):
        return "the partition has no nodes that large: check launcher.nodes, ntasks_per_node, gpus_per_node, cpus_per_task, mem"
    if "generic resource" in low or "gres" in low:
        return "check launcher.gpus_per_node: the partition has no such GPUs (`sinfo -o '%P %G'`)"
    if "time limit" in low:
        return "check launcher.time against the partition's MaxTime (`sinfo -o '%P %l'`)"
    return None


def partitions() -> list[str]:
    """Partition names from ``sinfo`` (empty when it fails)."""
    exe = shutil.which("sinfo")
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, "-h", "-o", "%R"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return []
    return sorted(set(proc.stdout.split())) if proc.returncode == 0 else []


def submit(script: Path, cwd: str | None = None, extra: list[str] | None = None) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id."""
    args = ["sbatch", "--parsable", *(extra or []), str(script)]
    proc = run_command(args, "sbatch refused the job", cwd=cwd)
    out = proc.stdout.strip().splitlines()
    job_id = out[-1].split(";")[0].strip() if out else ""
    if not job_id.isdigit():
        raise SlurmError(f"sbatch refused the job: `{shlex.join(args)}` printed no job id:\n    {proc.stdout}{proc.stderr}")
    return job_id


def test_only(script: Path, cwd: str | None = None) -> str:
    """``sbatch --test-only SCRIPT``: Slurm checks the job against the cluster without queueing it."""
    proc = run_command(["sbatch", "--test-only", str(script)], "sbatch --test-only rejected the job", cwd=cwd)
    return (proc.stderr + proc.stdout).strip()


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job -o ID`` as a dict (JobState, ExitCode, Restarts, ...)."""
    proc = run_command(["scontrol", "show", "job", "-o", str(job_id)], f"cannot query Slurm job {job_id}")
    info: dict[str, str] = {}
    for word in proc.stdout.split():
        key, sep, value = word.partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def wait_for_job(job_id: str, poll: float = 2.0, timeout: float | None = None, log: str | None = None) -> tuple[str, int]:
    """Wait until the job reaches a final state; returns ``(state, exit code)``. A requeued job
    goes back to PENDING and is waited for again."""
    start = time.monotonic()
    last: tuple[str, str] | None = None
    while True:
        info = job_info(job_id)
        state = info.get("JobState", "UNKNOWN")
        reason, restarts = info.get("Reason", "None"), info.get("Restarts", "0")
        if (state, reason) != last:
            print(f"  job {job_id}: {state}" + (f" ({reason})" if reason != "None" else "")
                  + (f", restart {restarts}" if restarts != "0" else ""), flush=True)
            last = (state, reason)
        if state in FINAL_STATES:
            code = int(info.get("ExitCode", "0:0").split(":")[0] or 0)
            return state, code
        if timeout is not None and time.monotonic() - start > timeout:
            raise SlurmError(f"Slurm job {job_id} still {state} after {timeout:.0f} s" + (f"; log: {log}" if log else ""))
        time.sleep(poll)
