"""Run safety: config changes on resume, the output_dir lock (real processes), non-finite weights never
saved, a full disk / file-size limit during save, checkpoints loaded as data only, secrets never written,
and `_target_` never called by validate / --dry-run.

Checkpoint tests drive the ``default`` checkpointer directly on a small torch model (fast); the lock
tests start real processes.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch
from automodel import config as config_mod
from automodel.builtin.checkpoint import Checkpointer
from automodel.builtin.checkpoint_files import META, CheckpointError, UnsafeCheckpoint, crc32
from automodel.context import Context
from automodel.lock import LOCK_NAME, RunLock, RunLocked
from automodel.state import TrainState


def run_config(tmp: Path, **changes: Any) -> dict[str, Any]:
    cfg = {
        "seed": 1, "output_dir": str(tmp / "run"),
        "model": {"name": "hf", "pretrained": str(tmp / "model")},
        "dataset": {"name": "mock", "num_samples": 64},
        "optimizer": {"name": "adamw", "lr": 1.0e-3},
        "lr_scheduler": {"name": "cosine", "warmup_steps": 2},
        "step_scheduler": {"global_batch_size": 8, "local_batch_size": 8, "max_steps": 10, "log_every_steps": 1},
        "checkpoint": {"keep_last": None},
        "loggers": [{"name": "jsonl"}],
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section] = {**cfg[section], name: value}
        else:
            cfg[section] = value
    return cfg


def trainer_state(cfg: dict[str, Any], width: int = 8) -> dict[str, Any]:
    """Model, optimizer and scheduler built from ``cfg`` as the loop builds them."""
    from automodel.builtin import optim

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 2))
    opt_args = {k: v for k, v in cfg["optimizer"].items() if k != "name"}
    optimizer = getattr(optim, cfg["optimizer"]["name"])(model.parameters(), **opt_args)
    sched_args = {k: v for k, v in cfg["lr_scheduler"].items() if k != "name"}
    scheduler = getattr(optim, cfg["lr_scheduler"]["name"])(optimizer, cfg["step_scheduler"]["max_steps"], **sched_args)
    return {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler, "train_state": TrainState()}


def train_steps(state: dict[str, Any], n: int) -> None:
    for _ in range(n):
        state["model"](torch.randn(4, state["model"][0].in_features)).sum().backward()
        state["optimizer"].step()
        state["lr_scheduler"].step()
        state["optimizer"].zero_grad()
        state["train_state"].step += 1


def checkpointer(cfg: dict[str, Any], **kwargs: Any) -> Checkpointer:
    ctx = Context(output_dir=Path(cfg["output_dir"]), config=cfg)
    return Checkpointer(ctx, **{**{k: v for k, v in cfg["checkpoint"].items() if k != "name"}, **kwargs})


def saved_run(tmp: Path, steps: tuple[int, ...] = (3,), **changes: Any) -> dict[str, Any]:
    cfg = run_config(tmp, **changes)
    state, ckpt = trainer_state(cfg), checkpointer(cfg)
    done = 0
    for step in steps:
        train_steps(state, step - done)
        done = step
        ckpt.save(state, step)
    return cfg


def capture(fn: Any, *args: Any) -> tuple[Any, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        result = fn(*args)
    return result, out.getvalue()


# -- config changes on resume -------------------------------------------------------------------------


def test_a_changed_lr_is_refused_without_the_flag_and_applied_with_it(tmp_path: Path) -> None:
    saved_run(tmp_path, steps=(3,))
    new = run_config(tmp_path, optimizer__lr=2.0e-3)
    with pytest.raises(CheckpointError) as e:
        checkpointer(new).load(trainer_state(new))
    first = str(e.value).splitlines()[0]
    assert "optimizer.lr changed since step 3 was saved" in first
    assert "0.001 -> 0.002" in str(e.value) and "--allow-config-change" in str(e.value)
    assert e.value.exit_code == 2

    state = trainer_state(new)
    step, out = capture(checkpointer(new, allow_config_change=True).load, state)
    assert step == 3 and "optimizer.lr: 0.001 -> 0.002" in out
    sched = state["lr_scheduler"]
    expected = 2.0e-3 * sched.lr_lambdas[0](3)  # the new lr, at the resumed step of the schedule
    assert sched.base_lrs == [2.0e-3] and state["optimizer"].param_groups[0]["lr"] == pytest.approx(expected)
    assert sched.get_last_lr()[0] == pytest.approx(expected)


def test_the_optimizer_type_is_never_changed_on_resume_and_nothing_falls_back(tmp_path: Path) -> None:
    saved_run(tmp_path, steps=(2, 4))
    new = run_config(tmp_path, optimizer={"name": "sgd", "lr": 1.0e-3})
    for allow in (False, True):
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(CheckpointError) as e:
            checkpointer(new, allow_config_change=allow).load(trainer_state(new))
        assert str(e.value).startswith("checkpoint: optimizer.name changed since step 4 was saved")
        assert "'adamw' -> 'sgd'" in str(e.value) and "automodel export" in str(e.value)
        assert "step_2" not in out  # no fallback to an older checkpoint because of a config change


def test_changes_that_do_not_alter_the_trajectory_are_printed_and_applied(tmp_path: Path) -> None:
    saved_run(tmp_path, steps=(3,))
    new = run_config(tmp_path, step_scheduler={**run_config(tmp_path)["step_scheduler"], "log_every_steps": 5},
                     loggers=[{"name": "console"}])
    step, out = capture(checkpointer(new).load, trainer_state(new))
    assert step == 3 and "step_scheduler.log_every_steps: 1 -> 5" in out


def test_a_moved_data_file_is_no_change_an_edited_one_is(tmp_path: Path) -> None:
    data = tmp_path / "a.jsonl"
    data.write_text('{"prompt": "x", "response": "y"}\n')
    saved_run(tmp_path, steps=(1,), dataset={"name": "instruction", "path": str(data)})
    moved = tmp_path / "b.jsonl"
    moved.write_text(data.read_text())
    new = run_config(tmp_path, dataset={"name": "instruction", "path": str(moved)})
    assert capture(checkpointer(new).load, trainer_state(new))[0] == 1
    data.write_text('{"prompt": "other", "response": "z"}\n')
    same = run_config(tmp_path, dataset={"name": "instruction", "path": str(data)})
    with pytest.raises(CheckpointError, match="dataset.path changed"):
        checkpointer(same).load(trainer_state(same))


def test_an_intact_checkpoint_that_does_not_load_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    saved_run(tmp_path, steps=(2, 4))
    cfg = run_config(tmp_path)
    state = trainer_state(cfg)
    state["extra"] = torch.optim.lr_scheduler.StepLR(state["optimizer"], 3)  # a stateful item the checkpoint lacks
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(CheckpointError, match="intact"):
        checkpointer(cfg).load(state)
    assert "trying the previous one" not in out.getvalue()


# -- non-finite weights ---------------------------------------------------------------------------------


def test_non_finite_parameters_are_never_saved_and_latest_stays_finite(tmp_path: Path) -> None:
    cfg = run_config(tmp_path)
    state, ckpt = trainer_state(cfg), checkpointer(cfg)
    train_steps(state, 2)
    capture(ckpt.save, state, 2)
    with torch.no_grad():
        state["model"][1].bias[0] = float("nan")
    with pytest.raises(CheckpointError) as e:
        capture(ckpt.save, state, 4)
    first = str(e.value).splitlines()[0]
    assert "step 4 not saved: parameters are not finite (NaN or Inf) in 1.bias" in first
    assert "the newest finite checkpoint is step 2" in first
    assert (ckpt.dir / "latest").read_text().strip() == "step_2" and not (ckpt.dir / "step_4").exists()


# -- full disk / file-size limit ------------------------------------------------------------------------

DISK_SCRIPT = """
import resource, sys
sys.path.insert(0, {tests!r})
from test_run_safety import run_config, trainer_state, train_steps, checkpointer
from pathlib import Path
from automodel.errors import AutomodelError
cfg = run_config(Path({tmp!r}))
state = trainer_state(cfg, width=256)
ckpt = checkpointer(cfg)
train_steps(state, 1)
ckpt.save(state, 1)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))  # 200 kB per file
train_steps(state, 1)
try:
    ckpt.save(state, 2)
