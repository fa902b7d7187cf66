"""The CLI: bad input gives one screen, the key path and exit 2 (no traceback); --help stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from automodel import __version__
from automodel.testing import make_config, run_cli


def write(path, cfg):
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) < 25
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_help_imports_no_torch():
    code = "import sys; from automodel.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('TORCH' if 'torch' in sys.modules else 'NO TORCH')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage: automodel" in out and out.strip().endswith("NO TORCH")


def test_version():
    assert run_cli("--version").stdout.strip() == f"automodel, version {__version__}"


@pytest.mark.parametrize(
    "edit, needles",
    [
        (lambda c: c.update(step_schedular=c.pop("step_scheduler")), ["step_schedular: unknown section", "did you mean 'step_scheduler'?"]),
        (lambda c: c["loss"].update(name="triton_ce"), ["unknown loss 'triton_ce'", "pip install automodel-triton-ce"]),
        (lambda c: c["optimizer"].update(lr="fast"), ["optimizer.lr: expected float, got str 'fast'"]),
        (lambda c: c["dataset"].update(path="missing.jsonl"), ["dataset.path: data file not found: missing.jsonl"]),
        (lambda c: c["dataset"].pop("path"), ["dataset.path: missing required argument"]),
        (lambda c: c["optimizer"].update(betas2=0.9), ["optimizer.betas2: unknown key", "did you mean 'betas'?"]),
        (lambda c: c.update(clip_grad_norm=-1.0), ["clip_grad_norm: must be > 0 or null"]),
        (lambda c: c["optimizer"].update(lr=-1e-3), ["optimizer.lr: must be > 0"]),
        (lambda c: c["model"].update(dtype="float16"), ["model.dtype: float16 weights overflow", "use bfloat16"]),
    ],
    ids=["section-typo", "unknown-component", "wrong-type", "missing-file", "missing-arg", "key-typo", "negative-clip",
         "negative-lr", "float16"],
)
def test_bad_configs_fail_cleanly_before_training(tmp_path, tiny_model_dir, edit, needles):
    path = make_config(tmp_path, tiny_model_dir, loss={"name": "masked_ce"})
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    write(path, cfg)
    for command in ("validate", "run"):  # only the builtins: triton_ce must be "not installed" here
        proc = run_cli(command, path, cwd=tmp_path, check=False, env={"AUTOMODEL_LOAD_PLUGINS": ""})
        assert_clean_error(proc, str(path), *needles)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_debug_shows_the_traceback(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir, seed="x")
    proc = run_cli("--debug", "validate", path, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_validate_accepts_a_good_config_and_overrides(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir)
    proc = run_cli("validate", path, "optimizer.lr=3e-4", "--print")
    assert "OK (model=hf" in proc.stderr and "lr: 0.0003" in proc.stdout
    resolved = tmp_path / "resolved.yaml"  # stdout is the resolved config alone: it validates again
    resolved.write_text(proc.stdout)
    assert "OK (model=hf" in run_cli("validate", resolved).stdout


def test_plugin_that_fails_to_import_is_reported(tmp_path, tiny_model_dir):
    (tmp_path / "broken_plugin.py").write_text("import no_such_dependency_xyz\n")
    path = make_config(tmp_path, tiny_model_dir, plugins=["broken_plugin"])
    proc = run_cli("run", path, cwd=tmp_path, check=False)
    assert_clean_error(proc, "Error importing plugin 'broken_plugin'", "ModuleNotFoundError", "no_such_dependency_xyz")
    listing = json.loads(run_cli("plugins", "--json", "--plugin", "broken_plugin", cwd=tmp_path).stdout)
    broken = [p for p in listing if p["name"] == "broken_plugin"][0]
    assert "no_such_dependency_xyz" in broken["error"]


def test_plugins_table_and_json():
    table = run_cli("plugins", env={"AUTOMODEL_LOAD_PLUGINS": ""}).stdout
    assert "builtin" in table and "losses: masked_ce" in table
    data = json.loads(run_cli("plugins", "--json", env={"AUTOMODEL_LOAD_PLUGINS": ""}).stdout)
    assert [p["name"] for p in data] == ["builtin"]
    assert data[0]["registers"]["parallelizers"] == ["ddp"]
    assert data[0]["descriptions"]["losses"]["masked_ce"] == "cross-entropy over label tokens"
    assert "losses: masked_ce  cross-entropy over label tokens" in table
    check = run_cli("plugins", "--check", env={"AUTOMODEL_LOAD_PLUGINS": ""})
    assert "all plugins OK" in check.stdout


def test_a_failing_worker_under_torchrun_gives_its_exit_code_and_one_line(tmp_path, tiny_model_dir):
    (tmp_path / "fail_at_step_2.py").write_text(
        "from automodel import hookimpl\n\n"
        "@hookimpl\n"
        "def on_step_end(ctx, step):\n"
        "    if step == 2 and ctx.rank == 1:\n"
        "        raise SystemExit(3)\n"
    )
    path = make_config(tmp_path, tiny_model_dir, launcher={"name": "local", "nproc_per_node": 2},
                       step_scheduler={"global_batch_size": 4, "local_batch_size": 2, "max_steps": 4})
    out = run_cli("run", path, "--plugin", "fail_at_step_2", cwd=tmp_path, check=False)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "torchrun: worker rank 1 exited with code 3" in out.stderr, out.stderr
    assert "ChildFailedError" not in out.stderr  # torchrun's 30-line report is replaced by that line


def test_truncation_that_leaves_no_labels_stops_before_training(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir)
    proc = run_cli("run", path, "dataset.max_length=3", cwd=tmp_path, check=False)
    assert_clean_error(proc, "keep no response token after truncation to max_length=3", "raise dataset.max_length")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_divergence_stops_the_run_with_a_clear_error(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir, step_scheduler={"global_batch_size": 8, "local_batch_size": 8, "max_steps": 20,
                                                                 "log_every_steps": 1})
    proc = run_cli("run", path, "optimizer.lr=1e30", "clip_grad_norm=null", cwd=tmp_path, check=False)
    assert_clean_error(proc, "training diverged: the loss or grad norm was first non-finite at step", "lower optimizer.lr")
    assert not (tmp_path / "run" / "hf").exists()  # no export of broken weights


def test_misspelled_model_config_key_is_an_error_not_a_default(tmp_path):
    from automodel.testing import char_tokenizer

    char_tokenizer().save_pretrained(tmp_path / "tok")
    model = {"name": "hf", "tokenizer": str(tmp_path / "tok"),
             "config": {"model_type": "llama", "vocab_size": 48, "hidden_size": 32, "num_hidden_layerz": 1}}
    path = make_config(tmp_path, None, model=model)
    proc = run_cli("run", path, cwd=tmp_path, check=False)
    assert_clean_error(proc, "LlamaConfig has no num_hidden_layerz (did you mean 'num_hidden_layers'?)")
    model["config"]["model_type"] = "lama"
    proc = run_cli("run", make_config(tmp_path, None, model=model), cwd=tmp_path, check=False)
    assert_clean_error(proc, "unknown model type 'lama'; did you mean 'llama'?")


def test_malformed_data_file_is_a_clean_error(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir)
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "reverse ab", "answer": "ba"}\n{"question": oops\n')
    proc = run_cli("run", path, f"dataset.path={data}", cwd=tmp_path, check=False)
    assert_clean_error(proc, f"dataset.path: line 2 of {data.name} is not valid JSON")  # before the model is built
