"""Tests of automodel-focal, with automodel's test kit (fixtures come from its pytest plugin)."""

import csv
import json

from automodel.testing import check_plugin, read_metrics, run_cli


def test_conformance():
    report = check_plugin("focal")  # signatures, contracts, loss and logger behaviour
    assert len(report.checked) == 2, report


def test_listed_with_descriptions():
    listing = json.loads(run_cli("plugins", "--json").stdout)
    focal = [p for p in listing if p["name"] == "focal"][0]
    assert focal["distribution"] == "automodel-focal" and focal["error"] is None
    assert focal["registers"] == {"losses": ["focal"], "loggers": ["csv"]}
    assert focal["descriptions"]["losses"]["focal"] == "focal loss over label tokens"


def test_trains_logs_csv_and_runs_the_hook(tmp_path, automodel_config, tiny_model_dir):
    validation = {"name": "instruction", "path": str(tmp_path / "data.jsonl"), "prompt": "question",
                  "response": "answer", "prompt_template": "{prompt}\n"}
    cfg = automodel_config(loss={"name": "focal", "gamma": 1.0}, loggers=[{"name": "jsonl"}, {"name": "csv"}],
                           validation_dataset=validation,
                           step_scheduler={"global_batch_size": 8, "local_batch_size": 8, "max_steps": 6,
                                           "val_every_steps": 3, "log_every_steps": 1})
    out = run_cli("run", cfg, cwd=tmp_path).stdout
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert losses[-1] < losses[0]
    assert "loss=focal (automodel-focal 0.1.0)" in out and "focal: finished at step 6" in out
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_loss"] and rows[2]["loss"]  # validation record merged into the step's row


def test_a_bad_value_is_caught_before_training(tmp_path, automodel_config):
    proc = run_cli("validate", automodel_config(loss={"name": "focal", "gamma": -1}), check=False)
    assert proc.returncode == 2 and "loss.gamma: must be >= 0, got -1" in proc.stderr