except AutomodelError as e:  # as `automodel run` reports it
    print(f"error: {{e}}", file=sys.stderr)
    sys.exit(e.exit_code)
"""


def test_a_file_size_limit_during_save_is_reported_and_the_last_checkpoint_kept(tmp_path: Path) -> None:
    script = DISK_SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 74, proc.stdout + proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    ckpts = tmp_path / "run" / "checkpoints"
    assert f"saving step 2 to {ckpts} failed while writing {ckpts}/.tmp-step_2: " in first
    assert "file too large (file-size limit)" in first and "MiB free" in first and "ulimit -f" in first
    assert "the last good checkpoint step 1 is kept" in first and "Traceback" not in proc.stderr
    assert (ckpts / "latest").read_text().strip() == "step_1"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_1"]  # no half-written step left


# -- checkpoints are data, never code -------------------------------------------------------------------


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def _replant(step_dir: Path, name: str, data: bytes) -> None:
    """Replace a file and fix sizes and checksums in meta.json, as an attacker writing the whole checkpoint would."""
    (step_dir / name).write_bytes(data)
    meta = json.loads((step_dir / META).read_text())
    meta["files"][name] = len(data)
    meta["crc32"][name] = crc32(step_dir / name)
    (step_dir / META).write_text(json.dumps(meta))


@pytest.mark.parametrize("target", ["rank_0.pt", ".metadata"])
def test_a_planted_pickle_payload_is_refused_not_executed(tmp_path: Path, target: str) -> None:
    cfg = saved_run(tmp_path, steps=(2,))
    marker = tmp_path / "PWNED"
    step_dir = tmp_path / "run" / "checkpoints" / "step_2"
    if target == "rank_0.pt":
        buf = io.BytesIO()
        torch.save({"rank": 0, "world_size": 1, "rng": Payload(marker)}, buf)
        data = buf.getvalue()
    else:
        data = pickle.dumps(Payload(marker))
    _replant(step_dir, target, data)
    with pytest.raises(UnsafeCheckpoint) as e:
        capture(checkpointer(cfg).load, trainer_state(cfg))
    assert not marker.exists(), "the payload ran"
    assert "never runs code" in str(e.value) or "not data" in str(e.value)


def test_rank_files_hold_only_data(tmp_path: Path) -> None:
    saved_run(tmp_path, steps=(1,))
    rank = torch.load(tmp_path / "run" / "checkpoints" / "step_1" / "rank_0.pt", weights_only=True)
    assert {"python", "torch", "numpy"} <= set(rank["rng"])


# -- secrets --------------------------------------------------------------------------------------------


def test_secrets_are_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_TESTSECRET_abcdef123")
    raw = tmp_path / "cfg.yaml"
    raw.write_text("model: {name: hf, pretrained: x, token: '${env:HF_TOKEN}'}\n"
                   "loggers: [{name: wandb, api_key: literal-SECRET-987654}, {name: jsonl, path: 'u:${env:HF_TOKEN}@h'}]\n")
    cfg = config_mod.load(raw)
    assert cfg["model"]["token"] == "hf_TESTSECRET_abcdef123"  # the run itself sees the value
    text = config_mod.dump(cfg)
    assert "TESTSECRET" not in text and "literal-SECRET" not in text
    assert "token: '${env:HF_TOKEN}'" in text and "u:${env:HF_TOKEN}@h" in text
    # the saved file resolves to the real values in the processes the run starts (they inherit the env)
    (tmp_path / "saved.yaml").write_text(text)
    again = config_mod.load(tmp_path / "saved.yaml")
    assert again["loggers"][0]["api_key"] == "literal-SECRET-987654" and again["model"]["token"] == "hf_TESTSECRET_abcdef123"
    monkeypatch.delenv("AUTOMODEL_SECRET_LOGGERS_0_API_KEY")
    assert config_mod.load(tmp_path / "saved.yaml")["loggers"][0]["api_key"] == "***"  # elsewhere: masked

    # a checkpoint's copy of the config and its meta.json
    full = {**run_config(tmp_path), "model": cfg["model"], "loggers": cfg["loggers"]}
    state, ckpt = trainer_state(full), checkpointer(full)
    train_steps(state, 1)
    capture(ckpt.save, state, 1)
    for f in (tmp_path / "run" / "checkpoints" / "step_1").iterdir():
        assert b"TESTSECRET" not in f.read_bytes() and b"literal-SECRET" not in f.read_bytes(), f


# -- _target_ is never called before `run` ------------------------------------------------------------


def _cli(args: list[str], cwd: Path) -> tuple[int, str]:
    from automodel.testing import invoke_cli

    code, _, err = invoke_cli(args, cwd)
    return code, err


def test_validate_and_dry_run_never_call_target(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from automodel.testing import make_config

    monkeypatch.setenv("AUTOMODEL_LOAD_PLUGINS", "")
    marker = tmp_path / "RAN"
    path = make_config(tmp_path, tiny_model_dir, launcher={"_target_": "os.system", "command": f"touch {marker}"},
                       parallel=[{"_target_": "os.system", "command": f"touch {marker}"}])
    assert _cli(["validate", str(path)], tmp_path)[0] == 0
    code, err = _cli(["run", str(path), "--dry-run"], tmp_path)
    assert code == 2 and "a dry run does not call" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


# -- the output_dir lock: real processes ------------------------------------------------------------

HOLDER = """
import sys, time
from automodel.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""

