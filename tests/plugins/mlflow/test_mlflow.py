"""automodel-mlflow against a real ``mlflow server`` (SQLite backend, local artifact store) started here on
127.0.0.1, read back through ``MlflowClient``.

One module fixture: the server starts while the tiny model is built; a run trains 3 steps with a checkpoint
at step 2 only (step 3 is logged but not saved, as before a crash), then resumes from step 2 to step 5 and
exports the model. The MLflow run must be one run, with one value per step.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from automodel import config
from automodel.context import Context
from automodel.plugins import load_plugins
from automodel.testing import make_config, read_metrics, run_cli, write_task_data
from automodel.train import Trainer

SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 3, "log_every_steps": 1,
         "val_every_steps": 2, "val_max_batches": 1, "ckpt_every_steps": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(cfg: Path, *overrides: str) -> None:
    plugins = load_plugins()
    validated = config.validate(config.load(cfg, list(overrides)), plugins)
    Trainer(validated).run()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    yield {"uri": uri, "proc": proc, "log": root / "server.log"}
    os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
    proc.wait(timeout=30)


def wait_for(server: dict[str, Any], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server["proc"].poll() is None, server["log"].read_text()
        try:
            with urllib.request.urlopen(server["uri"] + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server did not start in {timeout} s:\n{server['log'].read_text()}")


@pytest.fixture(scope="module")
def run(server, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("mlflow")
    val = write_task_data(root / "val.jsonl", n=8, seed=1)
    logger = {"name": "mlflow", "tracking_uri": server["uri"], "experiment_name": "automodel-tests", "run_name": "tiny",
              "tags": {"team": "nlp"}, "log_model": True}
    cfg = make_config(
        root, tiny_model_dir, step_scheduler=SCHED, loggers=[{"name": "jsonl"}, logger],
        checkpoint={"export_hf": False, "save_final": False},
        validation_dataset={"name": "instruction", "path": str(val), "prompt": "question", "response": "answer", "prompt_template": "{prompt}\n"},
    )
    wait_for(server)  # started while the tiny model was built
    train(cfg)
    out = root / "run"
    first = read_metrics(out)
    train(cfg, "step_scheduler.max_steps=5", "checkpoint.export_hf=true", "checkpoint.save_final=true",
          "checkpoint.allow_config_change=true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server["uri"])
    experiment = client.get_experiment_by_name("automodel-tests")
    runs = client.search_runs([experiment.experiment_id])
    return {"client": client, "runs": runs, "out": out, "first": first, "all": read_metrics(out),
            "config": yaml.safe_load((out / "config.yaml").read_text()), "root": root}


def history(client: Any, run_id: str, key: str) -> dict[int, float]:
    points = client.get_metric_history(run_id, key)
    steps = [m.step for m in points]
    assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {sorted(steps)}"
    return {m.step: m.value for m in points}


def test_resume_continues_the_same_finished_run(run):
    (r,) = run["runs"]  # one MLflow run for both attempts
    assert r.info.run_name == "tiny" and r.info.status == "FINISHED"
    assert r.data.tags["team"] == "nlp"


def test_metrics_are_logged_once_per_step(run):
    client, run_id = run["client"], run["runs"][0].info.run_id
    last = {m["step"]: m for m in run["all"]}  # the jsonl log has step 3 twice: the resumed attempt's is last
    for key in ("loss", "grad_norm", "lr", "tokens_seen"):
        assert history(client, run_id, key) == pytest.approx({s: m[key] for s, m in last.items()}, rel=1e-6), key
    assert sorted(history(client, run_id, "val_loss")) == [2, 3, 4, 5]
    # step 3 was logged before the interruption and is kept, not logged a second time
    first3 = next(m for m in run["first"] if m["step"] == 3)
    assert history(client, run_id, "tokens_per_s")[3] == pytest.approx(first3["tokens_per_s"], rel=1e-6)


def test_params_are_the_resolved_config_and_tags_name_the_plugins(run):
    import automodel_mlflow

    r = run["runs"][0]
    params, tags = r.data.params, r.data.tags
    assert params["optimizer.lr"] == str(run["config"]["optimizer"]["lr"])
    assert params["step_scheduler.val_every_steps"] == "2" and params["loggers.1.experiment_name"] == "automodel-tests"
    assert params["step_scheduler.max_steps"] == "3"  # MLflow params are immutable: the change is a tag
    assert "step_scheduler.max_steps: 3 -> 5" in tags["automodel.resumed_at_step_2"]
    assert tags["automodel.plugin.mlflow"] == f"automodel-mlflow {automodel_mlflow.__version__}"
    assert tags["automodel.plugin.builtin"].startswith("automodel-core")
    assert f"loggers=mlflow (automodel-mlflow {automodel_mlflow.__version__})" in tags["automodel.components"]
    assert tags["automodel.output_dir"] == str(run["out"].resolve())


def test_config_and_exported_model_are_artifacts(run, tmp_path):
    client, run_id = run["client"], run["runs"][0].info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "model"} <= top
    model = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/config.json", "model/model.safetensors"} <= model
    path = client.download_artifacts(run_id, "config.yaml", str(tmp_path))
    # the resumed attempt's config (in-process runs leave the first attempt's config.yaml on disk)
    assert yaml.safe_load(Path(path).read_text())["step_scheduler"] == {**run["config"]["step_scheduler"], "max_steps": 5}


def test_passes_the_conformance_kit(run, server):
    from automodel.testing import check_plugin

    report = check_plugin("mlflow", args={"mlflow": {"tracking_uri": server["uri"], "experiment_name": "kit"}})
    assert report.checked and not report.problems, str(report)
    (kit,) = run["client"].search_runs([run["client"].get_experiment_by_name("kit").experiment_id])
    assert history(run["client"], kit.info.run_id, "loss") and kit.info.status == "FINISHED"


def test_secrets_are_masked_in_params():
    from automodel_mlflow.logger import flatten, safe_config

    params = flatten(safe_config({"model": {"hf_token": "hf_abcdefgh123"}, "loggers": [{"name": "x", "api_key": "k-12345678"}]}))
    assert "hf_abcdefgh123" not in str(params) and "k-12345678" not in str(params)
    assert set(params) == {"model.hf_token", "loggers.0.name", "loggers.0.api_key"}


def test_an_unreachable_server_stops_the_run_before_training(tmp_path, tiny_model_dir):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = make_config(tmp_path, tiny_model_dir, loggers=[{"name": "mlflow", "tracking_uri": uri, "timeout_s": 2}])
    out = run_cli("run", cfg, cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert uri in out.stderr and "cannot be reached" in out.stderr and "on_unreachable: warn" in out.stderr
    assert "step 1" not in out.stdout and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_unreachable_server_warns_when_configured(tmp_path, capsys):
    from automodel_mlflow.logger import MlflowLogger

    uri = f"http://127.0.0.1:{free_port()}"
    logger = MlflowLogger(Context(output_dir=tmp_path, config={"seed": 1}), tracking_uri=uri, on_unreachable="warn", timeout_s=2)
    logger.log({"loss": 1.0}, 1)
    logger.close()
    text = capsys.readouterr().out
    assert f"warning: mlflow: the tracking server {uri} cannot be reached" in text and "training continues" in text


def test_local_store_in_the_run_directory_by_default(tmp_path, monkeypatch, capsys):
    from automodel_mlflow.logger import MlflowLogger
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "my-run"
    logger = MlflowLogger(Context(output_dir=out, config={"seed": 1, "optimizer": {"name": "adamw", "lr": 0.1}}))
    logger.log({"loss": 1.5, "lr": 0.1}, 1)
    logger.close()
    assert logger.uri == f"sqlite:///{out.resolve() / 'mlruns' / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=logger.uri).get_run(logger.run_id)
    assert (run.info.run_name, run.info.status) == ("my-run", "FINISHED")
    assert run.data.params == {"seed": "1", "optimizer.name": "adamw", "optimizer.lr": "0.1"} and run.data.metrics == {"loss": 1.5, "lr": 0.1}
    assert (out / "mlruns" / "artifacts").is_dir() and run.info.artifact_uri.startswith((out / "mlruns" / "artifacts").as_uri())
    assert "Creating initial MLflow database tables" not in capsys.readouterr().err
