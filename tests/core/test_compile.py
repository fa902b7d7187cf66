"""The builtin ``compile`` transform: compiled runs match eager ones (1 process; 2 gloo processes
under fsdp2; LoRA + activation checkpointing + a fused CE loss), recompilations and compile time are
logged, and combinations that cannot work are refused at validate.

Compiled runs use ``backend: aot_eager`` (Dynamo graph capture + AOTAutograd, the same graphs inductor
gets, without generating C++: inductor's first compile costs minutes on a loaded 2-core CI machine).
The inductor path is measured by tests/benchmarks/bench_compile.py (docs/compile.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from automodel.testing import make_config, read_metrics, run_cli, tiny_model

SCHED = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": 5, "log_every_steps": 1}
COMPILE = {"name": "compile", "backend": "aot_eager"}
LORA = {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "allow_random_base": True}
AC = {"name": "activation_checkpointing"}
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("compile_model"))


def _run(tmp: Path, model: Path, name: str, **sections) -> list[dict]:
    cfg = make_config(tmp / name, model, step_scheduler=SCHED, **sections)
    run_cli("run", cfg, cwd=tmp, env=ENV)
    return [m for m in read_metrics(tmp / name / "run") if "loss" in m]


def _assert_parity(got: list[dict], want: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want] == list(range(1, SCHED["max_steps"] + 1))
    for g, w in zip(got, want):
        assert g["label_tokens"] == w["label_tokens"]
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-4, abs=1e-5), (g["step"], g["loss"], w["loss"])
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-3), (g["step"], g["grad_norm"], w["grad_norm"])


@pytest.fixture(scope="module")
def eager(tmp_path_factory: pytest.TempPathFactory, model: Path) -> list[dict]:
    return _run(tmp_path_factory.mktemp("eager"), model, "eager")


def test_compiled_blocks_match_eager_and_log_compile_time(tmp_path: Path, model: Path, eager: list[dict]) -> None:
    compiled = _run(tmp_path, model, "compiled", transforms=[COMPILE])
    _assert_parity(compiled, eager)
    # compile time is reported apart: it appears at step 1 and the total never decreases
    assert compiled[0]["compile_s"] > 0
    assert all(b["compile_s"] >= a["compile_s"] for a, b in zip(compiled, compiled[1:]))
    # variable-length batches: automatic dynamic shapes recompile once as dynamic, then never again
    assert compiled[-1]["recompiles"] <= 1, [m["recompiles"] for m in compiled]
    assert (tmp_path / "compiled" / "run" / "compile_cache").is_dir()  # the default cache directory


def test_compiled_fsdp2_two_processes_match_one_process_eager(tmp_path: Path, model: Path, eager: list[dict]) -> None:
    pytest.importorskip("automodel_fsdp2")
    compiled = _run(tmp_path, model, "fsdp2", transforms=[COMPILE], parallel=[{"name": "fsdp2"}],
                    launcher={"name": "local", "nproc_per_node": 2})
    _assert_parity(compiled, eager)


def test_compile_composes_with_lora_checkpointing_and_fused_ce(tmp_path: Path, model: Path) -> None:
    """compile listed FIRST (before LoRA wraps the blocks and checkpointing hooks them), fullgraph: the
    block forward is traced at the first call, with LoRA's layers in it and the hooks outside."""
    pytest.importorskip("automodel_lora")
    pytest.importorskip("automodel_triton_ce")
    loss = {"name": "chunked_ce"}
    want = _run(tmp_path, model, "eager", transforms=[LORA, AC], loss=loss)
    got = _run(tmp_path, model, "compiled", transforms=[{**COMPILE, "fullgraph": True}, LORA, AC], loss=loss)
    _assert_parity(got, want)
    assert want[-1]["loss"] < want[0]["loss"]  # the adapter trains


def test_validate_refuses_what_cannot_work(tmp_path: Path, model: Path) -> None:
    from automodel.builtin.transforms import validate_compile

    fsdp2 = {"parallel": [{"name": "fsdp2"}], "transforms": [{"name": "compile", "scope": "model"}]}
    problems = validate_compile({"scope": "model"}, fsdp2)
    assert [p[0] for p in problems] == ["scope"] and "per-block hooks" in problems[0][1]
    assert validate_compile({"scope": "blocks"}, {**fsdp2, "transforms": [{"name": "compile"}]}) == []
    assert [p[0] for p in validate_compile({"mode": "fast", "backend": "nope", "dynamic": "yes", "scope": "all"})] == [
        "scope", "mode", "dynamic", "backend"]
    tp = validate_compile({}, {"parallel": [{"name": "tp"}], "transforms": [{"name": "compile"}]})
    assert len(tp) == 1 and "tp" in tp[0][1] and "fsdp2" in tp[0][2]
    twice = validate_compile({}, {"transforms": [{"name": "compile"}, {"name": "compile"}]})
    assert twice and "twice" in twice[0][1]
    packed = {"model": {"name": "hf", "attn_implementation": "sdpa_packed"}, "transforms": [{"name": "compile"}]}
    assert [p[0] for p in validate_compile({"fullgraph": True}, packed)] == ["fullgraph"]  # a graph break by design
    assert validate_compile({}, packed) == []
    # through the CLI: one clear message naming the key, exit 2, before anything is built
    cfg = make_config(tmp_path, model, transforms=[{"name": "compile", "scope": "model"}], parallel=[{"name": "fsdp2"}],
                      launcher={"name": "local", "nproc_per_node": 2})
    proc = run_cli("validate", cfg, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "transforms" in out and "scope" in out and "per-block hooks" in out and "Traceback" not in out


def test_cache_dir_default_user_path_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from automodel.builtin.transforms import Compile

    class Ctx:
        output_dir = tmp_path / "run"

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    Compile()._set_cache_dir(Ctx())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "run" / "compile_cache")
    Compile()._set_cache_dir(Ctx())  # a resumed run (same output_dir): the same directory
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "run" / "compile_cache")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    Compile()._set_cache_dir(Ctx())  # the environment wins over the default
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    Compile(cache_dir=str(tmp_path / "shared"))._set_cache_dir(Ctx())  # an explicit cache_dir wins over both
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "shared") and (tmp_path / "shared").is_dir()
