"""Durable checkpoints: exact resume after SIGKILL, preemption signals -> exit 75 -> resume, world-size
changes, half-written checkpoints, refusing a different model, and the Hugging Face export.

Every run is the real CLI on the tiny model (CPU, gloo for two processes). The reference run is shared.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from automodel.launch import REQUEUE_EXIT_CODE
from automodel.testing import make_config, run_cli, tiny_model

STEPS = 8
SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": STEPS, "log_every_steps": 1, "ckpt_every_steps": 2}

# A local plugin: slows steps down (so an external signal lands mid-run) or signals its own process.
HOOKS = '''
import os, signal, time
from automodel import hookimpl

@hookimpl
def on_step_end(ctx, step, metrics):
    time.sleep(float(os.environ.get("CKPT_TEST_SLOW", 0)))
    if step == int(os.environ.get("CKPT_TEST_KILL_AT", -1)):
        os.kill(os.getpid(), int(os.environ["CKPT_TEST_SIGNAL"]))
'''


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss; after a resume the re-run steps are logged again and the last record wins."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def setup(tmp_path: Path, model_dir: Path, **overrides) -> Path:
    (tmp_path / "ckpt_test_hooks.py").write_text(HOOKS)
    sections = {"step_scheduler": SCHED, "checkpoint": {"keep_last": None, "export_hf": False, "save_final": False}}
    return make_config(tmp_path, model_dir, **{**sections, **overrides})


def start(cfg: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("AUTOMODEL_LAUNCHED", None)
    cmd = [sys.executable, "-m", "automodel", "run", str(cfg), "--plugin", "ckpt_test_hooks", *args]
    return subprocess.Popen(cmd, cwd=cfg.parent, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def signal_when(proc: subprocess.Popen[str], ready: Path, sig: int, timeout: float = 240) -> str:
    """Send ``sig`` to ``proc`` once ``ready`` exists; return its output (it must have exited 75)."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert proc.poll() is None, f"run ended before {ready} appeared:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"{ready} never appeared"
        time.sleep(0.1)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == REQUEUE_EXIT_CODE, f"exit code {proc.returncode}, expected {REQUEUE_EXIT_CODE}:\n{out}"
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """An uninterrupted single-process run: checkpoints at 2, 4, 6 and 8 (final) and the HF export."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = setup(tmp, model_dir, checkpoint={"keep_last": None, "export_hf": True, "save_final": True})
    run_cli("run", cfg, cwd=tmp)
    return tmp / "run"


def test_layout_is_complete_and_documented(reference: Path) -> None:
    from automodel.builtin.checkpoint import verify

    ckpts = reference / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_8"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_2", "step_4", "step_6", "step_8"]
    step = ckpts / "step_8"
    assert {".metadata", "meta.json", "config.yaml", "rank_0.pt"} <= {p.name for p in step.iterdir()}
    meta = json.loads((step / "meta.json").read_text())
    assert meta["step"] == 8 and meta["world_size"] == 1 and len(meta["fingerprint"]) == 16
    assert verify(step) is None
    rank = torch.load(step / "rank_0.pt", weights_only=False)
    assert {"python", "torch"} <= set(rank["rng"])


def test_sigkill_after_checkpoint_then_resume_reproduces_losses_exactly(tmp_path: Path) -> None:
    # with dropout, so that the restored random generators matter too
    model_dir = tiny_model(tmp_path / "model", attention_dropout=0.2)
    cfg = setup(tmp_path, model_dir)
    # killed right after the LAST step was logged: steps 7-8 have no checkpoint (6 is the newest), and the
    # killed run's curve up to then is the uninterrupted reference (no separate reference run needed)
    killed = run_cli("run", cfg, "--plugin", "ckpt_test_hooks", cwd=tmp_path, check=False,
                     env={"CKPT_TEST_KILL_AT": str(STEPS), "CKPT_TEST_SIGNAL": str(int(signal.SIGKILL))})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    run = tmp_path / "run"
    ref = losses(run)
    assert sorted(ref) == list(range(1, STEPS + 1))  # every step logged, steps 7-8's checkpoint never written
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_2", "step_4", "step_6"]
    resumed = run_cli("run", cfg, cwd=tmp_path)
    assert "loaded step 6" in resumed.stdout
    assert "dropped 2 record(s) after step 6" in resumed.stdout, resumed.stdout  # steps 7-8 are the resumed run's
    got = losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in range(7, STEPS + 1)] == [ref[s] for s in range(7, STEPS + 1)]  # bit for bit


def test_preemption_signals_and_world_size_changes(tmp_path: Path, model_dir: Path, reference: Path) -> None:
    """1 process: SIGTERM -> checkpoint -> exit 75; resume on 2 processes (torchrun): SIGUSR1 to `automodel
    run` -> forwarded -> checkpoint -> exit 75; resume on 1 process: the loss curve is the reference's."""
    cfg = setup(tmp_path, model_dir)
    run = tmp_path / "run"
    out = signal_when(start(cfg, env={"CKPT_TEST_SLOW": "0.3"}), run / "checkpoints" / "step_2" / "meta.json", signal.SIGTERM)
    first = json.loads((run / "preempted.json").read_text())
    assert first["signal"] == "SIGTERM" and first["exit_code"] == REQUEUE_EXIT_CODE
    assert (run / "checkpoints" / f"step_{first['step']}" / "meta.json").exists(), out
    assert first["step"] < STEPS and "exiting with code 75" in out

    ready = run / "checkpoints" / f"step_{(first['step'] // 2 + 1) * 2}" / "meta.json"  # the next periodic one
    out = signal_when(start(cfg, "launcher.nproc_per_node=2", env={"CKPT_TEST_SLOW": "0.3"}), ready, signal.SIGUSR1)
    second = json.loads((run / "preempted.json").read_text())
    assert second["signal"] == "SIGUSR1" and first["step"] < second["step"] < STEPS, out
    assert "resuming a 1-process checkpoint with 2 process(es)" in out
    assert json.loads((Path(second["checkpoint"]) / "meta.json").read_text())["world_size"] == 2

    done = run_cli("run", cfg, cwd=tmp_path)
    assert f"loaded step {second['step']}" in done.stdout and "resuming a 2-process checkpoint with 1 process" in done.stdout
    assert not (run / "preempted.json").exists()
    ref, got = losses(reference), losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):  # the 2-process steps differ only by float summation order
        assert got[s] == pytest.approx(ref[s], abs=1e-5), (s, got, ref)
    for s in range(1, first["step"] + 1):  # the first, single-process stretch is the reference bit for bit
        assert got[s] == ref[s]


