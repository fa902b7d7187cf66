"""Helpers for the slurm launcher tests: job state polling through ``scontrol`` (no accounting needed)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from automodel_slurm.slurm import FINAL_STATES, job_info

__all__ = ["job_info", "submitted_job_id", "wait_done", "wait_until"]


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


def wait_done(job_id: str, timeout: float = 300) -> dict[str, str]:
    return wait_until(job_id, lambda i: i.get("JobState") in FINAL_STATES, timeout, "a final state")


def submitted_job_id(stdout: str) -> str:
    m = re.search(r"submitted Slurm job (\d+)", stdout)
    assert m, f"no job id in the launcher's output:\n{stdout}"
    return m.group(1)
