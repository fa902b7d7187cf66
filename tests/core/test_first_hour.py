"""What a newcomer meets in the first hour (issue 31), through the real CLI:

* Ctrl-C: the first SIGINT checkpoints at the step boundary and exits 75 (like SIGTERM), a second one
  aborts at once (130, no stop checkpoint); under torchrun the launcher forwards it to the workers;
* ``automodel run --dry-run`` writes nothing (an existing run's config.yaml stays as it was);
* exported ``*.safetensors`` (and every other file of a run) get the umask's mode, not 0600;
* a packed run counts "packed rows", not examples;
* ``parallel.0.size=4`` on a config without ``parallel:`` says what to write instead;
* ``automodel new-plugin``'s "next:" line installs pytest (the ``[test]`` extra).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from automodel.config import ConfigError, apply_overrides
from automodel.launch import REQUEUE_EXIT_CODE
from automodel.testing import make_config, run_cli

# a local plugin: every step lasts SLOW_STEP_S seconds (sleep: no CPU), so a signal lands mid-run
SLOW = '''
import os, time
from automodel import hookimpl

@hookimpl
def on_step_end(ctx, step, metrics):
    time.sleep(float(os.environ.get("SLOW_STEP_S", "0")))
'''
SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 40, "log_every_steps": 1}


def slow_config(tmp_path: Path, model_dir: Path) -> Path:
    (tmp_path / "slow_steps.py").write_text(SLOW)
    return make_config(tmp_path, model_dir, step_scheduler=SCHED)


def start(cfg: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "SLOW_STEP_S": "0.4"}
    env.pop("AUTOMODEL_LAUNCHED", None)
    cmd = [sys.executable, "-m", "automodel", "run", str(cfg), "--plugin", "slow_steps", *args]
    return subprocess.Popen(cmd, cwd=cfg.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc: subprocess.Popen[str], run: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and sum('"loss"' in line for line in metrics.read_text().splitlines()) >= step):
        assert proc.poll() is None, f"the run ended before step {step}:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"step {step} never logged"
        time.sleep(0.1)


def checkpoints(run: Path) -> list[str]:
    d = run / "checkpoints"
    return sorted(p.name for p in d.glob("step_*")) if d.exists() else []


def test_first_ctrl_c_checkpoints_and_exits_75_second_aborts_at_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = slow_config(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    # one Ctrl-C: finish the step, checkpoint it, exit 75 with the marker, like SIGTERM
    proc = start(cfg)
    wait_for_step(proc, run, 2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == REQUEUE_EXIT_CODE, out
    assert "Ctrl-C: stopping after this step with a checkpoint" in out and "press Ctrl-C again to abort now" in out
    marker = json.loads((run / "preempted.json").read_text())
    assert marker["signal"] == "SIGINT" and marker["exit_code"] == REQUEUE_EXIT_CODE
    stopped = marker["step"]
    assert 2 <= stopped < SCHED["max_steps"] and checkpoints(run) == [f"step_{stopped}"], (checkpoints(run), out)
    assert f"received SIGINT: stopped after step {stopped}" in out

    # resume, then Ctrl-C twice: aborted at once (130), no new checkpoint, no marker
    proc = start(cfg)
    wait_for_step(proc, run, stopped + 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert f"loaded step {stopped}" in out and "Ctrl-C again: aborting now, without a checkpoint" in out
    assert checkpoints(run) == [f"step_{stopped}"] and not (run / "preempted.json").exists(), out


def test_ctrl_c_under_torchrun_reaches_the_workers(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The workers run in their own sessions (a terminal's Ctrl-C reaches only `automodel run` and
    torchrun): `automodel run` forwards it, torchrun ignores it, both ranks checkpoint and exit 75."""
    cfg = slow_config(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    proc = start(cfg, "launcher.nproc_per_node=2")
    wait_for_step(proc, run, 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == REQUEUE_EXIT_CODE, out
    marker = json.loads((run / "preempted.json").read_text())
    assert marker["signal"] == "SIGINT" and checkpoints(run) == [f"step_{marker['step']}"], out
    meta = json.loads((run / "checkpoints" / f"step_{marker['step']}" / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert "torchrun: stopped by" not in out  # torchrun did not act on the SIGINT itself


def test_dry_run_writes_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = make_config(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    out = run_cli("run", cfg, "--dry-run", cwd=tmp_path)
    assert "dry run" in out.stdout and not run.exists()
    # an existing run: its config.yaml is the one its checkpoints and `automodel export` rely on
    run.mkdir()
    (run / "config.yaml").write_text("# the run's own config\n")
    before = sorted(p.name for p in run.iterdir())
    run_cli("run", cfg, "optimizer.lr=0.5", "launcher.nproc_per_node=2", "--dry-run", cwd=tmp_path)
    assert (run / "config.yaml").read_text() == "# the run's own config\n"
    assert sorted(p.name for p in run.iterdir()) == before


def test_exported_files_follow_the_umask_and_packed_runs_count_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, step_scheduler={**SCHED, "max_steps": 2},
                      checkpoint={"export_hf": True, "save_final": True})
    data = yaml.safe_load(cfg.read_text())
    data["dataset"].update(packing=True, max_length=64)
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    code = "import os, sys; os.umask(0o002); from automodel.cli import main; sys.argv[0] = 'automodel'; main()"
    env = {k: v for k, v in os.environ.items() if k != "AUTOMODEL_LAUNCHED"}
    proc = subprocess.run([sys.executable, "-c", code, "run", str(cfg)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " packed rows, " in proc.stdout and " examples, " not in proc.stdout, proc.stdout
    run = tmp_path / "run"
    weights = list((run / "hf").glob("*.safetensors"))
    assert weights, sorted(p.name for p in (run / "hf").iterdir())
    modes = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in run.rglob("*") if p.is_file()}
    assert set(modes.values()) == {"0o664"}, modes  # 0o666 less the umask 002: safetensors included


def test_list_index_into_a_missing_section_says_what_to_write() -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides({"model": {}}, ["parallel.0.size=4"])
    text = str(e.value)
    assert "'parallel' is not set in the config, so it has no item 0 to change" in text
    assert "'parallel=[{name: ..., size: ...}]'" in text
    assert apply_overrides({"parallel": [{"name": "fsdp2"}]}, ["parallel.0.size=4"])["parallel"] == [{"name": "fsdp2", "size": 4}]


def test_new_plugin_next_line_installs_pytest(tmp_path: Path) -> None:
    out = run_cli("new-plugin", "focal", "--kind", "loss", "--dir", tmp_path)
    pkg = tmp_path / "automodel-focal"
    assert f"next: pip install -e '{pkg}[test]' && automodel plugins --check && pytest {pkg}" in out.stdout
    assert 'test = ["pytest' in (pkg / "pyproject.toml").read_text()
    assert "pip install -e '.[test]'" in (pkg / "README.md").read_text()
