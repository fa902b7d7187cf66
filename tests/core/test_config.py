"""Config loading, overrides, interpolation and validation: every problem names key and fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from automodel import config
from automodel.errors import ConfigError
from automodel.plugins import load_plugins


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


@pytest.fixture
def base(tmp_path, tiny_model_dir):
    from automodel.testing import write_task_data

    data = write_task_data(tmp_path / "d.jsonl", n=16)
    return {
        "model": {"name": "hf", "pretrained": str(tiny_model_dir)},
        "dataset": {"name": "instruction", "path": str(data), "prompt": "question", "response": "answer"},
    }


def problems(raw, plugins):
    with pytest.raises(ConfigError) as e:
        config.validate(raw, plugins, source="cfg.yaml")
    return e.value


def test_defaults_fill_every_section(base, plugins):
    cfg = config.validate(base, plugins).config
    assert cfg["loss"] == {"name": "masked_ce"}
    assert [lg["name"] for lg in cfg["loggers"]] == ["console", "jsonl"]
    assert cfg["launcher"]["name"] == "local" and cfg["parallel"] == []


def test_misspelled_section_is_named_with_a_suggestion(base, plugins):
    err = problems({**base, "step_schedular": {"max_steps": 3}}, plugins)
    assert "step_schedular: unknown section" in str(err) and "did you mean 'step_scheduler'?" in str(err)
    assert "cfg.yaml" in str(err)


def test_misspelled_key_is_named_with_a_suggestion(base, plugins):
    err = str(problems({**base, "optimizer": {"name": "adamw", "lerning_rate": 1e-3, "l": 2}}, plugins))
    assert "optimizer.lerning_rate: unknown key" in err
    err = str(problems({**base, "step_scheduler": {"max_step": 3}}, plugins))
    assert "step_scheduler.max_step: unknown key" in err and "did you mean 'max_steps'?" in err


def test_a_wrong_choice_lists_the_choices_and_the_closest(base, plugins):
    err = str(problems({**base, "model": {**base["model"], "dtype": "bfloat61"}, "device": "gpu"}, plugins))
    assert "model.dtype: expected one of 'float32', 'bfloat16', 'float16', got str 'bfloat61'" in err
    assert "did you mean 'bfloat16'?" in err
    assert "device: expected one of 'auto', 'cpu', 'cuda', got str 'gpu'" in err
    assert "did you mean 'cpu'" not in err  # too short to guess from: the choices are listed instead


def test_all_problems_are_reported_at_once(base, plugins):
    raw = {**base, "optimizer": {"name": "adamw", "lr": "fast"}, "seed": "x", "loss": {"name": "nope"}}
    err = problems(raw, plugins)
    keys = "\n".join(str(p) for p in err.problems)
    assert len(err.problems) == 3
    assert "optimizer.lr: expected float, got str 'fast'" in keys
    assert "seed: expected int" in keys and "unknown loss 'nope'" in keys


def test_missing_required_argument_and_section(plugins, base):
    err = str(problems({"model": base["model"], "dataset": {"name": "instruction"}}, plugins))
    assert "dataset.path: missing required argument" in err
    err = str(problems({"model": base["model"]}, plugins))
    assert "dataset: missing required section" in err


def test_missing_data_file_names_key_and_resolved_path(base, plugins):
    raw = {**base, "dataset": {**base["dataset"], "path": "data/nothere.jsonl"}}
    err = str(problems(raw, plugins))
    assert "dataset.path: data file not found: data/nothere.jsonl" in err and "${cfg_dir}" in err


def test_wrong_column_is_caught_before_training(base, plugins):
    err = str(problems({**base, "dataset": {**base["dataset"], "prompt": "q"}}, plugins))
    assert "dataset.prompt: column 'q' is not in" in err and "question, answer" in err


def test_batch_sizes_must_fit_data_parallelism(base, plugins):
    raw = {**base, "step_scheduler": {"global_batch_size": 10, "local_batch_size": 4}}
    err = str(problems(raw, plugins))
    assert "step_scheduler.global_batch_size: 10 is not a multiple" in err and "use global_batch_size=8 or 12" in err
    raw = {**base, "launcher": {"name": "local", "nproc_per_node": 3}, "step_scheduler": {"global_batch_size": 8, "local_batch_size": 4}}
    assert "4 x 3 = 12" in str(problems(raw, plugins))


def test_several_processes_default_to_ddp(base, plugins):
    sched = {"global_batch_size": 8, "local_batch_size": 4}
    cfg = config.validate({**base, "launcher": {"name": "local", "nproc_per_node": 2}, "step_scheduler": sched}, plugins).config
    assert cfg["parallel"] == [{"name": "ddp"}]


def test_mesh_sizes_must_divide_the_world(base, plugins):
    raw = {**base, "launcher": {"name": "local", "nproc_per_node": 2}, "parallel": [{"name": "ddp", "size": 3}]}
    assert "the parallel sizes multiply to 3, which does not divide the 2 processes" in str(problems(raw, plugins))


def test_ddp_does_not_combine_with_other_parallelizers(base):
    pytest.importorskip("automodel_fsdp2", reason="the case is ddp next to the FSDP2 plugin's fsdp2")
    plugins = load_plugins()
    raw = {**base, "parallel": [{"name": "ddp", "size": 2}, {"name": "fsdp2"}], "launcher": {"name": "local", "nproc_per_node": 4},
           "step_scheduler": {"global_batch_size": 8, "local_batch_size": 2}}
    err = str(problems(raw, plugins))
    assert "parallel.0: 'ddp' cannot be combined with 'fsdp2'" in err and "fsdp2_replicate" in err


def test_target_sections_are_validated_against_the_callable(base, plugins):
    raw = {**base, "optimizer": {"_target_": "automodel.builtin.optim:sgd", "lr": 0.1, "momentom": 0.9}}
    err = str(problems(raw, plugins))
    assert "optimizer.momentom: unknown key" in err and "did you mean 'momentum'?" in err
    cfg = config.validate({**base, "optimizer": {"_target_": "automodel.builtin.optim:sgd", "lr": 0.1}}, plugins).config
    assert cfg["optimizer"]["_target_"] == "automodel.builtin.optim:sgd"


def test_overrides_set_index_and_delete():
    cfg = {"a": {"b": 1}, "loggers": [{"name": "console"}, {"name": "jsonl"}]}
    out = config.apply_overrides(cfg, ["a.b=3e-4", "a.c.d=[1, 2]", "loggers.1.path=x.jsonl", "~loggers.0"])
    assert out == {"a": {"b": 3e-4, "c": {"d": [1, 2]}}, "loggers": [{"name": "jsonl", "path": "x.jsonl"}]}
    assert cfg["a"] == {"b": 1}  # the input is not modified
    with pytest.raises(ConfigError, match="out of range"):
        config.apply_overrides(cfg, ["loggers.5.name=x"])
    with pytest.raises(ConfigError, match="key.path=value"):
        config.apply_overrides(cfg, ["justaword"])


def test_env_and_cfg_dir_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("AM_LR", "0.5")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"optimizer": {"lr": "${env:AM_LR}"}, "a": "${env:AM_UNSET,fallback}", "p": "${cfg_dir}/x"}))
    raw = config.load(path)
    assert raw["optimizer"]["lr"] == 0.5 and raw["a"] == "fallback" and raw["p"] == f"{tmp_path}/x"
    path.write_text(yaml.safe_dump({"x": "${env:AM_SURELY_UNSET}"}))
    with pytest.raises(ConfigError, match="x: environment variable AM_SURELY_UNSET is not set"):
        config.load(path)


def test_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: hf\n")
    with pytest.raises(ConfigError, match=r"invalid YAML \(line"):
        config.load(bad)


@pytest.mark.parametrize(
    "value, annotation, ok",
    [(1, "int", True), (True, "int", False), (1, "float", True), ("a", "float", False), (None, "int | None", True),
     ([1, 2], "list[int]", True), ([1, "a"], "list[int]", False), ("cpu", "Literal['cpu', 'cuda']", True),
     ("tpu", "Literal['cpu', 'cuda']", False), ({"a": 1}, "dict", True), (3, "SomeUnknownType", True)],
)
def test_type_checks(value, annotation, ok):
    assert config.type_ok(value, annotation) is ok


def test_local_paths_are_saved_absolute_hub_ids_are_not(base, plugins, tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tiny_model_dir.parent)
    data = base["dataset"]["path"]
    raw = {**base, "model": {"name": "hf", "pretrained": tiny_model_dir.name},
           "dataset": {**base["dataset"], "path": os.path.relpath(data)}}
    cfg = config.validate(raw, plugins).config
    assert cfg["model"]["pretrained"] == str(tiny_model_dir) and cfg["dataset"]["path"] == str(Path(data).resolve())
    hub = {**base, "model": {"name": "hf", "pretrained": "meta-llama/Llama-3.2-1B", "tokenizer": tiny_model_dir.name}}
    cfg = config.validate(hub, plugins).config
    assert cfg["model"]["pretrained"] == "meta-llama/Llama-3.2-1B" and cfg["model"]["tokenizer"] == str(tiny_model_dir)


def test_output_and_checkpoint_dirs_must_not_be_files(base, plugins, tmp_path):
    (tmp_path / "afile").write_text("")
    err = str(problems({**base, "output_dir": str(tmp_path / "afile"), "checkpoint": {"dir": str(tmp_path / "afile")}}, plugins))
    assert "output_dir: " in err and "checkpoint.dir: " in err and "exists and is not a directory" in err


def test_validation_period_without_validation_data_and_empty_files(base, plugins, tmp_path):
    err = str(problems({**base, "step_scheduler": {"val_every_steps": 5}}, plugins))
    assert "step_scheduler.val_every_steps: is set but there is no validation_dataset" in err
    (tmp_path / "empty.jsonl").write_text("")
    err = str(problems({**base, "dataset": {**base["dataset"], "path": str(tmp_path / "empty.jsonl")}}, plugins))
    assert "empty.jsonl is empty" in err


def test_override_that_is_broken_yaml_says_so():
    with pytest.raises(ConfigError, match=r"parallel: the value '\[\{name: fsdp2' is not valid YAML"):
        config.apply_overrides({}, ["parallel=[{name: fsdp2"])
    with pytest.raises(ConfigError, match="needs a key before"):
        config.apply_overrides({}, ["=3"])


ALIAS_PLUGIN = '''
from __future__ import annotations

from typing import Literal

from automodel import hookimpl

Mode = Literal["fast", "slow"]


class Logger:
    def __init__(self, ctx, mode: Mode = "fast"):
        self.mode = mode

    def log(self, metrics, step):
        pass

    def close(self):
        pass


@hookimpl
def register_loggers(register):
    register("alias_logger", Logger)
'''


def test_annotations_resolve_in_the_factory_module(base, tmp_path, monkeypatch):
    """A plugin's type alias (`Mode = Literal[...]` under `from __future__ import annotations`) is checked,
    not silently taken as Any."""
    (tmp_path / "alias_plugin.py").write_text(ALIAS_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = load_plugins(["alias_plugin"], entry_points=False)
    err = str(problems({**base, "loggers": [{"name": "alias_logger", "mode": "fsat"}]}, plugins))
    assert "loggers.0.mode: expected one of 'fast', 'slow', got str 'fsat'" in err and "did you mean 'fast'?" in err
    assert config.validate({**base, "loggers": [{"name": "alias_logger", "mode": "slow"}]}, plugins).config["loggers"][0]["mode"] == "slow"
