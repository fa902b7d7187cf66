"""A real single-node Slurm cluster for the slurm launcher tests.

``slurm_cluster`` points every Slurm command at the test cluster (``SLURM_CONF=<dir>/slurm.conf``, the
directory ``automodel-plugins/automodel-slurm/ci/start_slurm.sh`` keeps it in: ``AUTOMODEL_SLURM_DIR``,
default /var/lib/automodel-test-slurm), never at a Slurm the machine has of its own. It checks that the
test cluster answers; if not, it runs the script (installs and starts munge, slurmctld, slurmd: root
only, about 10 s, a minute more when it installs the packages) and fails loudly when that does not give
a working cluster. Not root and no cluster running: the tests that need it are skipped, saying how to
start it, except in CI (``CI=true``), where they fail.
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
CONF = Path(os.environ.get("AUTOMODEL_SLURM_DIR", "/var/lib/automodel-test-slurm")) / "slurm.conf"


def _cluster_problem() -> str | None:
    """None when sbatch exists, the test cluster's slurmctld answers and a node can take jobs; else what is wrong."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH"
    if not CONF.is_file():
        return f"no test cluster config {CONF}"
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
    ensure_cluster()


def ensure_cluster() -> None:
    """Use the test cluster, starting it as root if needed; skip (fail under CI=true) when that is impossible."""
    os.environ["SLURM_CONF"] = str(CONF)  # this process, the CLI runs it starts and the jobs they submit
    problem = _cluster_problem()
    if problem is None:
        return
    if os.geteuid() != 0:
        message = (f"no Slurm test cluster ({problem}) and not root, so {START} cannot start one; "
                   f"start it once as root (sudo bash {START.relative_to(REPO)}), or leave these tests out: "
                   "pytest --ignore=tests/plugins/slurm")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI=true: never skipped in CI)")
        pytest.skip(message)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
    again = _cluster_problem()
    if proc.returncode != 0 or again is not None:
        pytest.fail(f"could not start the Slurm test cluster ({again or 'start script failed'}):\n"
                    f"$ {START}  (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}")
    print(f"started the Slurm cluster in {time.monotonic() - t0:.1f} s: {proc.stderr.strip().splitlines()[-1]}")
