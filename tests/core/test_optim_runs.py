"""The new optimizers through real runs (the CLI, the tiny model): exact resume after kill -9, fsdp2 on two
gloo processes (DTensor parameters) matching one process and resuming on one process, and profiling."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from automodel.testing import make_config, read_metrics, run_cli

STEPS = 4
SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": STEPS, "log_every_steps": 1, "ckpt_every_steps": 2}
CKPT = {"keep_last": None, "export_hf": False, "save_final": False}
OPTIMIZERS = {
    "muon": {"name": "muon", "lr": 2e-3, "weight_decay": 0.1},
    "adafactor": {"name": "adafactor", "lr": 1e-2, "weight_decay": 0.01},
    "adamw_8bit": {"name": "adamw_8bit", "lr": 2e-3, "weight_decay": 0.1, "min_8bit_size": 16},
}
KILL_HOOK = '''
import os, signal
from automodel import hookimpl

@hookimpl
def on_step_end(ctx, step, metrics):
    if step == int(os.environ.get("OPTIM_TEST_KILL_AT", -1)):
        os.kill(os.getpid(), signal.SIGKILL)
'''


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run)}  # the last record of a step wins


def needs(name: str) -> None:
    if name == "adamw_8bit":
        pytest.importorskip("bitsandbytes", reason="adamw_8bit's optional dependency (pip install bitsandbytes)")


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """Per optimizer, made on first use: a one-process run killed with SIGKILL right after its LAST step was
    logged (the only checkpoint is step 2). Its curve is the uninterrupted reference of every test here; the
    sigkill test resumes it. Returns (config, directory, the killed process, its losses before any resume)."""
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            tmp = tmp_path_factory.mktemp(f"killed_{name}")
            (tmp / "optim_kill_hook.py").write_text(KILL_HOOK)
            cfg = make_config(tmp, tiny_model_dir, optimizer=OPTIMIZERS[name], step_scheduler=SCHED, checkpoint=CKPT)
            proc = run_cli("run", cfg, "--plugin", "optim_kill_hook", cwd=tmp, check=False,
                           env={"OPTIM_TEST_KILL_AT": str(STEPS)})
            cache[name] = (cfg, tmp, proc, losses(tmp / "run"))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def references(killed) -> dict[str, dict[int, float]]:
    """Uninterrupted one-process curves, per optimizer: the killed run's, every step logged before the kill."""
    def get(name: str) -> dict[int, float]:
        _, _, proc, ref = killed(name)
        assert sorted(ref) == list(range(1, STEPS + 1)), (ref, proc.stdout[-3000:], proc.stderr[-3000:])
        return ref

    return get  # type: ignore[return-value]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_after_sigkill_is_exact(name: str, killed) -> None:
    needs(name)
    cfg, tmp_path, proc, ref = killed(name)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert sorted(ref) == list(range(1, STEPS + 1))  # killed after the last step's record, before any final save
    assert sorted((tmp_path / "run" / "checkpoints").glob("step_*")) == [tmp_path / "run" / "checkpoints" / "step_2"]
    resumed = run_cli("run", cfg, cwd=tmp_path)  # auto-resume: the newest complete checkpoint, step 2
    assert "loaded step 2" in resumed.stdout
    got = losses(tmp_path / "run")
    assert not (tmp_path / "run" / "profile").exists() and "profile:" not in resumed.stdout  # off by default
    assert [got[s] for s in range(1, STEPS + 1)] == [ref[s] for s in range(1, STEPS + 1)]  # bit for bit
    # the killed run's records of steps 3-4 were dropped: the ones compared are the resumed run's
    assert "dropped 2 record(s) after step 2" in resumed.stdout, resumed.stdout
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == list(range(1, STEPS + 1))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fsdp2_matches_one_process_and_resumes_on_one(name: str, tmp_path: Path, tiny_model_dir: Path, references) -> None:
    pytest.importorskip("automodel_fsdp2", reason="the FSDP2 plugin provides DTensor parameters")
    needs(name)
    cfg = make_config(tmp_path, tiny_model_dir, optimizer=OPTIMIZERS[name], step_scheduler=SCHED, checkpoint=CKPT,
                      parallel=[{"name": "fsdp2", "param_dtype": None, "reduce_dtype": None}],
                      launcher={"name": "local", "nproc_per_node": 2})
    run_cli("run", cfg, cwd=tmp_path)
    ref, sharded = references(name), losses(tmp_path / "run")
    step2 = tmp_path / "run" / "checkpoints" / "step_2"
    assert json.loads((step2 / "meta.json").read_text())["world_size"] == 2
    # muon's Newton-Schulz runs in bfloat16 on the gathered matrices: close, not bit-equal
    assert sharded == pytest.approx(ref, rel=2e-3)
    # the sharded optimizer state continues on one plain process
    resumed = run_cli("run", cfg, "launcher.nproc_per_node=1", "parallel=[]", f"checkpoint.resume={step2}",
                      f"output_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert "loaded step 2" in resumed.stdout
    one = losses(tmp_path / "one")
    assert sorted(one) == [3, 4] and [one[3], one[4]] == pytest.approx([ref[3], ref[4]], rel=2e-3)


def test_profile_writes_a_trace_summary_and_memory_timeline(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, profile={"start_step": 2, "num_steps": 2, "memory": True},
                      step_scheduler={**SCHED, "ckpt_every_steps": None})
    out = run_cli("run", cfg, cwd=tmp_path).stdout
    prof = tmp_path / "run" / "profile"
    trace = prof / "rank0.steps2-3.pt.trace.json"
    assert f"profile: rank 0: steps 2-3 -> {trace}" in out
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert any("ProfilerStep#" in n for n in names) and any(n.startswith("aten::mm") for n in names)
    assert any(e.get("name") == "[memory]" for e in events)  # allocations recorded (memory: true)
    summary = (prof / "rank0.summary.txt").read_text()
    assert "Self CPU" in summary and "aten::" in summary
    timeline = json.loads((prof / "rank0.memory_timeline.json").read_text())
    assert len(timeline) == 2 and len(timeline[0]) > 0  # [times, sizes per category]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]

