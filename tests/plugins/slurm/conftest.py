"""A real single-node Slurm cluster for the slurm launcher tests.

``slurm_cluster`` checks that slurmctld answers and the node is usable; if not, it runs
``automodel-plugins/automodel-slurm/ci/start_slurm.sh`` (installs and starts munge, slurmctld, slurmd;
root only) and fails loudly when that does not give a working cluster. Nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
START = REPO / "automodel-plugins" / "automodel-slurm" / "ci" / "start_slurm.sh"
GOLDEN = Path(__file__).parent / "golden"


def _cluster_problem() -> str | None:
    """None when sbatch exists, slurmctld answers and a node can take jobs; else what is wrong."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        if "UP" not in ping.stdout:
            return f"scontrol ping: {ping.stdout.strip()} {ping.stderr.strip()}"
        info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "slurmctld does not answer"
    states = info.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no usable node (sinfo states: {states})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    if os.geteuid() != 0:
        pytest.fail(f"no Slurm cluster ({problem}) and not root, so {START} cannot start one; run it as root first")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
    again = _cluster_problem()
    if proc.returncode != 0 or again is not None:
        pytest.fail(f"could not start the Slurm test cluster ({again or 'start script failed'}):\n"
                    f"$ {START}  (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}")
    print(f"started the Slurm cluster in {time.monotonic() - t0:.1f} s: {proc.stderr.strip().splitlines()[-1]}")
