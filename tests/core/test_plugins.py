"""Plugin discovery: entry points of installed distributions, local modules, env controls, hook docs."""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from pathlib import Path

import pytest
from automodel import hookspecs
from automodel.errors import PluginError
from automodel.plugins import load_plugins
from automodel.testing import make_config, read_metrics, run_cli

ROOT = Path(__file__).resolve().parents[2]

THIRD_PARTY = '''
from automodel import hookimpl

@hookimpl
def register_losses(register):
    register("shouty_ce", "acme_automodel.loss:ShoutyCE", description="masked CE, loudly")

@hookimpl
def on_train_end(ctx, metrics):
    if ctx.is_main:
        (ctx.output_dir / "acme_was_here").write_text(str(metrics["loss"]))
'''

LOSS = '''
from automodel.builtin.losses import MaskedCrossEntropy

class ShoutyCE(MaskedCrossEntropy):
    def __init__(self, volume: int = 1):
        super().__init__()
        self.volume = volume
'''


@pytest.fixture
def third_party(tmp_path):
    """A real distribution ('acme-automodel' 1.2.3) with an `automodel` entry point, on PYTHONPATH."""
    site = tmp_path / "site"
    pkg = site / "acme_automodel"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(THIRD_PARTY)
    (pkg / "loss.py").write_text(LOSS)
    info = site / "acme_automodel-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-automodel\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[automodel]\nacme = acme_automodel\n")
    return {"PYTHONPATH": str(site)}


def test_third_party_plugin_is_discovered_listed_and_used(tmp_path, tiny_model_dir, third_party):
    listing = json.loads(run_cli("plugins", "--json", env=third_party).stdout)
    acme = [p for p in listing if p["name"] == "acme"][0]
    assert acme["distribution"] == "acme-automodel" and acme["version"] == "1.2.3"
    assert acme["registers"] == {"losses": ["shouty_ce"]} and "on_train_end" in acme["hooks"]

    cfg = make_config(tmp_path, tiny_model_dir, loss={"name": "shouty_ce", "volume": 11}, step_scheduler={
        "global_batch_size": 4, "local_batch_size": 4, "max_steps": 2})
    out = run_cli("run", cfg, cwd=tmp_path, env=third_party).stdout
    assert "loss=shouty_ce (acme-automodel 1.2.3)" in out
    assert (tmp_path / "run" / "acme_was_here").read_text() == str(read_metrics(tmp_path / "run")[-1]["loss"])

    bad = run_cli("validate", cfg, "loss.volum=3", env=third_party, check=False)
    assert bad.returncode == 2 and "loss.volum: unknown key" in bad.stderr and "did you mean 'volume'?" in bad.stderr


def test_load_plugins_env_limits_installed_plugins(third_party):
    names = [p["name"] for p in json.loads(run_cli("plugins", "--json", env={**third_party, "AUTOMODEL_LOAD_PLUGINS": ""}).stdout)]
    assert names == ["builtin"]
    names = [p["name"] for p in json.loads(run_cli("plugins", "--json", env={**third_party, "AUTOMODEL_LOAD_PLUGINS": "acme"}).stdout)]
    assert names == ["builtin", "acme"]


def test_duplicate_registration_names_both_plugins(tmp_path, third_party):
    (tmp_path / "rival.py").write_text(
        "from automodel import hookimpl\n@hookimpl\ndef register_losses(register):\n    register('shouty_ce', 'x:y')\n")
    proc = run_cli("plugins", "--plugin", "rival", cwd=tmp_path, env={**third_party, "AUTOMODEL_LOAD_PLUGINS": "acme"}, check=False)
    assert proc.returncode == 2
    assert "two plugins register the loss 'shouty_ce'" in proc.stderr and "acme-automodel 1.2.3" in proc.stderr and "rival" in proc.stderr


def test_misspelled_hookimpl_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "typo_plugin.py").write_text(
        "from automodel import hookimpl\n@hookimpl\ndef register_loss(register):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="register_loss"):
        load_plugins(["typo_plugin"], entry_points=False)


def test_trace_prints_hook_calls(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, step_scheduler={"global_batch_size": 4, "local_batch_size": 4, "max_steps": 1})
    proc = run_cli("run", cfg, cwd=tmp_path, env={"AUTOMODEL_TRACE_PLUGINS": "1", "AUTOMODEL_LOAD_PLUGINS": ""})
    assert "[automodel trace] on_train_start(ctx, model)" in proc.stderr
    assert "[automodel trace] on_step_end(ctx, step, metrics)" in proc.stderr


def test_every_hook_is_documented_with_its_arguments():
    docs = (ROOT / "docs" / "hooks.md").read_text()
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if not getattr(fn, "automodel_spec", None):
            continue
        assert fn.__doc__, f"hook {name} has no docstring"
        signature = f"{name}({', '.join(inspect.signature(fn).parameters)})"
        assert signature in docs, f"docs/hooks.md does not document {signature}"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    block = re.search(r"```bash\n# tests\n(.*?)```", readme, re.S)
    assert block, "README.md has a ```bash block starting with '# tests'"
    command = textwrap.dedent(block.group(1)).strip()
    assert command in ci, f"{command!r} not in .ci/run"
