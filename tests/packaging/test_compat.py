"""A plugin that declares an automodel-core range this core is not in: one clear warning on stderr.

The plugins are real installed-distribution metadata (``<name>-<version>.dist-info`` with METADATA and
entry_points.txt) on a temporary PYTHONPATH entry, read by the real importlib.metadata in a subprocess.
"""

from __future__ import annotations

from pathlib import Path

import automodel
import pytest
from automodel.compat import core_version_problems, incompatible_plugins
from automodel.plugins import PluginInfo
from automodel.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart" / "config.yaml"


def fake_plugin(site: Path, dist: str, version: str, requires: list[str]) -> None:
    """Install (as pip would lay it out) a plugin distribution ``dist`` with entry point ``dist`` -> module ``<dist>_mod``."""
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {dist}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (info / "entry_points.txt").write_text(f"[automodel]\n{dist} = {dist}_mod\n")
    (site / f"{dist}_mod.py").write_text(
        "from automodel import hookimpl\n\n@hookimpl\ndef register_losses(register):\n"
        f"    register('{dist}_loss', 'torch.nn:CrossEntropyLoss')\n"
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    fake_plugin(site, "oldplug", "0.0.3", ["automodel-core<0.1,>=0.0.1", "torch>=2.6"])
    fake_plugin(site, "goodplug", "0.1.0", ["automodel-core>=0.1,<0.2", 'automodel-core<0.0.1; extra == "legacy"'])
    return site


def env_for(site: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(site), "AUTOMODEL_LOAD_PLUGINS": "oldplug,goodplug", **extra}


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: plugin ")]


def test_plugins_warns_once_naming_plugin_range_core_and_fix(site: Path) -> None:
    proc = run_cli("plugins", cwd=site.parent, env=env_for(site))
    assert "oldplug  (oldplug 0.0.3, entry point)" in proc.stdout and "goodplug" in proc.stdout
    assert warnings_in(proc.stderr) == [
        f"warning: plugin 'oldplug' (oldplug 0.0.3) supports automodel-core<0.1,>=0.0.1, but automodel-core "
        f"{automodel.__version__} is installed; it may fail. Fix: pip install -U oldplug (a release for this core), "
        "or pip install 'automodel-core<0.1,>=0.0.1'"
    ]


def test_check_reports_it_as_a_problem(site: Path) -> None:
    proc = run_cli("plugins", "--check", cwd=site.parent, env=env_for(site), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and problems[0].startswith(
        f"problem: oldplug: oldplug 0.0.3 requires automodel-core<0.1,>=0.0.1, this is {automodel.__version__}; pip install -U oldplug")


def test_validate_warns_at_start_up_and_still_validates(site: Path) -> None:
    proc = run_cli("validate", QUICKSTART, cwd=site.parent, env=env_for(site))
    assert len(warnings_in(proc.stderr)) == 1 and "'oldplug'" in proc.stderr
    assert ": OK (" in proc.stdout + proc.stderr


def test_no_warning_in_launched_workers_or_for_compatible_plugins(site: Path) -> None:
    worker = run_cli("plugins", cwd=site.parent, env=env_for(site, TORCHELASTIC_RUN_ID="test"))
    assert warnings_in(worker.stderr) == [] and "oldplug" in worker.stdout
    good_only = run_cli("plugins", cwd=site.parent, env=env_for(site, AUTOMODEL_LOAD_PLUGINS="goodplug"))
    assert warnings_in(good_only.stderr) == [] and "goodplug" in good_only.stdout


def test_ranges_prereleases_and_extras(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(site))
    infos = [PluginInfo("oldplug", "oldplug_mod", "entry point", "oldplug", "0.0.3"),
             PluginInfo("goodplug", "goodplug_mod", "entry point", "goodplug", "0.1.0"),
             PluginInfo("builtin", "automodel.builtin", "builtin"),
             PluginInfo("mine", "mine", "local")]
    assert [(i.name, spec) for i, spec in incompatible_plugins(infos, "0.1.0")] == [("oldplug", "<0.1,>=0.0.1")]
    # a pre-release of the series a plugin supports is supported (packaging excludes it by default)
    assert [i.name for i, _ in incompatible_plugins(infos, "0.1.1rc1")] == ["oldplug"]
    assert [i.name for i, _ in incompatible_plugins(infos, "0.0.5")] == ["goodplug"]
    assert [i.name for i, _ in incompatible_plugins(infos, "0.2.0")] == ["oldplug", "goodplug"]
    assert core_version_problems(infos, "0.2.0")[1].startswith("goodplug: goodplug 0.1.0 requires automodel-core<0.2,>=0.1, this is 0.2.0")