def test_half_written_and_corrupted_checkpoints_are_never_picked(tmp_path: Path, model_dir: Path, reference: Path) -> None:
    cfg = setup(tmp_path, model_dir)
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in (2, 4, 6):
        shutil.copytree(reference / "checkpoints" / f"step_{step}", ckpts / f"step_{step}")
    (ckpts / "latest").write_text("step_6\n")
    # a save killed mid-way: its temp dir (even with data and metadata in it)
    shutil.copytree(reference / "checkpoints" / "step_8", ckpts / ".tmp-step_8")
    # a step directory whose meta.json never got written
    shutil.copytree(reference / "checkpoints" / "step_8", ckpts / "step_10")
    (ckpts / "step_10" / "meta.json").unlink()
    # a truncated data file
    data = next((ckpts / "step_6").glob("*.distcp"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    # same size, two bytes flipped in the middle of a tensor file: only the checksum can notice
    data4 = next((ckpts / "step_4").glob("*.distcp"))
    raw = bytearray(data4.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    raw[len(raw) // 2 + 1] ^= 0xFF
    data4.write_bytes(bytes(raw))

    proc = run_cli("run", cfg, cwd=tmp_path)
    assert "skipping" in proc.stdout and "step_10: no meta.json" in proc.stdout
    assert "step_6: file" in proc.stdout and "truncated" in proc.stdout
    assert f"step_4: file {data4.name} is damaged" in proc.stdout and "loaded step 2" in proc.stdout
    ref, got = losses(reference), losses(tmp_path / "run")
    assert sorted(got) == list(range(3, STEPS + 1))
    assert [got[s] for s in got] == [ref[s] for s in got]
    names = {p.name for p in ckpts.iterdir()}
    assert ".tmp-step_8" not in names and "step_6" in names  # broken older ones are replaced by the new saves


def test_all_checkpoints_broken_is_an_error_not_a_silent_restart(tmp_path: Path, model_dir: Path, reference: Path) -> None:
    cfg = setup(tmp_path, model_dir)
    ckpts = tmp_path / "run" / "checkpoints"
    shutil.copytree(reference / "checkpoints" / "step_2", ckpts / "step_2")
    (ckpts / "step_2" / "meta.json").unlink()
    proc = run_cli("run", cfg, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "none is complete" in proc.stderr and "checkpoint.resume=never" in proc.stderr


def test_a_different_model_is_refused_with_a_clear_error(tmp_path: Path, reference: Path) -> None:
    other = tiny_model(tmp_path / "other", intermediate_size=96)
    cfg = setup(tmp_path, other, checkpoint={"resume": str(reference / "checkpoints" / "step_4"), "export_hf": False})
    proc = run_cli("run", cfg, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "different model" in proc.stderr
    assert "model config intermediate_size: checkpoint 128, this run 96" in proc.stderr
    assert "model.layers.0.mlp.up_proj.weight: checkpoint [128, 64], this run [96, 64]" in proc.stderr
    assert "checkpoint.resume=never" in proc.stderr


def test_bad_checkpoint_settings_fail_before_training(tmp_path: Path, model_dir: Path) -> None:
    cfg = setup(tmp_path, model_dir)
    proc = run_cli("validate", cfg, "checkpoint.keep_last=0", f"checkpoint.resume={tmp_path / 'nope'}", check=False)
    assert proc.returncode == 2
    assert "keep_last" in proc.stderr and "resume" in proc.stderr and "never" in proc.stderr


def test_export_loads_in_transformers_with_the_training_logits(tmp_path: Path, model_dir: Path, reference: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    run_cli("export", reference / "checkpoints", out)  # the newest complete checkpoint: step_8
    for d in (out, reference / "hf"):  # the CLI export and the end-of-training export
        assert {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json"} <= {p.name for p in d.iterdir()}

    # the training model at step 8, straight from the DCP checkpoint
    trained = AutoModelForCausalLM.from_pretrained(reference / "hf")
    sd = {k: torch.zeros_like(v) for k, v in trained.state_dict().items()}
    dcp.load({"model": sd}, checkpoint_id=str(reference / "checkpoints" / "step_8"))
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    base.load_state_dict(sd)

    ids = AutoTokenizer.from_pretrained(out)("reverse hello\n", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = base(ids).logits
        for d in (out, reference / "hf"):
            got = AutoModelForCausalLM.from_pretrained(d)(ids).logits
            assert torch.equal(got, expected), d
