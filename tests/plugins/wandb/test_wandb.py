"""automodel-wandb, offline: the run files wandb writes are read back and checked against the run.

Two CLI runs share one fixture: 4 steps (checkpoints at 2 and 4, validation every 2 steps, the model
exported and logged as an artifact) with no W&B credentials, no WANDB_MODE and stdin closed, then the
same config resumed to 6 steps.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from automodel.testing import make_config, run_cli, tiny_model, write_task_data

WANDB = {"name": "wandb", "project": "automodel-tests", "run_name": "tiny", "group": "g", "tags": ["a", "b"], "log_model": True}
SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 4, "log_every_steps": 1,
         "val_every_steps": 2, "val_max_batches": 2, "ckpt_every_steps": 2}


def records(run_dir: Path) -> list[Any]:
    """Every record of ``run_dir``'s offline W&B run file, parsed with wandb's own protobuf ``Record``.

    ``run-<id>.wandb`` is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0),
    then 32 KiB blocks of chunks, each with a header (crc32 of type + data, length, type: 1 full,
    2 first, 3 middle, 4 last). wandb >= 0.2x no longer ships its Python reader (DataStore).
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data, out, pending, pos = path.read_bytes(), [], b"", 7
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        assert kind in (1, 2, 3, 4) and zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"corrupt record at {pos}"
        pos, pending = pos + 7 + length, pending + chunk
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return out


def of_type(recs: list[Any], kind: str) -> list[Any]:
    return [getattr(r, kind) for r in recs if r.WhichOneof("record_type") == kind]


def history(recs: list[Any]) -> dict[int, dict[str, Any]]:
    """Logged rows by step, without wandb's own ``_step``/``_runtime``/``_timestamp``."""
    rows = {}
    for h in of_type(recs, "history"):
        items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in h.item}
        rows[h.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return rows


def offline_run(output_dir: Path, n: int) -> Path:
    runs = sorted((output_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == n, runs
    return runs[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("wandb")
    val = write_task_data(root / "val.jsonl", n=16, seed=1)
    cfg = make_config(
        root, tiny_model(root), step_scheduler=SCHED, loggers=[{"name": "jsonl"}, WANDB],
        checkpoint={"export_hf": True, "save_final": True, "keep_last": 3},
        validation_dataset={"name": "instruction", "path": str(val), "prompt": "question", "response": "answer", "prompt_template": "{prompt}\n"},
    )
    # No key, no mode, no ~/.netrc, no stdin: wandb would prompt; the logger goes offline instead.
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "AUTOMODEL_LAUNCHED")}
    env.update(NETRC=str(root / "no-netrc"), WANDB_CONFIG_DIR=str(root / "wb-config"), WANDB_CACHE_DIR=str(root / "wb-cache"),
               WANDB_DATA_DIR=str(root / "wb-data"))
    first = subprocess.run([sys.executable, "-m", "automodel", "run", str(cfg)], cwd=root, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    out = root / "run"
    a_lines = (out / "metrics.jsonl").read_text().splitlines()
    a_recs, a_config = records(offline_run(out, 1)), yaml.safe_load((out / "config.yaml").read_text())
    second = run_cli("run", cfg, "step_scheduler.max_steps=6", "checkpoint.resume=auto", "--allow-config-change", cwd=root, env={k: env[k] for k in env if k.startswith("WANDB_")})
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"out": out, "first": first, "second": second, "a": a_recs, "b": records(offline_run(out, 2)),
            "a_jsonl": jsonl[:len(a_lines)], "b_jsonl": jsonl[len(a_lines):], "config": a_config}


def test_no_credentials_logs_offline_with_one_notice(runs):
    notices = [line for line in runs["first"].stdout.splitlines() if line.startswith("wandb: no WANDB_API_KEY")]
    assert len(notices) == 1 and "offline" in notices[0], runs["first"].stdout
    assert "wandb: no WANDB_API_KEY" not in runs["second"].stdout  # WANDB_MODE=offline given: no notice


def test_run_and_resolved_config_are_logged(runs):
    (run,) = of_type(runs["a"], "run")
    assert (run.project, run.display_name, run.run_group, list(run.tags)) == ("automodel-tests", "tiny", "g", ["a", "b"])
    logged = {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}
    assert logged == runs["config"]  # the resolved config (defaults filled), as saved in <output_dir>/config.yaml
    assert logged["step_scheduler"]["val_every_steps"] == 2 and logged["loggers"][1]["run_name"] == "tiny"


def test_every_training_and_validation_value_is_logged_at_its_step(runs):
    rows = history(runs["a"])
    assert sorted(rows) == [1, 2, 3, 4]
    for record in runs["a_jsonl"]:  # training records and validation-only records of the same step
        step = record.pop("step")
        assert record and rows[step] == pytest.approx({**rows[step], **record}, rel=1e-12), step
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "peak_mem_gb", "val_loss", "val_tokens"} <= set(rows[2]) == set(rows[4])
    assert "val_loss" not in rows[3]


def test_exported_model_is_a_model_artifact(runs):
    (run,) = of_type(runs["a"], "run")
    (artifact,) = of_type(runs["a"], "artifact")
    assert (artifact.name, artifact.type) == (f"model-{run.run_id}", "model")
    assert {"config.json", "model.safetensors"} <= {e.path for e in artifact.manifest.contents}
    assert json.loads(artifact.metadata) == {"step": 4}
    assert [e.exit_code for e in of_type(runs["a"], "exit")] == [0]


def test_resume_continues_the_same_run(runs):
    assert "resumed from step 4" in runs["second"].stdout
    (a,), (b,) = of_type(runs["a"], "run"), of_type(runs["b"], "run")
    assert b.run_id == a.run_id
    assert [d.name.rsplit("-", 1)[1] for d in sorted(runs["out"].glob("wandb/offline-run-*"))] == [a.run_id] * 2
    rows = history(runs["b"])
    assert sorted(rows) == [5, 6]
    for record in runs["b_jsonl"]:
        step = record.pop("step")
        assert rows[step] == pytest.approx({**rows[step], **record}, rel=1e-12), step


def test_a_run_closed_by_a_failure_is_marked_failed(tmp_path, monkeypatch, capsys):
    """The loop closes loggers from its exception handler; no export happened, so no artifact either."""
    from automodel.context import Context
    from automodel_wandb.logger import WandbLogger

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var))
    logger = WandbLogger(Context(output_dir=tmp_path, config={"seed": 1}), mode="offline", log_model=True)
    logger.log({"loss": 2.5}, 1)
    try:
        raise RuntimeError("training diverged")
    except RuntimeError:
        logger.close()
    # finish() returns once the wandb service has the exit record, not once its writer has flushed the
    # run file (on a loaded 2-core CI machine the last records arrived later); a real run's process exit
    # tears the service down. Tear it down here so the file is complete before it is read.
    logger.wandb.teardown()
    recs = records(offline_run(tmp_path, 1))
    assert [e.exit_code for e in of_type(recs, "exit")] == [1] and not of_type(recs, "artifact")
    assert history(recs) == {1: {"loss": 2.5}}
    assert "no model artifact" in capsys.readouterr().out


def test_config_mistakes_are_reported_by_validate(tmp_path):
    cfg = make_config(tmp_path, loggers=[{"name": "wandb", "run": "x", "mode": "ofline"}])
    out = run_cli("validate", cfg, check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "loggers.0.run: unknown key" in text and "run_name" in text  # the run's name is run_name
    assert "loggers.0.mode" in text and "did you mean 'offline'?" in text
