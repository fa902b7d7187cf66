"""A third-party transform declares options of ``automodel export`` (``export_options`` on its factory) and
gets their values as ``ctx.export_options``; the core knows none of them by name (issue 22)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PLUGIN = '''
import json
from pathlib import Path

from automodel import hookimpl
from automodel.contracts import ExportOption


class Stamp:
    """Writes OUT/stamp.json with the export options it was given (instead of weights: this is a test)."""

    export_options = (
        ExportOption("note", type=str, help="a note written to OUT/stamp.json"),
        ExportOption("stamp", off="no-stamp", help="write OUT/stamp.json (default: yes)"),
        ExportOption("copies", type=int, help="how many copies the note asks for"),
    )

    def apply(self, model, ctx):
        return model

    def export(self, model, tokenizer, out_dir, ctx):
        if ctx.is_main and ctx.export_options.get("stamp", True):
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "stamp.json").write_text(json.dumps(ctx.export_options))


class Reserved:
    export_options = (ExportOption("plugin", help="clashes with automodel export --plugin"),)

    def apply(self, model, ctx):
        return model


class Merged:  # the same name as Stamp's switch, but a value: one option, one meaning
    export_options = (ExportOption("stamp", type=str, help="a stamp text"),)

    def apply(self, model, ctx):
        return model


@hookimpl
def register_model_transforms(register):
    register("stamp", Stamp)
    register("reserved", Reserved)
    register("stamp_text", Merged)
'''


def _cli(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """``automodel ARGS`` in this process (torch is imported once for all exports)."""
    from automodel.testing import invoke_cli

    return invoke_cli(args, cwd)


@pytest.fixture(scope="module")
def stamped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-step run (one process) whose transform declares export options; its checkpoint directory."""
    from automodel.testing import make_config, run_cli, tiny_model

    tmp = tmp_path_factory.mktemp("export_options")
    (tmp / "stamp_plugin.py").write_text(PLUGIN)
    cfg = make_config(tmp, tiny_model(tmp), plugins=["stamp_plugin"], transforms=[{"name": "stamp"}],
                      step_scheduler={"global_batch_size": 4, "local_batch_size": 4, "max_steps": 1},
                      checkpoint={"export_hf": True, "save_final": True})
    run_cli("run", cfg, cwd=tmp)
    return tmp


@pytest.fixture()
def plugin_importable(stamped_run: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(stamped_run))
    yield
    sys.modules.pop("stamp_plugin", None)


def test_declared_options_reach_the_transform(stamped_run: Path, plugin_importable) -> None:
    run = stamped_run / "run"
    assert json.loads((run / "hf" / "stamp.json").read_text()) == {}  # the run's own export: no options

    code, out, err = _cli(["export", str(run), "out", "--note", "hello", "--copies", "3", "--stamp"], stamped_run)
    assert code == 0, err
    assert json.loads((stamped_run / "out" / "stamp.json").read_text()) == {"note": "hello", "copies": 3, "stamp": True}
    code, _, err = _cli(["export", str(run / "checkpoints"), "off", "--no-stamp"], stamped_run)
    assert code == 0 and not (stamped_run / "off" / "stamp.json").exists(), err


def test_help_lists_the_runs_options_and_unknown_ones_are_refused(stamped_run: Path, plugin_importable) -> None:
    run = str(stamped_run / "run")
    code, out, _ = _cli(["export", run, "--help"], stamped_run)
    assert code == 0 and "--note TEXT" in out and "--stamp / --no-stamp" in out and "--copies INTEGER" in out, out
    assert "[transforms.0 (stamp)]" in " ".join(out.split()), out
    code, out, _ = _cli(["export", "--help"], stamped_run)  # no run: the core's options and where the others come from
    assert code == 0 and "--note" not in out and "automodel export CKPT --help" in " ".join(out.split()), out

    code, _, err = _cli(["export", run, "out2", "--merged"], stamped_run)
    assert code == 2 and "--merged is not an option of this run" in err, err
    assert "transforms: stamp" in err and "--stamp/--no-stamp" in err and not (stamped_run / "out2").exists(), err
    code, _, err = _cli(["export", run, "out2", "--copies", "many"], stamped_run)
    assert code == 2 and "'many' is not a valid integer" in err, err


def test_api_checks_values_and_declarations(stamped_run: Path, plugin_importable) -> None:
    from automodel.errors import AutomodelError, PluginError
    from automodel.export_options import export_options_of
    from automodel.model import export_checkpoint
    from automodel.plugins import load_plugins

    with pytest.raises(AutomodelError, match="--copies takes a int, got '3'"):
        export_checkpoint(stamped_run / "run", stamped_run / "api", options={"copies": "3"})
    with pytest.raises(AutomodelError, match="--merged is not an option of this run"):
        export_checkpoint(stamped_run / "run", stamped_run / "api", options={"merged": True})
    from automodel.registry import signature_problems

    plugins = load_plugins(["stamp_plugin"])
    # a bad declaration is the plugin's bug, reported as soon as the factory resolves (plugins --check, the kit, a run)
    with pytest.raises(PluginError, match=r"transform 'reserved': .*export option 'plugin': --plugin is automodel export's own flag"):
        export_options_of({"transforms": [{"name": "reserved"}]}, plugins)
    reserved = plugins.registry.get("model_transforms", "reserved").target
    assert any("--plugin is automodel export's own flag" in p for p in signature_problems("model_transforms", reserved)[0])
    with pytest.raises(PluginError, match=r"transforms.1 \(stamp_text\) declares the export option --stamp \(str\), which "
                                          r"transforms.0 \(stamp\) declares as --stamp/--no-stamp \(bool\)"):
        export_options_of({"transforms": [{"name": "stamp"}, {"name": "stamp_text"}]}, plugins)
    declared = export_options_of({"transforms": [{"name": "stamp"}, {"name": "stamp"}]}, plugins)
    assert declared["note"].owners == ["transforms.0 (stamp)", "transforms.1 (stamp)"]
