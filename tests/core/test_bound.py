"""validate() returns the bound run (automodel.bound.RunPlan) the loop builds from: every component bound
once (kind, factory, checked arguments, key, origin), built with exactly the arguments its kind declares;
one StepScheduler; the Trainer never validates again; no config <-> registry import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from automodel import bound as bound_mod
from automodel import config
from automodel.bound import Bound, RunPlan
from automodel.kinds import BY_NAME
from automodel.plugins import load_plugins
from automodel.state import StepScheduler
from automodel.testing import make_config
from automodel.train import Trainer

SRC = Path(bound_mod.__file__).parent


@pytest.fixture
def plan(tmp_path: Path, tiny_model_dir: Path) -> RunPlan:
    raw = config.load(make_config(tmp_path, tiny_model_dir, loggers=[{"name": "jsonl"}, {"name": "console"}]))
    return config.validate(raw, load_plugins([]), source="cfg.yaml")


def test_validate_binds_every_component_once(plan: RunPlan) -> None:
    assert isinstance(plan.sched, StepScheduler) and plan.sched.max_steps == 6 and plan.sched.local_batch_size == 4
    loss = plan.one("loss")
    assert loss.kind is BY_NAME["losses"] and loss.key == "loss" and loss.name == "masked_ce" and loss.args == {}
    assert loss.factory is plan.plugins.registry.get("losses", "masked_ce").resolve()
    assert loss.origin.plugin == "builtin" and "loss 'masked_ce' (loss, plugin builtin)" in loss.origin.label
    assert plan.one("optimizer").args == {"lr": 1.0e-3} and plan.one("optimizer").section is plan.config["optimizer"]
    assert [(b.key, b.name) for b in plan.many("loggers")] == [("loggers.0", "jsonl"), ("loggers.1", "console")]
    assert plan.one("validation_dataset") is None and plan.many("transforms") == []
    assert plan.launcher is not None and plan.layout is not None and plan.layout.plan.world_size == 1
    assert {b.key.partition(".")[0] for b in plan.bound()} == {
        "model", "dataset", "loss", "optimizer", "lr_scheduler", "checkpoint", "launcher", "loggers"}
    assert "loss=masked_ce (builtin)" in plan.providers() and "loggers=console (builtin)" in plan.providers()
    with pytest.raises(TypeError, match="list section"):
        plan.one("loggers")


def test_build_refuses_arguments_the_kind_does_not_declare(plan: RunPlan) -> None:
    assert callable(plan.one("loss").build())
    with pytest.raises(TypeError, match=r"passes \['ctx'\] to a loss but the kind declares nothing"):
        plan.one("loss").build(ctx=None)
    with pytest.raises(TypeError, match=r"the kind declares \['ctx', 'tokenizer'\]"):
        plan.one("dataset").build(ctx=None)  # the tokenizer forgotten
    with pytest.raises(TypeError, match=r"the kind declares \['optimizer', 'total_steps'\]"):
        plan.one("lr_scheduler").build(optimizer=None)


def test_the_trainer_builds_from_the_plan_with_what_each_kind_declares(plan: RunPlan, monkeypatch) -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []
    real_build = Bound.build

    def spy(self: Bound, **supplied):
        calls.append((self.key, tuple(supplied)))
        return real_build(self, **supplied)

    def no_second_validation(*a, **k):
        raise AssertionError("validated a second time in the same process")

    monkeypatch.setattr(Bound, "build", spy)
    monkeypatch.setattr(config, "validate", no_second_validation)
    trainer = Trainer(plan)
    try:
        assert trainer.run_plan is plan and trainer.sched is plan.sched and trainer.layout is plan.layout
        assert trainer.run.__func__ is Trainer.run  # the plan does not shadow the method
        assert [key for key, _ in calls] == ["model", "loss", "dataset", "optimizer", "lr_scheduler", "checkpoint",
                                             "loggers.0", "loggers.1"]
        for key, supplied in calls:  # build() checked it; the order is the kind's too
            b = plan.one(key) if "." not in key else plan.many(key.partition(".")[0])[int(key.rpartition(".")[2])]
            assert supplied == b.kind.supplied, key
    finally:
        trainer._finish({}, teardown=False)


def test_a_config_dict_is_validated_once_by_the_trainer(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    seen = []
    real = config.validate
    monkeypatch.setattr(config, "validate", lambda *a, **k: seen.append(k) or real(*a, **k))
    trainer = Trainer(config.load(make_config(tmp_path, tiny_model_dir)), load_plugins([]))
    try:
        assert len(seen) == 1 and seen[0]["world_size"] == 1 and isinstance(trainer.run_plan, RunPlan)
    finally:
        trainer._finish({}, teardown=False)
    with pytest.raises(TypeError, match="needs plugins"):
        Trainer({"model": {"name": "hf"}})


def _imports(module: str) -> set[str]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_no_import_cycle_and_one_resolve() -> None:
    for module in ("registry", "bound", "arguments", "loading", "redaction", "faults", "kinds", "mesh", "state"):
        assert not {"automodel.config", "automodel.train"} & _imports(module), module  # config -> these, never back
    assert not hasattr(config, "resolve")  # registry entries resolve; the config validates
