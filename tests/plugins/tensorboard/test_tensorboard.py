"""automodel-tensorboard: event files read back with TensorBoard's own reader (EventAccumulator).

One module fixture trains in this process: 3 steps with a checkpoint at step 2 only (so step 3 is lost, as
after a crash), then the same run resumed from step 2 to step 5. TensorBoard must show one value per step,
and at step 3 the value of the resumed attempt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from automodel import config
from automodel.plugins import load_plugins
from automodel.testing import make_config, write_task_data
from automodel.train import Trainer

SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 3, "log_every_steps": 1,
         "val_every_steps": 2, "val_max_batches": 1, "ckpt_every_steps": 2}


def train(cfg: Path, **overrides: Any) -> None:
    plugins = load_plugins()
    validated = config.validate(config.load(cfg, [f"{k}={v}" for k, v in overrides.items()]), plugins)
    Trainer(validated).run()


def scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice: {steps}"
        out[tag] = {e.step: e.value for e in events}
    out["_config"] = acc.Tensors("config/text_summary")  # type: ignore[assignment]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tb")
    val = write_task_data(root / "val.jsonl", n=8, seed=1)
    cfg = make_config(
        root, tiny_model_dir, step_scheduler=SCHED, loggers=[{"name": "jsonl"}, {"name": "tensorboard"}],
        checkpoint={"export_hf": False, "save_final": False},
        validation_dataset={"name": "instruction", "path": str(val), "prompt": "question", "response": "answer", "prompt_template": "{prompt}\n"},
    )
    train(cfg)
    out = root / "run"
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train(cfg, **{"step_scheduler.max_steps": 5, "checkpoint.allow_config_change": "true"})
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"out": out, "first": first, "final": final, "tb": scalars(out / "tensorboard")}


def last_by_step(records: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records if key in r}


def test_every_metric_is_a_scalar_at_its_step(run):
    tb = run["tb"]
    assert {"train/loss", "train/grad_norm", "train/lr", "train/tokens_per_s", "train/tokens_seen",
            "train/peak_mem_gb", "val/loss", "val/tokens"} <= set(tb)
    everything = run["final"]  # a step logged twice (before and after the resume): the last record wins
    for key, tag in [("loss", "train/loss"), ("grad_norm", "train/grad_norm"), ("lr", "train/lr"),
                     ("tokens_per_s", "train/tokens_per_s"), ("val_loss", "val/loss")]:
        assert tb[tag] == pytest.approx(last_by_step(everything, key), rel=1e-6), tag
    assert sorted(tb["train/loss"]) == [1, 2, 3, 4, 5]
    # every 2 steps and at the last step; the first attempt's last-step validation (step 3) was purged with step 3
    assert sorted(tb["val/loss"]) == [2, 4, 5] and 3 in last_by_step(run["first"], "val_loss")


def test_resume_replaces_the_steps_after_the_checkpoint(run):
    """The first attempt logged step 3 but saved only step 2: the resumed attempt logs step 3 again and
    TensorBoard (purge_step) shows only the new value."""
    first3 = last_by_step(run["first"], "tokens_per_s")[3]
    second3 = last_by_step(run["final"], "tokens_per_s")[3]
    assert first3 != second3  # wall-clock throughput: never the same twice
    assert run["tb"]["train/tokens_per_s"][3] == pytest.approx(second3, rel=1e-6)
    # the resumed run repeats the interrupted step exactly
    assert last_by_step(run["first"], "loss")[3] == pytest.approx(last_by_step(run["final"], "loss")[3], rel=1e-6)
    assert len(list(run["out"].joinpath("tensorboard").glob("events.out.tfevents.*"))) == 2


def test_config_is_logged_as_text_without_secrets(run):
    from tensorboard.util import tensor_util

    (event,) = run["tb"]["_config"]
    text = tensor_util.make_ndarray(event.tensor_proto).item().decode()
    logged = yaml.safe_load("\n".join(line[4:] for line in text.splitlines()))
    assert logged["step_scheduler"]["ckpt_every_steps"] == 2 and logged["loggers"][1] == {"name": "tensorboard"}

    from automodel_tensorboard.logger import safe_config

    masked = safe_config({"model": {"name": "hf", "hf_token": "hf_abcdefgh123"}, "x": [{"api_key": "k-1234567"}],
                          "pad_token": "<pad>"})
    assert "hf_abcdefgh123" not in json.dumps(masked) and "k-1234567" not in json.dumps(masked)
    assert masked["pad_token"] == "<pad>"


def test_validate_reports_a_mistyped_key(tmp_path):
    cfg = make_config(tmp_path, loggers=[{"name": "tensorboard", "logdir": "x"}])
    with pytest.raises(Exception) as e:
        config.validate(config.load(cfg), load_plugins())
    assert "loggers.0.logdir" in str(e.value) and "log_dir" in str(e.value)


def test_passes_the_conformance_kit():
    from automodel.testing import check_plugin

    report = check_plugin("tensorboard")
    assert report.checked and not report.problems, str(report)
