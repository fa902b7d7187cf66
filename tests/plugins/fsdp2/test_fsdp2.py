"""automodel-fsdp2 on CPU: 2 gloo processes against a single-process run of the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from automodel.testing import make_config, read_metrics, run_cli, tiny_model

HERE = Path(__file__).parent
# Global batch 8 = 2 sequences x 2 micro-batches x 2 ranks (x 4 micro-batches in one process): the
# fsdp2 run goes through the gradient-accumulation path (set_requires_gradient_sync).
SCHED = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": 6, "log_every_steps": 1, "ckpt_every_steps": 3}
CKPT = {"export_hf": True, "save_final": True, "keep_last": 5}
FSDP2 = {"parallel": [{"name": "fsdp2"}], "launcher": {"name": "local", "nproc_per_node": 2}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A single-process run and the same config under fsdp2 on 2 processes (checkpoints at step 3, 6)."""
    root = tmp_path_factory.mktemp("fsdp2")
    model = tiny_model(root)
    out = {"model": model}
    for name, extra in (("single", {}), ("fsdp2", FSDP2)):
        cfg = make_config(root / name, model, step_scheduler=SCHED, checkpoint=CKPT, **extra)
        run_cli("run", cfg, cwd=root)
        out[name] = root / name / "run"
        out[name + "_cfg"] = cfg
    return out


def _hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.detach() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def _assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for g, w in zip(got, want):
        assert g["label_tokens"] == w["label_tokens"], (g, w)
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5), (g["step"], g["loss"], w["loss"])
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4), (g["step"], g["grad_norm"], w["grad_norm"])


def _assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_plugin_is_installed_and_listed() -> None:
    listing = json.loads(run_cli("plugins", "--json").stdout)
    entry = next(p for p in listing if p["name"] == "fsdp2")
    assert entry["distribution"] == "automodel-fsdp2" and entry["error"] is None
    assert entry["registers"]["parallelizers"] == ["fsdp2", "fsdp2_replicate"]
    # Listing plugins must not import torch through this package.
    code = "import sys, automodel_fsdp2; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("parallel=[{name: fsdp2, param_dtype: bf16}]", "parallel.0.param_dtype"),
        ("parallel=[{name: fsdp2, reduce_dtype: float64}]", "parallel.0.reduce_dtype"),
        ("parallel=[{name: fsdp2, reshard_after_forward: sometimes}]", "parallel.0.reshard_after_forward"),
        ("parallel=[{name: fsdp2, reshard_after_forward: 1}]", "parallel.0.reshard_after_forward"),
        ("parallel=[{name: fsdp2, size: 3}]", "parallel"),
    ],
)
def test_bad_options_fail_before_launch(tmp_path: Path, tiny_model_dir: Path, override: str, key: str) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, launcher={"name": "local", "nproc_per_node": 2})
    proc = run_cli("run", cfg, override, cwd=tmp_path, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert key in text, text
    assert "launching" not in text  # caught by config validation, no process started


def test_loss_and_weights_match_single_process(runs: dict[str, Path]) -> None:
    single, sharded = read_metrics(runs["single"]), read_metrics(runs["fsdp2"])
    assert len(sharded) == SCHED["max_steps"]
    assert sharded[-1]["loss"] < sharded[0]["loss"]  # it trains
    _assert_same_metrics(sharded, single)
    # The consolidated export of the sharded state loads in transformers and equals the 1-process result.
    _assert_same_weights(_hf_weights(runs["fsdp2"] / "hf"), _hf_weights(runs["single"] / "hf"))
    # ... and differs from the starting weights (the comparison is not vacuous).
    start = _hf_weights(runs["model"])
    assert not torch.allclose(start["model.layers.0.mlp.up_proj.weight"], _hf_weights(runs["fsdp2"] / "hf")["model.layers.0.mlp.up_proj.weight"])


def test_sharded_checkpoint_resume(runs: dict[str, Path], tmp_path: Path) -> None:
    step3 = runs["fsdp2"] / "checkpoints" / "step_3"
    assert len(list(step3.glob("*.distcp"))) == 2  # one shard file per rank
    out = tmp_path / "resumed"
    run_cli("run", runs["fsdp2_cfg"], f"output_dir={out}", f"checkpoint.resume={step3}", cwd=tmp_path)
    resumed = read_metrics(out)
    assert [m["step"] for m in resumed] == [4, 5, 6]
    _assert_same_metrics(resumed, read_metrics(runs["fsdp2"])[3:])
    _assert_same_weights(_hf_weights(out / "hf"), _hf_weights(runs["fsdp2"] / "hf"))


def test_distributed_checks(runs: dict[str, Path], tmp_path: Path) -> None:
    """Meta-device loading (per-rank shards, tied and untied, fp32 -> bf16), shard-independent random
    init, and gradients equal to an unsharded model for: plain, grad accumulation, a fused-loss style
    forward (hidden states + lm_head weight read after forward), activation
    checkpointing + no reshard, CPU offload, no meta init, bf16 mixed precision, HSDP, TP + FSDP."""
    tied = tiny_model(tmp_path, tie_word_embeddings=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("AUTOMODEL_LAUNCHED", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "dist_checks.py"), str(runs["model"]), str(tied)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    for name in ("meta_load", "meta_random", "training"):
        assert f"ok {name}" in proc.stdout


def test_reduce_every_micro_batch_keeps_gradients_sharded_in_the_plan(tmp_path: Path, tiny_model_dir: Path) -> None:
    """With 2 micro-batches per step, the default reduces on the last one and each rank holds the whole
    model's gradients until then; reduce_every_micro_batch keeps them sharded (half per rank at 2 ranks).
    That the gradients are equal either way is a distributed check (dist_checks.py)."""
    from automodel import config as config_mod
    from automodel.estimate import estimate
    from automodel.plan import advice
    from automodel.plugins import load_plugins

    plugins = load_plugins()
    grads = {}
    for every in (False, True):
        cfg = make_config(tmp_path / str(every), tiny_model_dir, parallel=[{"name": "fsdp2", "reduce_every_micro_batch": every}],
                          launcher={"name": "local", "nproc_per_node": 2},
                          dataset={"name": "mock", "seq_len": 32, "num_samples": 64, "vocab_size": 48},
                          step_scheduler={"global_batch_size": 8, "local_batch_size": 2, "max_steps": 2})
        v = config_mod.validate(config_mod.load(str(cfg), []), plugins, world_size=2)
        est = estimate(v.config, plugins, v.layout, world_size=2)
        grads[every] = est.breakdown["gradients"]
        hint = "parallel.0.reduce_every_micro_batch=true"
        assert (hint in "\n".join(advice(est, v.config))) is (not every)  # offered when it would help
    # half the gradients per rank, plus (at the peak, in backward) the unsharded gradients of the block being
    # reduce-scattered: large in a 2-block model, a small share in a real one
    assert grads[False] / 2 <= grads[True] < 0.75 * grads[False], grads
