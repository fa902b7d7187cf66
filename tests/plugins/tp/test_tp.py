"""automodel-tp on CPU: 2 gloo processes (4 for TP x FSDP2) against a single-process run of the same
global batch: same losses, same gradient norms, same trained weights in the Hugging Face export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from automodel.testing import make_config, read_metrics, run_cli, tiny_model

SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 4, "log_every_steps": 1}
CKPT = {"export_hf": True, "save_final": False}
LORA = [{"name": "lora", "r": 4, "alpha": 8}]


def _tp(nproc: int = 2, **tp_args: object) -> dict:
    return {"parallel": [{"name": "tp", "size": 2, **tp_args}], "launcher": {"name": "local", "nproc_per_node": nproc}}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tp")


@pytest.fixture(scope="module")
def model_dir(root: Path) -> Path:
    return tiny_model(root)


def _run(root: Path, name: str, model_dir: Path, **sections: object) -> tuple[Path, str]:
    cfg = make_config(root / name, model_dir, step_scheduler=SCHED, checkpoint=CKPT, **sections)
    proc = run_cli("run", cfg, cwd=root)
    return root / name / "run", proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def reference(root: Path, model_dir: Path) -> Path:
    return _run(root, "single", model_dir)[0]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _assert_same_run(got: Path, want: Path) -> None:
    g, w = read_metrics(got), read_metrics(want)
    assert [m["step"] for m in g] == [m["step"] for m in w] and len(g) == SCHED["max_steps"]
    for a, b in zip(g, w):
        assert a["label_tokens"] == b["label_tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), (a["step"], a["grad_norm"], b["grad_norm"])
    gw, ww = _weights(got / "hf"), _weights(want / "hf")
    assert set(gw) == set(ww)
    for k in ww:
        torch.testing.assert_close(gw[k], ww[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


# -- installation, plans, validation (no training) ---------------------------------------------------


def test_plugin_is_installed_and_listed() -> None:
    listing = json.loads(run_cli("plugins", "--json").stdout)
    entry = next(p for p in listing if p["name"] == "tp")
    assert entry["distribution"] == "automodel-tp" and entry["error"] is None
    assert entry["registers"]["parallelizers"] == ["tp"]


def test_style_names_match_the_style_table() -> None:
    from automodel_tp.plans import STYLES
    from automodel_tp.styles import STYLE_NAMES

    assert set(STYLE_NAMES) == set(STYLES)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_plan_from_transformers_with_sequence_loss_parallel_and_overrides(model_type: str) -> None:
    from automodel_tp.plans import resolve
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    model = AutoModelForCausalLM.from_config(config)
    plan, source, unused = resolve(model, "lm_head", False, False, None)
    assert source == "transformers _tp_plan" and not unused
    assert plan["model.layers.1.self_attn.q_proj"] == "colwise" and plan["model.layers.1.mlp.down_proj"] == "rowwise"
    assert plan["model.embed_tokens"] == "embedding_rowwise" and plan["lm_head"] == "colwise_gather_output"
    if model_type == "qwen3":
        assert plan["model.layers.0.self_attn.q_norm"] == "replicated_with_grad_allreduce"

    plan, _, unused = resolve(model, "lm_head", True, True, {"model.layers.*.mlp.*": "replicate", "nope.*": "colwise"})
    assert unused == ["nope.*"]
    assert plan["lm_head"] == "colwise_sequence_input_loss_parallel"
    assert plan["model.layers.0"] == "shard_sequence" and "model.layers.1" not in plan
    assert plan["model.layers.1.input_layernorm"] == "sequence_parallel" and plan["model.norm"] == "sequence_parallel"
    assert plan["model.layers.1.self_attn.o_proj"] == "rowwise_sequence_output"
    assert plan["model.layers.1.mlp.down_proj"] == "replicate"  # the override beats the sequence plan
    assert plan["model.layers.1.mlp"] == "gather_sequence"

    model._tp_plan = {}  # no plan from transformers: the plugin's Llama-family plan
    plan, source, _ = resolve(model, "lm_head", False, True, None)
    assert source == "automodel-tp llama plan" and plan["model.layers.0.self_attn.k_proj"] == "colwise"
    assert plan["lm_head"] == "colwise_loss_parallel"


def test_indivisible_heads_is_a_config_error_before_launch(root: Path) -> None:
    bad = tiny_model(root / "bad", num_attention_heads=3, num_key_value_heads=3, hidden_size=48)
    cfg = make_config(root / "bad", bad, **_tp())
    proc = run_cli("run", cfg, cwd=root, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "num_attention_heads (3) divisible by 2" in out and "num_key_value_heads (3) divisible by 2" in out
    assert "launching" not in out and "process(es)" not in out  # no worker started
    assert not (root / "bad" / "run" / "metrics.jsonl").exists()

    # the same from an inline model config, and with `automodel validate`
    inline = make_config(root / "bad", None, name="inline.yaml", model={
        "name": "hf", "tokenizer": str(bad), "config": {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 1,
                                                          "hidden_size": 64, "vocab_size": 48}}, **_tp())
    proc = run_cli("validate", inline, cwd=root, check=False)
    assert proc.returncode == 2 and "num_key_value_heads (1) divisible by 2" in proc.stdout + proc.stderr

    # size left open: the check uses the size the mesh gives tp (all 2 processes)
    open_size = make_config(root / "bad", bad, name="open.yaml", parallel=[{"name": "tp"}],
                            launcher={"name": "local", "nproc_per_node": 2})
    proc = run_cli("validate", open_size, cwd=root, check=False)
    assert proc.returncode == 2 and "num_attention_heads (3) divisible by 2" in proc.stdout + proc.stderr


def test_unknown_style_is_a_config_error(root: Path, model_dir: Path) -> None:
    cfg = make_config(root / "style", model_dir, **_tp(plan={"lm_head": "colwize"}))
    proc = run_cli("validate", cfg, cwd=root, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "colwize" in out and "colwise_gather_output" in out, out


# -- training against a single process ----------------------------------------------------------------


def test_tp_with_plan_override_matches_single_process(root: Path, model_dir: Path, reference: Path) -> None:
    run, out = _run(root, "tp", model_dir, **_tp(plan={"model.layers.1.mlp.*": "replicate"}))
    _assert_same_run(run, reference)
    # the override took effect: layer 1's three MLP projections stay whole, the rest is sharded
    assert "tp: 2 ranks, plan from transformers _tp_plan + overrides" in out
    assert "replicate x3" in out and "colwise x8" in out and "rowwise x3" in out, out
    from transformers import AutoModelForCausalLM  # the export of a TP-sharded model loads as is

    loaded = AutoModelForCausalLM.from_pretrained(run / "hf")
    want = _weights(reference / "hf")
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=1e-4, atol=1e-5)


def test_sequence_and_loss_parallel_match_single_process(root: Path, model_dir: Path, reference: Path) -> None:
    # with meta_init: the model is built on meta, sharded, then each rank loads its shards
    run, out = _run(root, "tp_sp", model_dir, **_tp(sequence_parallel=True, loss_parallel=True, meta_init=True))
    assert "sequence parallel, loss parallel" in out and "colwise_sequence_input_loss_parallel x1" in out
    _assert_same_run(run, reference)


def test_tp_x_fsdp2_2d_mesh_matches_single_process(root: Path, model_dir: Path, reference: Path) -> None:
    pytest.importorskip("automodel_fsdp2", reason="the 2-D case needs the automodel-fsdp2 plugin")
    run, out = _run(root, "tp_fsdp2", model_dir, parallel=[{"name": "tp", "size": 2, "sequence_parallel": True,
                                                            "loss_parallel": True}, {"name": "fsdp2"}],
                    launcher={"name": "local", "nproc_per_node": 4})
    assert "mesh dp_shard=2 x tp=2" in out
    _assert_same_run(run, reference)


def test_tp_with_lora_matches_single_process(root: Path, model_dir: Path) -> None:
    pytest.importorskip("automodel_lora", reason="LoRA composition needs the automodel-lora plugin")
    want, _ = _run(root, "lora", model_dir, transforms=LORA)
    got, _ = _run(root, "tp_lora", model_dir, transforms=LORA, **_tp(sequence_parallel=True, loss_parallel=True))
    _assert_same_run(got, want)  # compares the exported adapter weights
    assert (got / "hf" / "adapter_config.json").exists()


# -- gradients, model by model (one torchrun, several cases) ----------------------------------------------

CASES = {
    "llama,0,0,0,10,0,0": "plain TP",
    "qwen3,0,0,0,10,0,0": "Qwen3: per-head q_norm/k_norm (replicated_with_grad_allreduce)",
    "mistral,1,1,1,9,1,0": "tied embeddings, SP + loss parallel, odd length (SP padding), attention mask",
    "qwen2,1,1,0,10,0,1": "LoRA under SP + loss parallel: frozen weights stay frozen",
}


def test_gradients_match_one_process_per_model_and_option(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("tp_dist_check.py")), str(out), *CASES]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    for case, what in CASES.items():
        r = results[case]
        assert r["losses"][0] == pytest.approx(r["losses"][1], rel=1e-5), (what, r["losses"])
        assert r["all_dtensor"] and r["tie_kept"], what
        assert all(a == b for a, b in r["trainable"].values()), (what, r["trainable"])
        bad = {k: v for k, v in r["grad_diff"].items() if v is not None and v > 1e-5}
        assert not bad, (what, bad)
        assert any(v is not None for v in r["grad_diff"].values())
    lora = results["qwen2,1,1,0,10,0,1"]
    assert sum(v is not None for v in lora["grad_diff"].values()) == 2 * 7 * 2  # only the adapters train
