"""Plugins at run time: a fault in plugin code is named on one screen (plugin, kind, name, config key,
step), exit 2, traceback with --debug; a failing logger is disabled with a warning; a hook failing after
the work is saved says so; float token ids are refused at the collator; metrics.jsonl has one record
per step after a resume; a broken plugin the config does not use warns; `automodel --help` imports no
plugin, however slow; the core-version check needs no `packaging` for the usual ranges."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from automodel import config
from automodel.builtin.loggers import JsonlLogger
from automodel.compat import _simple_contains
from automodel.faults import ComponentFault
from automodel.plugins import load_plugins
from automodel.testing import make_config, read_metrics, run_cli
from automodel.train import Trainer

FAULTS = '''
import os
import torch.nn.functional as F
from automodel import hookimpl


class Loss:
    def __init__(self, mode: str = "ok"):
        self.mode = mode

    def __call__(self, *, logits, labels, num_label_tokens):
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
        loss = loss / num_label_tokens
        if self.mode == "float":
            return float(loss)
        if self.mode == "vector":
            return loss.repeat(3)
        if self.mode == "raise":
            raise ValueError("teacher vocabulary mismatch")
        return loss


class Logger:
    def __init__(self, ctx, fail_at: int = 3):
        self.fail_at, self.steps = fail_at, []

    def log(self, metrics, step):
        if step == self.fail_at:
            raise RuntimeError("database is locked")
        self.steps.append(step)

    def close(self):
        pass


class FloatData:
    def __init__(self, ctx, tokenizer):
        pass

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"input_ids": [1, 2, 3.5, 4] if i == 5 else [1, 2, 3, 4], "labels": [1, 2, 3, 4]}


@hookimpl
def register_losses(register):
    register("bad_loss", Loss)


@hookimpl
def register_loggers(register):
    register("bad_logger", Logger)


@hookimpl
def register_datasets(register):
    register("float_data", FloatData)


@hookimpl
def on_checkpoint_saved(ctx, step, path):
    if os.environ.get("FAULT") == "ckpt_hook":
        raise OSError("upload failed: bucket not found")


@hookimpl
def on_train_end(ctx, metrics):
    if os.environ.get("FAULT") == "end_hook":
        raise KeyError("summary")
'''

SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 4, "log_every_steps": 1}


@pytest.fixture
def faults(tmp_path: Path, monkeypatch):
    (tmp_path / "faultplug.py").write_text(FAULTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("faultplug", None)
    yield "faultplug"
    sys.modules.pop("faultplug", None)


def _run(tmp_path: Path, model_dir: Path, **sections) -> Trainer:
    sections.setdefault("step_scheduler", SCHED)
    plugins = load_plugins(["faultplug"])
    validated = config.validate(config.load(make_config(tmp_path, model_dir, plugins=["faultplug"], **sections)), plugins)
    trainer = Trainer(validated)
    trainer.run()
    return trainer


@pytest.mark.parametrize("mode, first_line, detail", [
    ("float", "loss 'bad_loss' (loss, plugin faultplug) failed at step 1 (computing the loss): returned float",
     "return a 0-d tensor"),
    ("vector", "loss 'bad_loss' (loss, plugin faultplug) failed at step 1 (computing the loss): returned a tensor of shape (3,)",
     "no per-token vector"),
    ("raise", "loss 'bad_loss' (loss, plugin faultplug) failed at step 1 (computing the loss): ValueError: teacher vocabulary mismatch",
     "faultplug.py:"),
])
def test_a_failing_loss_is_named_with_its_step(tmp_path, tiny_model_dir, faults, mode, first_line, detail) -> None:
    with pytest.raises(ComponentFault) as e:
        _run(tmp_path, tiny_model_dir, loss={"name": "bad_loss", "mode": mode})
    lines = str(e.value).splitlines()
    assert lines[0].startswith(first_line), lines[0]
    assert detail in str(e.value) and len(lines) <= 3


def test_a_failing_logger_is_disabled_with_a_warning_and_the_run_finishes(tmp_path, tiny_model_dir, faults, capsys) -> None:
    trainer = _run(tmp_path, tiny_model_dir, loggers=[{"name": "jsonl"}, {"name": "bad_logger", "fail_at": 3}])
    err = capsys.readouterr().err
    assert ("warning: logger 'bad_logger' (loggers.1, plugin faultplug) failed at step 3 (logging): "
            "RuntimeError: database is locked") in err
    assert "disabled for the rest of the run" in err and "1 logger(s) failed during the run" in err
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]  # the other logger went on
    assert trainer.failed_loggers and trainer.train_state.step == 4


def test_a_hook_failing_after_a_checkpoint_says_the_checkpoint_is_complete(tmp_path, tiny_model_dir, faults, monkeypatch) -> None:
    monkeypatch.setenv("FAULT", "ckpt_hook")
    with pytest.raises(ComponentFault) as e:
        _run(tmp_path, tiny_model_dir, step_scheduler={**SCHED, "ckpt_every_steps": 2})
    text = str(e.value)
    assert text.startswith("hook on_checkpoint_saved() of plugin faultplug failed at step 2 (in the hook): OSError: upload failed")
    assert "The checkpoint of step 2" in text and "is complete" in text
    assert (tmp_path / "run" / "checkpoints" / "step_2").is_dir()


def test_a_failing_on_train_end_says_training_finished(tmp_path, tiny_model_dir, faults, monkeypatch) -> None:
    monkeypatch.setenv("FAULT", "end_hook")
    with pytest.raises(ComponentFault) as e:
        _run(tmp_path, tiny_model_dir, checkpoint={"export_hf": False, "save_final": True})
    text = str(e.value)
    assert text.startswith("hook on_train_end() of plugin faultplug failed at step 4 (in the hook): KeyError")
    assert "Training itself finished: 4 steps, the last checkpoint is" in text


def test_float_token_ids_are_refused_naming_the_dataset_and_the_record(tmp_path, tiny_model_dir, faults) -> None:
    with pytest.raises(ComponentFault) as e:
        _run(tmp_path, tiny_model_dir, dataset={"name": "float_data"})
    first = str(e.value).splitlines()[0]
    assert first.startswith("dataset 'float_data' (dataset, plugin faultplug) failed at step ")
    assert "record 5 (example " in first and "input_ids[2] is float 3.5: token ids must be int" in first


def test_cli_exit_code_one_screen_and_debug_traceback(tmp_path, tiny_model_dir, faults) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, plugins=["faultplug"], loss={"name": "bad_loss", "mode": "raise"},
                      step_scheduler={**SCHED, "max_steps": 1})
    proc = run_cli("run", cfg, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "    ", "(run with"))]
    assert err[0].startswith("error: loss 'bad_loss' (loss, plugin faultplug) failed at step 1 (computing the loss): "
                             "ValueError: teacher vocabulary mismatch")
    assert "Traceback" not in proc.stderr and len(err) <= 4 and err[-1] == "(run with --debug for the full traceback)"
    proc = run_cli("run", cfg, "--debug", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    tb = proc.stderr[proc.stderr.index("Traceback"):]
    # the plugin's own frames come first (the cause), the named fault after
    assert tb.index("faultplug.py") < tb.index("The above exception was the direct cause") < tb.index("ComponentFault")


def test_jsonl_keeps_one_record_per_step_after_a_resume(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    # a killed run: checkpoint at 5, records up to 8, the last line cut short by the kill
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 9))
                    + json.dumps({"step": 5, "val_loss": 1.0}) + "\n" + '{"step": 9, "lo')
    ctx = SimpleNamespace(output_dir=tmp_path, train_state=SimpleNamespace(step=5), is_main=True)
    logger = JsonlLogger(ctx)
    for s in range(6, 11):
        logger.log({"loss": 0.5}, s)
    logger.close()
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if "loss" in json.loads(line)
             and "val_loss" not in json.loads(line)]
    assert steps == list(range(1, 11))
    assert sum(1 for line in path.read_text().splitlines() if "val_loss" in line) == 1


def _site_plugin(tmp_path: Path, dist: str, module: str, code: str, entry_points: str, files: dict[str, str] | None = None) -> Path:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(code)
    for name, text in (files or {}).items():
        (site / name).write_text(text)
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\nRequires-Dist: automodel-core>=0.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    return site


def test_a_broken_plugin_the_config_does_not_use_warns_one_it_needs_blocks(tmp_path, tiny_model_dir) -> None:
    site = _site_plugin(tmp_path, "broken-plug", "brokenplug", "raise ImportError('libfoo.so: cannot open shared object')\n",
                        "[automodel]\nbroken = brokenplug\n")
    env = {"PYTHONPATH": str(site)}
    cfg = make_config(tmp_path, tiny_model_dir)
    proc = run_cli("validate", cfg, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert ("warning: entry point 'broken = brokenplug' (broken-plug 1.0): failed to import: ImportError: libfoo.so"
            in proc.stderr)
    assert "this config does not use it" in proc.stderr
    cfg = make_config(tmp_path, tiny_model_dir, name="needs.yaml", loss={"name": "broken_loss"})
    proc = run_cli("validate", cfg, env=env, check=False)
    assert proc.returncode == 2
    assert "error: entry point 'broken = brokenplug'" in proc.stderr and "unknown loss 'broken_loss'" in proc.stderr


SLOW = '''
import time
from pathlib import Path
Path(__file__).with_name("slow_imported").write_text("yes")
time.sleep(3)
'''


def test_help_imports_no_plugin_however_slow(tmp_path) -> None:
    site = _site_plugin(tmp_path, "slow-plug", "slowplug", SLOW,
                        "[automodel]\nslow = slowplug\n\n[automodel.commands]\nslow-hello = slowcmd:command\n",
                        {"slowcmd.py": "import click\n\n@click.command()\ndef command():\n    click.echo('hello from slow')\n"})
    env = {"PYTHONPATH": str(site)}
    start = time.perf_counter()
    proc = run_cli("--help", env=env)
    elapsed = time.perf_counter() - start
    assert "slow-hello  [slow-plug] see: automodel slow-hello --help" in proc.stdout
    assert not (site / "slow_imported").exists() and elapsed < 3, elapsed  # the plugin module was never imported
    assert run_cli("slow-hello", env=env).stdout.strip() == "hello from slow"
    assert not (site / "slow_imported").exists()  # the command's module alone


def test_core_version_check_reads_usual_ranges_without_packaging() -> None:
    from packaging.requirements import Requirement

    for line in ("automodel-core>=0.1,<0.2", "automodel_core==0.1.0", "automodel-core~=0.1.2", "automodel-core (>=0.2)"):
        for version in ("0.0.9", "0.1.0", "0.1.5", "0.2.0"):
            ok, spec = _simple_contains(line, version)
            assert ok == Requirement(line).specifier.contains(version), (line, version)
            assert spec == str(Requirement(line).specifier)
    assert _simple_contains("automodel-core>=0.1; extra == 'x'", "0.1.0") is None  # markers: packaging reads them
