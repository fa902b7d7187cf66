"""Helpers for the slurm launcher tests: job state polling through ``scontrol`` (no accounting needed)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    info: dict[str, str] = {}
    for word in out.stdout.split():
        key, sep, value = word.partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def wait_until(job_id: str, predicate: Callable[[dict[str, str]], bool], timeout: float, what: str, poll: float = 0.5) -> dict[str, str]:
    """Poll ``scontrol show job`` until ``predicate(info)``; fail with the job's state and log otherwise."""
    deadline = time.monotonic() + timeout
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = job_info(job_id)
        if predicate(info):
            return info
        time.sleep(poll)
    log = Path(info.get("StdOut", "")) if info.get("StdOut") else None
    tail = log.read_text()[-3000:] if log and log.is_file() else "(no log)"
    pytest.fail(f"job {job_id} did not reach '{what}' in {timeout:.0f} s; state {info.get('JobState')}\n{tail}")


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def wait_done(job_id: str, timeout: float = 300) -> dict[str, str]:
    return wait_until(job_id, lambda i: i.get("JobState") in FINAL, timeout, "a final state")


def submitted_job_id(stdout: str) -> str:
    m = re.search(r"submitted Slurm job (\d+)", stdout)
    assert m, f"no job id in the launcher's output:\n{stdout}"
    return m.group(1)
