"""One version for every package (VERSION, tools/versions.py); see docs/packaging.md."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("versions", ROOT / "tools" / "versions.py")
versions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(versions)


def test_every_package_agrees_with_VERSION() -> None:
    proc = subprocess.run([sys.executable, ROOT / "tools" / "versions.py"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    names = {versions.project_table(p)["name"] for p in versions.package_dirs()}
    assert {"automodel-core", "automodel-fsdp2", "automodel-tp", "automodel-lora", "automodel-triton-ce",
            "automodel-slurm"} <= names
    import automodel

    assert automodel.__version__ == versions.read_version()


def test_all_extra_lists_every_first_party_plugin() -> None:
    extra = versions.project_table(ROOT / "automodel-core")["optional-dependencies"]["all"]
    names = [re.match(r"[a-z0-9-]+", r).group(0) for r in extra]
    packages = [versions.project_table(d)["name"] for d in versions.package_dirs(ROOT)[1:]]  # every automodel-plugins/*
    assert len(names) == len(set(names)) and set(names) == set(packages)
    assert {"automodel-fsdp2", "automodel-tp", "automodel-lora", "automodel-triton-ce", "automodel-slurm", "automodel-fp8",
            "automodel-wandb"} <= set(names)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the repository's VERSION, pyproject.toml files and package __init__.py files."""
    shutil.copy(ROOT / "VERSION", tmp_path / "VERSION")
    for pkg in versions.package_dirs(ROOT):
        rel = pkg.relative_to(ROOT)
        (tmp_path / rel).mkdir(parents=True)
        shutil.copy(pkg / "pyproject.toml", tmp_path / rel / "pyproject.toml")
        for init in pkg.glob("src/*/__init__.py"):
            (tmp_path / init.relative_to(ROOT)).parent.mkdir(parents=True)
            shutil.copy(init, tmp_path / init.relative_to(ROOT))
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_check_finds_each_kind_of_disagreement(repo: Path) -> None:
    assert versions.check(repo) == []
    v = versions.read_version(repo)
    tp = repo / "automodel-plugins" / "automodel-tp"
    edit(tp / "pyproject.toml", f'version = "{v}"', 'version = "9.9.9"')
    edit(repo / "automodel-plugins/automodel-lora/src/automodel_lora/__init__.py", f'"{v}"', '"0.0.1"')
    edit(repo / "automodel-plugins/automodel-slurm/pyproject.toml", '"automodel-core>=0.1,<0.2"', '"automodel-core<0.1"')
    edit(repo / "automodel-core/pyproject.toml", '    "automodel-fsdp2>=0.1,<0.2",\n', "")
    problems = versions.check(repo)
    assert problems == [
        f"automodel-plugins/automodel-lora/src/automodel_lora/__init__.py: __version__ '0.0.1', VERSION says '{v}'",
        "automodel-plugins/automodel-slurm/pyproject.toml: requires automodel-core<0.1, which excludes "
        f"{v}; use automodel-core>=0.1,<0.2",
        f"automodel-plugins/automodel-tp/pyproject.toml: version '9.9.9', VERSION says '{v}'",
        "automodel-core/pyproject.toml: the [all] extra lacks automodel-fsdp2>=0.1,<0.2",
    ]
    proc = subprocess.run([sys.executable, ROOT / "tools" / "versions.py", "--root", repo], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("version mismatch: ") == 4


def test_set_rewrites_versions_and_ranges(repo: Path) -> None:
    versions.set_version("0.2.0", repo)
    assert versions.check(repo) == []
    assert (repo / "VERSION").read_text() == "0.2.0\n"
    fsdp2 = versions.project_table(repo / "automodel-plugins" / "automodel-fsdp2")
    assert fsdp2["version"] == "0.2.0" and "automodel-core>=0.2,<0.3" in fsdp2["dependencies"]
    core = versions.project_table(repo / "automodel-core")
    assert core["version"] == "0.2.0" and "automodel-lora>=0.2,<0.3" in core["optional-dependencies"]["all"]
    assert "torch>=2.6" in core["dependencies"]  # third-party requirements untouched
    assert '__version__ = "0.2.0"' in (repo / "automodel-core/src/automodel/__init__.py").read_text()
