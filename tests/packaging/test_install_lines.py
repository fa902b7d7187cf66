"""Every documented ``pip install`` line names real packages, extras and paths, and wherever the docs show
the package-index line they also show the checkout and the built-wheels line (tools/install_lines.py).
tools/check_wheels.py (CI) resolves the index and wheels lines against the wheels it builds."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import install_lines  # noqa: E402


def test_the_documented_install_lines_are_consistent() -> None:
    found = install_lines.problems()
    assert not found, "\n".join(found)


def test_the_readme_shows_the_three_ways_for_the_headline_packages() -> None:
    lines = [x for x in install_lines.all_lines() if x.file == ROOT / "README.md"]
    kinds = {x.kind: x for x in lines if install_lines.covered(x) == {"automodel-core", "automodel-fsdp2"}}
    assert set(kinds) == {"index", "checkout", "wheels"}, [x.where() for x in lines]
    assert kinds["wheels"].find_links == ["dist"]
    assert kinds["checkout"].editable == ["./automodel-core", "./automodel-plugins/automodel-fsdp2"]


def test_wrong_lines_are_reported(tmp_path: Path) -> None:
    (tmp_path / "automodel-core").mkdir()
    (tmp_path / "automodel-core" / "pyproject.toml").write_text(
        '[project]\nname = "automodel-core"\n[project.optional-dependencies]\nall = []\n')
    (tmp_path / "README.md").write_text(
        "```bash\n"
        "pip install automodel-core automodel-nope       # index\n"
        "pip install 'automodel-core[every]'\n"
        "pip install -e ./automodel-plugins/automodel-nope && automodel plugins\n"
        "pip install --find-links wheels automodel-core\n"
        "```\n")
    found = "\n".join(install_lines.problems(tmp_path))
    assert "automodel-nope is not a package of this repository" in found
    assert "automodel-core has no extra ['every'] (it has ['all'])" in found
    assert "-e ./automodel-plugins/automodel-nope: no package of this repository" in found
    assert "--find-links wheels: the wheels are built into dist/" in found
    assert "the block has no checkout line for automodel-core" in found