TAKER = """
import sys
from automodel.lock import RunLock, RunLocked
try:
    lock = RunLock(sys.argv[1]).acquire()
except RunLocked as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
print("acquired", flush=True)
lock.release()
"""


def _start_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_and_a_killed_runs_lock_taken_over(tmp_path: Path, tiny_model_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from automodel.testing import make_config

    monkeypatch.setenv("AUTOMODEL_LOAD_PLUGINS", "")
    out_dir = tmp_path / "run"
    holder = _start_holder(out_dir)
    try:
        # a second process refuses, naming host, pid and since when
        taker = subprocess.run([sys.executable, "-c", TAKER, str(out_dir)], capture_output=True, text=True, timeout=60)
        assert taker.returncode == 2, taker.stdout + taker.stderr
        first = taker.stderr.splitlines()[0]
        assert f"is in use by another run (host {os.uname().nodename}, pid {holder.pid}, since " in first
        # so does `automodel run` on that output_dir, before writing anything
        code, err = _cli(["run", str(make_config(tmp_path, tiny_model_dir))], tmp_path)
        assert code == 2 and f"pid {holder.pid}" in err.splitlines()[0] and not (out_dir / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out_dir / LOCK_NAME).exists()  # kill -9 left it behind
    taker = subprocess.run([sys.executable, "-c", TAKER, str(out_dir)], capture_output=True, text=True, timeout=60)
    assert taker.returncode == 0, taker.stderr
    assert f"took over the stale lock of host {os.uname().nodename}, pid {holder.pid}" in taker.stdout
    assert f"process {holder.pid} is not running" in taker.stdout and "acquired" in taker.stdout
    assert not (out_dir / LOCK_NAME).exists()  # released at the end


def _plant(directory: Path, age: float, **info: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    path.write_text(json.dumps({"host": "node-7", "pid": 4242, "since": time.time() - age, "token": "t", **info}))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_locks_from_other_hosts_and_slurm_requeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _plant(tmp_path / "a", age=10)  # another host, heartbeat fresh: alive as far as we can tell
    with pytest.raises(RunLocked, match="host node-7, pid 4242"):
        RunLock(tmp_path / "a", report=lambda m: None).acquire()
    _plant(tmp_path / "b", age=3600)  # another host, heartbeat an hour old: a dead node
    notes: list[str] = []
    RunLock(tmp_path / "b", report=notes.append).acquire().release()
    assert "heartbeat stopped" in notes[0]
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    _plant(tmp_path / "c", age=10, slurm_job_id="123")  # the same job, requeued onto another node
    notes.clear()
    RunLock(tmp_path / "c", report=notes.append).acquire().release()
    assert "earlier run of this Slurm job 123 (requeued)" in notes[0]


def test_workers_of_the_holding_launcher_do_not_lock_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from automodel.lock import TOKEN_ENV, held_by_launcher

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    lock = RunLock(tmp_path).acquire()
    try:
        assert held_by_launcher(tmp_path)  # the token travels in the environment to launched processes
        monkeypatch.setenv(TOKEN_ENV, "another")
        assert not held_by_launcher(tmp_path)
    finally:
        monkeypatch.setenv(TOKEN_ENV, lock.token)
        lock.release()
    assert TOKEN_ENV not in os.environ


def test_a_slurm_job_adopts_the_lock_of_the_process_that_submitted_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from automodel.lock import TOKEN_ENV, lock_for_worker

    _plant(tmp_path, age=1, host="login-node", token="submitted")  # `automodel run` on the login node, still alive
    monkeypatch.setenv(TOKEN_ENV, "submitted")  # the job inherited the token (sbatch --export=ALL)
    lock = lock_for_worker(tmp_path)
    assert lock is not None
    info = json.loads((tmp_path / LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["token"] == lock.token != "submitted"
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
