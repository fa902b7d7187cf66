"""examples/third_party_plugin: installed with pip, listed and checked, and its own tests pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from automodel.testing import run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "third_party_plugin"


def test_example_plugin_installs_checks_and_passes_its_tests(tmp_path):
    site = tmp_path / "site"  # real installation metadata, kept out of this venv
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                          "--target", str(site), str(EXAMPLE)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": str(site)}
    check = run_cli("plugins", "--check", env=env)
    assert "focal  (automodel-focal 0.1.0, entry point)" in check.stdout and "all plugins OK" in check.stdout
    assert "losses: focal  focal loss over label tokens" in check.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                           cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "4 passed" in tests.stdout
