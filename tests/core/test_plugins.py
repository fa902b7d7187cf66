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


def write_plugin(directory, name, body):
    (directory / f"{name}.py").write_text("from automodel import hookimpl\n\n" + textwrap.dedent(body))


def test_misspelled_hook_is_reported_with_did_you_mean(tmp_path, monkeypatch):
    write_plugin(tmp_path, "typo_plugin", """
        @hookimpl
        def register_loss(register):
            pass
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_plugins(["typo_plugin"], entry_points=False)
    assert [i.name for i in loaded.failed] == ["typo_plugin"]
    with pytest.raises(PluginError, match=r"register_loss\(\) is not an automodel hook; did you mean 'register_losses'\?"):
        loaded.raise_on_failures()


def test_wrong_hook_argument_lists_the_valid_ones_and_debug_shows_the_plugin(tmp_path, tiny_model_dir):
    write_plugin(tmp_path, "badarg", """
        @hookimpl
        def register_losses(regster):
            pass
    """)
    cfg = make_config(tmp_path, tiny_model_dir)
    proc = run_cli("validate", cfg, "--plugin", "badarg", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("plugin 'badarg': hook register_losses(regster) takes no argument 'regster'; valid arguments: register"
            in proc.stderr)
    (tmp_path / "boom.py").write_text("def inner():\n    raise ValueError('boom in the plugin')\n\ninner()\n")
    proc = run_cli("--debug", "validate", cfg, "--plugin", "boom", cwd=tmp_path, check=False)
    assert proc.returncode == 2  # still a user error with --debug, now with the plugin's own traceback
    assert 'boom.py", line 2, in inner' in proc.stderr and "Error importing plugin 'boom'" in proc.stderr


def test_duplicate_in_one_plugin_and_clash_with_a_builtin(tmp_path, monkeypatch):
    write_plugin(tmp_path, "zoo", """
        @hookimpl
        def register_losses(register):
            register("x", "zoo:A")
            register("x", "zoo:B")
    """)
    write_plugin(tmp_path, "shadow", """
        @hookimpl
        def register_losses(register):
            register("masked_ce", "shadow:A")
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="plugin 'zoo' registers the loss 'x' twice"):
        load_plugins(["zoo"], entry_points=False)
    with pytest.raises(PluginError) as e:
        load_plugins(["shadow"], entry_points=False)
    assert "a name the builtins already use: rename the plugin's loss" in str(e.value) and "uninstall" not in str(e.value).lower()


def test_entry_point_to_a_missing_module_names_the_entry_point(tmp_path):
    site = tmp_path / "site"
    info = site / "ghost_pkg-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ghost-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[automodel]\nghost = ghost_pkg.plugin\n")
    proc = run_cli("plugins", "--check", env={"PYTHONPATH": str(site), "AUTOMODEL_LOAD_PLUGINS": "ghost"}, check=False)
    assert proc.returncode == 2
    assert ("entry point 'ghost = ghost_pkg.plugin' (ghost-pkg 1.0): module 'ghost_pkg.plugin' not found; "
            "reinstall ghost-pkg or uninstall it") in proc.stdout


def test_check_flags_signatures_that_do_not_fit_and_undecorated_hooks(tmp_path):
    write_plugin(tmp_path, "sloppy", """
        def register_losses(register):
            pass

        def on_step_ends(ctx, step):
            pass

        @hookimpl
        def register_loggers(register):
            register("nolog", "sloppy:Logger", description="a logger that forgot ctx")

        class Logger:
            def __init__(self, project: str = "demo", **options):
                pass

            def log(self, metrics, step):
                pass
    """)
    proc = run_cli("plugins", "--check", "--plugin", "sloppy", cwd=tmp_path, env={"AUTOMODEL_LOAD_PLUGINS": ""}, check=False)
    assert proc.returncode == 2
    out = proc.stdout
    assert "nolog  a logger that forgot ctx" in out  # description shown
    assert "the core calls it as factory(ctx, **cfg); 'project' (a config key with a default) would receive ctx" in out
    assert "a logger must have close" in out
    assert "register_losses() looks like a hook but has no @hookimpl" in out
    assert "on_step_ends() has no @hookimpl and is not a hook name: did you mean @automodel.hookimpl def on_step_end" in out
    assert "warning: sloppy: logger 'nolog'" in out and "takes **options" in out
    # and a run stops at validation with the same reason, not after the model is loaded
    cfg = make_config(tmp_path, None, loggers=[{"name": "nolog"}])
    proc = run_cli("validate", cfg, "--plugin", "sloppy", cwd=tmp_path, env={"AUTOMODEL_LOAD_PLUGINS": ""}, check=False)
    assert proc.returncode == 2 and "'project' (a config key with a default) would receive ctx" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_trace_prints_hook_calls(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, step_scheduler={"global_batch_size": 4, "local_batch_size": 4, "max_steps": 1})
    proc = run_cli("run", cfg, cwd=tmp_path, env={"AUTOMODEL_TRACE_PLUGINS": "1", "AUTOMODEL_LOAD_PLUGINS": ""})
    assert "[automodel trace] register_losses(register) -> ['builtin']" in proc.stderr
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
