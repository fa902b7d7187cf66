"""`automodel new-plugin`: one package per kind, installed with pip, listed, checked and its tests pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from automodel.errors import AutomodelError
from automodel.scaffold import EXTRA_KINDS, KINDS, create
from automodel.testing import run_cli

ALL_KINDS = [*KINDS, *EXTRA_KINDS]


def test_every_kind_generates_a_package_that_installs_lists_checks_and_passes_its_tests(tmp_path):
    for kind in ALL_KINDS:
        assert run_cli("new-plugin", f"sc_{kind}", "--kind", kind, "--dir", tmp_path / "src").returncode == 0
    packages = sorted((tmp_path / "src").iterdir())
    assert len(packages) == len(ALL_KINDS)
    # the generated code is lint-clean under this repo's rules
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *map(str, packages)], capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    # real installation metadata (entry points), kept out of this venv: pip --target + PYTHONPATH
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                          "--target", str(site), *map(str, packages)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": str(site)}
    check = run_cli("plugins", "--check", env=env)
    assert "all plugins OK" in check.stdout and "warning:" not in check.stdout, check.stdout
    for kind in ALL_KINDS:
        assert f"sc_{kind}  (automodel-sc-{kind.replace('_', '-')} 0.1.0, entry point)" in check.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                            *[str(p / "tests") for p in packages]],
                           cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert f"{2 * len(ALL_KINDS) + 2} passed" in tests.stdout  # conformance + listing each, hook run, command


def test_one_package_can_hold_several_kinds(tmp_path):
    root = create("automodel-multi", ["loss", "logger,hook"], tmp_path)
    init = (root / "src" / "automodel_multi" / "__init__.py").read_text()
    assert 'register("multi", "automodel_multi.loss:MultiLoss"' in init
    assert 'register("multi", "automodel_multi.logger:MultiLogger"' in init and "def on_train_end(ctx, metrics)" in init
    assert 'multi = "automodel_multi"' in (root / "pyproject.toml").read_text()
    assert "import torch" not in init  # discovery stays light


@pytest.mark.parametrize("name, kinds, message", [
    ("2fast", ["loss"], "not a usable plugin name"),
    ("ok", ["los"], "unknown kind 'los'; did you mean 'loss'?"),
])
def test_bad_names_and_kinds_are_clear_errors(tmp_path, name, kinds, message):
    with pytest.raises(AutomodelError, match=message):
        create(name, kinds, tmp_path)
    proc = run_cli("new-plugin", name, *[a for k in kinds for a in ("--kind", k)], "--dir", tmp_path, check=False)
    assert proc.returncode == 2 and message.split(";")[0] in proc.stderr


def test_existing_directory_is_not_overwritten(tmp_path):
    create("dup", ["loss"], tmp_path)
    with pytest.raises(AutomodelError, match="already exists"):
        create("dup", ["loss"], tmp_path)
