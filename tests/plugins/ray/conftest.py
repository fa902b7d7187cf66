"""A real two-node Ray cluster (head + one more node, both on 127.0.0.1) for the ray launcher tests.

``ray_cluster`` uses the cluster ``automodel-plugins/automodel-ray/ci/start_ray.sh`` starts (``.ci/run`` starts
it once before pytest); its address is in ``$AUTOMODEL_RAY_DIR/address`` (default /tmp/automodel-test-ray).
Not running: under CI (``CI=true``) the tests fail; elsewhere the fixture starts it with the same script
(no root needed; stop it with ``start_ray.sh stop``). Ray not importable: the tests are skipped with the
reason (failed under CI).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
START = REPO / "automodel-plugins" / "automodel-ray" / "ci" / "start_ray.sh"
BASE = Path(os.environ.get("AUTOMODEL_RAY_DIR", "/tmp/automodel-test-ray"))
# the test cluster runs with Ray's token authentication (ci/start_ray.sh); clients and launched runs use it too
os.environ["RAY_AUTH_MODE"] = "token"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return True
    except OSError:
        return False


def _cluster() -> dict[str, str] | None:
    try:
        address = (BASE / "address").read_text().strip()
        dashboard = (BASE / "dashboard").read_text().strip()
    except OSError:
        return None
    return {"address": address, "dashboard": dashboard} if _answers(address) else None


@pytest.fixture(scope="session")
def ray_cluster() -> dict[str, str]:
    """{"address": GCS host:port, "dashboard": Jobs API URL} of the running two-node test cluster."""
    try:
        import ray  # noqa: F401
    except ImportError as e:
        message = f"Ray cannot be imported ({e}): pip install 'ray[default,train]' (requirements-dev.txt)"
        if _in_ci():
            pytest.fail(message + " (CI=true: never skipped in CI)")
        pytest.skip(message)
    found = _cluster()
    if found is not None:
        return found
    if _in_ci():
        pytest.fail(f"no Ray test cluster at {BASE}/address: .ci/run starts it with bash {START.relative_to(REPO)} "
                    "before pytest (CI=true: never started or skipped here)")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
    found = _cluster()
    if proc.returncode != 0 or found is None:
        pytest.fail(f"could not start the Ray test cluster:\n$ bash {START}  (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}")
    print(f"started the Ray test cluster in {time.monotonic() - t0:.1f} s (stop it: bash {START} stop)")
    return found
