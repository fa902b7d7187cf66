"""One record per kind of component (automodel.kinds): every table the core reads derives from it, every
kind has its hookspec, contract, scaffold stub, conformance check and docs, and a new kind is one record
plus its hookspec, and the loop uses it with one call (measured by adding a throwaway kind in a fresh process:
the script touches exactly three places: the record, the hookspec and the line that builds it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from automodel import config, contracts, hookspecs, registry, scaffold
from automodel.kinds import KINDS
from automodel.testing import conformance

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_every_kind_has_its_hookspec_contract_stub_check_and_docs(kind) -> None:
    spec = getattr(hookspecs, kind.hook, None)
    assert spec is not None and getattr(spec, "automodel_spec", None) is not None and spec.__doc__, kind.hook
    if kind.contract is not None:
        assert contracts.CONTRACTS[kind.name] is getattr(contracts, kind.contract) is kind.protocol()
    else:  # a torch object or a (model, tokenizer) tuple: the conformance kit checks it by behaviour
        assert kind.name in ("model_loaders", "optimizers", "lr_schedulers")
    assert kind.scaffold in scaffold.STUBS and scaffold.KINDS[kind.scaffold].hook == kind.hook
    assert kind.name in conformance._CHECKS
    assert f"## `{kind.hook}(register)`" in (ROOT / "docs" / "hooks.md").read_text()
    table = (ROOT / "docs" / "writing-plugins.md").read_text()
    row = next((line for line in table.splitlines() if line.startswith(f"| {kind.scaffold.replace('_', ' ')} |")), "")
    assert f"`{kind.call}" in row, (kind.call, row)  # the "called as" column says what the loop does


def test_the_tables_derive_from_the_records() -> None:
    assert registry.KINDS == {k.name: (k.hook, k.noun) for k in KINDS}
    assert config.SUPPLIED == {k.name: k.supplied for k in KINDS if k.supplied}
    sections = {key: spec.kind for key, spec in config.SECTIONS.items() if hasattr(spec, "kind")}
    assert sections == {s.key: k.name for k in KINDS for s in k.sections}
    assert all(scaffold.ALIASES[alias] == k.scaffold for k in KINDS for alias in k.aliases)
    assert {n for (_, n) in registry.FIRST_PARTY} >= {"fsdp2", "lora", "wandb", "slurm"}


THROWAWAY = '''
import json, sys
from automodel import hookspecs, kinds
from automodel.kinds import Kind, Section

# place 1: the record
kinds.KINDS += (Kind("evaluators", "register_evaluators", "evaluator", (Section("evaluator", optional=True),),
                     "evaluator", supplied=("ctx",), contract="Logger"),)
kinds.BY_NAME.update({k.name: k for k in kinds.KINDS})


# place 2: its hookspec
@hookspecs.hookspec
def register_evaluators(register):
    """Register evaluators."""


hookspecs.register_evaluators = register_evaluators

from automodel import config, contracts, registry, scaffold  # noqa: E402  (the tables, derived at import)
from automodel.plugins import load_plugins  # noqa: E402

sys.path.insert(0, sys.argv[1])
plugins = load_plugins(["evalplug"])
MODEL = {"name": "hf", "pretrained": sys.argv[2]}
validated = config.validate({"model": MODEL, "dataset": {"name": "mock"}, "evaluator": {"name": "mine", "every": 2}}, plugins)
try:
    config.validate({"model": MODEL, "dataset": {"name": "mock"}, "evaluator": {"name": "mine", "evrey": 2}}, plugins)
    typo = None
except Exception as e:
    typo = str(e)
# place 3: the loop's call site, one line: the bound plan builds it with what the kind declares
evaluator = validated.one("evaluator").build(ctx="the ctx")
try:
    validated.one("evaluator").build()
    mismatch = None
except TypeError as e:
    mismatch = str(e)
print(json.dumps({
    "registry": registry.KINDS.get("evaluators"), "supplied": config.SUPPLIED.get("evaluators"),
    "section": getattr(config.SECTIONS.get("evaluator"), "kind", None),
    "contract": getattr(contracts.CONTRACTS.get("evaluators"), "__name__", None),
    "registered": registry.KINDS and plugins.registry.names("evaluators"),
    "validated": validated.config["evaluator"], "typo": typo, "built": [evaluator.ctx, evaluator.every], "mismatch": mismatch,
    "origin": validated.one("evaluator").origin.label,
    "scaffold_stub": "evaluator" in scaffold.STUBS,
}))
'''

EVALPLUG = '''
from automodel import hookimpl


class Mine:
    def __init__(self, ctx, every: int = 1):
        self.ctx, self.every = ctx, every

    def log(self, metrics, step):
        pass

    def close(self):
        pass


@hookimpl
def register_evaluators(register):
    register("mine", Mine)
'''


def test_a_new_kind_is_one_record_and_its_hookspec(tmp_path, tiny_model_dir) -> None:
    (tmp_path / "evalplug.py").write_text(textwrap.dedent(EVALPLUG))
    script = tmp_path / "throwaway.py"
    script.write_text(THROWAWAY)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(tiny_model_dir)], capture_output=True, text=True, cwd=tmp_path,
                          env={"AUTOMODEL_LOAD_PLUGINS": "", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["registry"] == ["register_evaluators", "evaluator"] and out["supplied"] == ["ctx"]
    assert out["section"] == "evaluators" and out["contract"] == "Logger" and out["registered"] == ["mine"]
    assert out["validated"] == {"name": "mine", "every": 2}
    assert out["built"] == ["the ctx", 2] and "evaluator 'mine' (evaluator, plugin evalplug)" in out["origin"]
    assert "the kind declares ['ctx']" in out["mismatch"]
    assert "evaluator.evrey: unknown key" in out["typo"]
    assert out["scaffold_stub"] is False  # the completeness test above would ask for it (and a contract, a check, docs)
