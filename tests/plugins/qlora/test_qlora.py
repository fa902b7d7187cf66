"""automodel-qlora on CPU: NF4 (bitsandbytes, torchao) base + LoRA through the loop, tracking plain LoRA;
exports that plain peft / transformers load; DDP (bitsandbytes) and FSDP2 (torchao) on 2 gloo processes
against one process; resume; bad input refused at validate."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from automodel.testing import make_config, read_metrics, run_cli, tiny_model

pytest.importorskip("bitsandbytes")

# hidden 128 / kv heads 4: every linear weight splits into NF4 blocks that two FSDP2 ranks can share
MODEL = {"hidden_size": 128, "intermediate_size": 256, "num_key_value_heads": 4}
QLORA = {"name": "qlora", "r": 8, "alpha": 16, "target_modules": "all-linear", "export_merged": True}
SCHED = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": 8, "log_every_steps": 1, "ckpt_every_steps": 4}
CKPT = {"export_hf": True, "save_final": True, "keep_last": 5}
OPTIM = {"name": "adamw", "lr": 2.0e-2}
TWO = {"launcher": {"name": "local", "nproc_per_node": 2}}
PROMPTS = ["reverse abc\n", "reverse hello\ncba", "reverse xyzzy\n"]


def _quantized(model_dir: Path, **kw: Any) -> dict[str, Any]:
    return {"name": "hf_quantized", "pretrained": str(model_dir), "dtype": "float32", **kw}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same adapter training with plain LoRA, QLoRA (bitsandbytes NF4) in one process and under DDP,
    and QLoRA (torchao NF4) with activation checkpointing, the chunked fused CE and packed rows, in one
    process and under FSDP2."""
    root = tmp_path_factory.mktemp("qlora")
    model = tiny_model(root, **MODEL)
    out: dict[str, Any] = {"model": model, "root": root}
    torchao = {"backend": "torchao"}
    composed = {"loss": {"name": "chunked_ce"}, "dataset": _packed(root)}
    ac = {"name": "activation_checkpointing"}
    variants = {
        "lora": ({"name": "hf", "pretrained": str(model)}, {**QLORA, "name": "lora"}, {}),
        "bnb": (_quantized(model), QLORA, {}),
        "bnb_ddp": (_quantized(model), QLORA, {**TWO, "parallel": [{"name": "ddp"}]}),
        "ao": (_quantized(model, **torchao), [QLORA, ac], composed),
        "ao_fsdp2": (_quantized(model, **torchao), [QLORA, ac], {**composed, **TWO, "parallel": [{"name": "fsdp2"}]}),
    }
    for name, (model_cfg, transforms, extra) in variants.items():
        if name.startswith("ao") and not (_has("torchao") and _has("automodel_fsdp2") and _has("automodel_triton_ce")):
            continue
        transforms = transforms if isinstance(transforms, list) else [transforms]
        cfg = make_config(root / name, model, model=model_cfg, transforms=transforms, optimizer=OPTIM,
                          step_scheduler=SCHED, checkpoint=CKPT, **extra)
        proc = run_cli("run", cfg, cwd=root)
        out[name] = root / name / "run"
        out[f"{name}_log"] = proc.stdout + proc.stderr
    return out


def _packed(root: Path) -> dict[str, Any]:
    from automodel.testing import write_task_data

    data = write_task_data(root / "packed.jsonl")
    return {"name": "instruction", "path": str(data), "prompt": "question", "response": "answer",
            "prompt_template": "{prompt}\n", "packing": True, "max_length": 64}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def _logits(model: Any, tok: Any) -> torch.Tensor:
    model.eval()
    return model(**tok(PROMPTS, return_tensors="pt", padding=True)).logits.float()


def _base(model_dir: Path, quantized: bool = False) -> Any:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not quantized:
        return AutoModelForCausalLM.from_pretrained(model_dir)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=q, dtype=torch.float32, device_map="cpu")


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _same_losses(got: list[dict], want: list[dict], rel: float = 1e-5) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=rel), (g["step"], g["loss"], w["loss"])
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=100 * rel), (g["step"], g["grad_norm"], w["grad_norm"])


# --------------------------------------------------------------------------------------------------
# Training and accuracy against plain LoRA
# --------------------------------------------------------------------------------------------------


def test_plugin_registers_loader_and_transform() -> None:
    from automodel.plugins import load_plugins

    registry = load_plugins().registry
    assert registry.get("model_loaders", "hf_quantized").plugin == registry.get("model_transforms", "qlora").plugin
    assert "qlora" in registry.get("model_loaders", "hf_quantized").plugin


def test_qlora_tracks_plain_lora(runs: dict[str, Any]) -> None:
    """The quantized base starts close to (not equal to) the full-precision one, and the QLoRA loss curve
    ends within a few percent of plain LoRA's on the same data and steps."""
    lora, qlora = ([m["loss"] for m in read_metrics(runs[n])] for n in ("lora", "bnb"))
    assert qlora[0] != lora[0], "the base was not quantized"
    assert abs(qlora[0] - lora[0]) < 0.02 * lora[0], (qlora[0], lora[0])
    assert sum(qlora[-3:]) / 3 < sum(qlora[:3]) / 3 - 0.1, qlora  # it learns
    assert abs(qlora[-1] - lora[-1]) < 0.05 * lora[-1], (qlora, lora)
    log = runs["bnb_log"]
    assert "hf_quantized: 4-bit NF4 with double quantization (bitsandbytes, compute in float32) on 14 linear layers" in log


def test_torchao_with_checkpointing_fused_ce_and_packing_trains(runs: dict[str, Any]) -> None:
    """torchao NF4 + activation checkpointing + chunked fused CE + packed rows: the loss falls."""
    if "ao" not in runs:
        pytest.skip("torchao, automodel-fsdp2 or automodel-triton-ce is not installed")
    losses = [m["loss"] for m in read_metrics(runs["ao"])]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    log = runs["ao_log"]
    assert "4-bit NF4 with double quantization (torchao" in log and "activation checkpointing: 2" in log, log[-3000:]


def test_adapter_loads_with_plain_peft(runs: dict[str, Any]) -> None:
    """The exported adapter loads with plain peft on the original base (its base_model_name_or_path) and
    on the base quantized again the same way; the latter is the trained model exactly, the former
    differs by the NF4 rounding of the base only."""
    from peft import PeftModel

    hf = runs["bnb"] / "hf"
    config = json.loads((hf / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == runs["model"]
    assert not any("base_layer" in k or "absmax" in k for k in _safetensors(hf / "adapter_model.safetensors"))
    tok = _tokenizer(hf)
    on_original = _logits(PeftModel.from_pretrained(_base(runs["model"]), hf), tok)
    on_quantized = _logits(PeftModel.from_pretrained(_base(runs["model"], quantized=True), hf), tok)
    merged = _logits(_merged(runs["bnb"]), tok)
    torch.testing.assert_close(merged, on_quantized, rtol=1e-4, atol=5e-4)  # what training computed (up to
    # the order of float sums: bitsandbytes fuses dequantize + matmul on CPU)
    gap = (on_original - on_quantized).abs().max().item()
    assert 1e-4 < gap < 0.5, gap
    assert not torch.allclose(on_original, _logits(_base(runs["model"]), tok), atol=1e-2)  # the adapter matters


def _merged(run: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(run / "hf" / "merged")


def test_merged_export_is_a_plain_dequantized_model(runs: dict[str, Any]) -> None:
    """hf/merged: no quantization_config, float32 (the loader's dtype), every original weight; a quantized
    layer holds exactly dequantize(NF4(W)) + scale * B A."""
    import bitsandbytes.functional as bnbf

    merged_dir = runs["bnb"] / "hf" / "merged"
    config = json.loads((merged_dir / "config.json").read_text())
    assert "quantization_config" not in config
    weights = _safetensors(merged_dir / "model.safetensors")
    original = _safetensors(runs["model"] / "model.safetensors")
    adapter = _safetensors(runs["bnb"] / "hf" / "adapter_model.safetensors")
    assert set(weights) == set(original)
    assert all(v.dtype == torch.float32 for v in weights.values())
    name = "model.layers.0.self_attn.q_proj"
    a, b = (adapter[f"base_model.model.{name}.lora_{x}.weight"] for x in ("A", "B"))
    w = original[f"{name}.weight"]
    packed, state = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    dequantized = bnbf.dequantize_4bit(packed, state)
    scale = QLORA["alpha"] / QLORA["r"]
    torch.testing.assert_close(weights[f"{name}.weight"], dequantized + scale * b @ a, rtol=1e-5, atol=1e-5)
    error = (dequantized - w).norm() / w.norm()
    assert 0.01 < error < 0.2, error  # NF4 rounding: present, and of the expected size
    assert torch.equal(weights["model.norm.weight"], original["model.norm.weight"])  # unquantized: as loaded


def test_resume_continues_the_same_curve(runs: dict[str, Any]) -> None:
    """A step-4 checkpoint of the quantized run resumes into steps 5-8 of the uninterrupted run (the base
    is quantized again from pretrained; adapters, optimizer and data position come from the checkpoint)."""
    root = runs["root"] / "resumed"
    ckpt = runs["bnb"] / "checkpoints" / f"step_{SCHED['ckpt_every_steps']}"
    cfg = make_config(root, runs["model"], model=_quantized(runs["model"]), transforms=[QLORA], optimizer=OPTIM,
                      step_scheduler=SCHED, checkpoint={**CKPT, "export_hf": False, "resume": str(ckpt)})
    run_cli("run", cfg, cwd=root)
    want = [m for m in read_metrics(runs["bnb"]) if m["step"] > SCHED["ckpt_every_steps"]]
    _same_losses(read_metrics(root / "run"), want)
    keys = _checkpoint_keys(ckpt)
    assert "model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in keys
    assert "model.model.norm.weight" in keys
    assert not any("base_layer.weight" in k for k in keys), sorted(keys)[:20]  # the frozen 4-bit base is left out


def _checkpoint_keys(path: Path) -> set[str]:
    import torch.distributed.checkpoint as dcp

    return set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def test_export_command_rebuilds_the_quantized_model(runs: dict[str, Any], tmp_path: Path) -> None:
    ckpt = runs["bnb"] / "checkpoints" / f"step_{SCHED['max_steps']}"
    run_cli("export", ckpt, tmp_path / "out")
    got, want = (_safetensors(d / "adapter_model.safetensors") for d in (tmp_path / "out", runs["bnb"] / "hf"))
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert (tmp_path / "out" / "merged" / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# Two processes
# --------------------------------------------------------------------------------------------------


def test_ddp_two_processes_match_one(runs: dict[str, Any]) -> None:
    """bitsandbytes NF4 under DDP: each rank holds the whole quantized base, adapters' gradients averaged."""
    _same_losses(read_metrics(runs["bnb_ddp"]), read_metrics(runs["bnb"]))
    got, want = (_safetensors(runs[n] / "hf" / "adapter_model.safetensors") for n in ("bnb_ddp", "bnb"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


def test_fsdp2_shards_torchao_nf4_and_matches_one_process(runs: dict[str, Any]) -> None:
    """torchao NF4 under FSDP2: the 4-bit weights themselves are sharded (NF4Tensor's all-gather), the
    losses and the exported adapter and merged model equal one process's."""
    if "ao_fsdp2" not in runs:
        pytest.skip("torchao, automodel-fsdp2 or automodel-triton-ce is not installed")
    _same_losses(read_metrics(runs["ao_fsdp2"]), read_metrics(runs["ao"]))
    for f in ("adapter_model.safetensors", "merged/model.safetensors"):
        got, want = (_safetensors(runs[n] / "hf" / f) for n in ("ao_fsdp2", "ao"))
        assert set(got) == set(want)
        for k in want:  # 8 steps at lr 2e-2 after gradient reductions in another order: ~1e-5 apart
            torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-4)
    assert "fsdp2: 2 blocks + root sharded" in runs["ao_fsdp2_log"]


def test_fsdp2_checkpoint_exports_in_one_process(runs: dict[str, Any], tmp_path: Path) -> None:
    """``automodel export`` of the 2-process FSDP2 (torchao) checkpoint, in one process: the same adapter."""
    if "ao_fsdp2" not in runs:
        pytest.skip("torchao, automodel-fsdp2 or automodel-triton-ce is not installed")
    run_cli("export", runs["ao_fsdp2"] / "checkpoints" / f"step_{SCHED['max_steps']}", tmp_path / "out", "--adapter-only")
    got, want = (_safetensors(d / "adapter_model.safetensors") for d in (tmp_path / "out", runs["ao_fsdp2"] / "hf"))
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Bad input, refused before anything loads
# --------------------------------------------------------------------------------------------------


def _validate(cfg: dict[str, Any]) -> str:
    """The ConfigError message of validating ``cfg`` in process ('' when valid)."""
    from automodel.config import validate
    from automodel.errors import ConfigError
    from automodel.plugins import load_plugins

    try:
        validate(cfg, load_plugins())
    except ConfigError as e:
        return str(e)
    return ""


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("qlora_validate")
    model = tiny_model(root)
    return yaml.safe_load(make_config(root, model, model=_quantized(model), transforms=[QLORA]).read_text())


def _with(cfg: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {**cfg, **sections}


def test_valid_config_passes(base_cfg: dict[str, Any]) -> None:
    assert _validate(base_cfg) == ""


def test_already_quantized_base_is_refused(base_cfg: dict[str, Any], tmp_path: Path) -> None:
    gptq = tmp_path / "gptq-model"
    shutil.copytree(base_cfg["model"]["pretrained"], gptq)
    config = json.loads((gptq / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (gptq / "config.json").write_text(json.dumps(config))
    err = _validate(_with(base_cfg, model={**base_cfg["model"], "pretrained": str(gptq)}))
    assert "model.pretrained: the base is already quantized (gptq" in err, err
    assert "original (unquantized) checkpoint" in err


def test_target_that_is_not_a_linear_layer_is_refused(base_cfg: dict[str, Any]) -> None:
    err = _validate(_with(base_cfg, transforms=[{**QLORA, "target_modules": ["q_proj", "input_layernorm"]}]))
    assert "transforms.0.target_modules:" in err and "not linear layers" in err, err
    assert "input_layernorm: LlamaRMSNorm" in err and "down_proj" in err.split("linear layers:")[-1], err


def test_backend_not_installed_is_refused(base_cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what find_spec sees when it is not installed
    err = _validate(base_cfg)
    assert "model.backend: 4-bit quantization with bitsandbytes needs bitsandbytes, which is not installed" in err, err
    assert "pip install 'automodel-qlora[bitsandbytes]'" in err


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"parallel": [{"name": "fsdp2"}], **TWO}, "fsdp2 does not shard bitsandbytes' 4-/8-bit weights correctly"),
        ({"parallel": [{"name": "tp", "size": 2}], **TWO}, "tp cannot split quantized weights"),
        ({"transforms": [{**QLORA, "name": "lora"}]}, "a quantized base needs the qlora transform, not lora"),
        ({"transforms": []}, "a quantized base is frozen: without adapters nothing trains"),
        ({"model": {"bits": 8, "backend": "torchao"}}, "model.bits: torchao quantizes to 4 bits, not 8"),
        ({"model": {"bits": 8, "quant_type": "fp4"}}, "model.quant_type: applies to 4-bit only"),
        ({"model": {"backend": "torchao", "compute_dtype": "bfloat16"}}, "model.compute_dtype: torchao's NF4 matmul runs in the activations' dtype"),
        ({"model": {"bits": 3}}, "model.bits:"),
    ],
)
def test_bad_combinations_fail_at_validate(base_cfg: dict[str, Any], change: dict[str, Any], expect: str) -> None:
    if "model" in change:
        change = {"model": {**base_cfg["model"], **change["model"]}}
    if "tp" in str(change) and not _has("automodel_tp"):
        pytest.skip("automodel-tp is not installed")
    err = _validate(_with(base_cfg, **change))
    assert expect in err, err


def test_qlora_without_a_quantized_loader_is_refused(base_cfg: dict[str, Any]) -> None:
    err = _validate(_with(base_cfg, model={"name": "hf", "pretrained": base_cfg["model"]["pretrained"]}))
    assert "transforms.0: qlora trains adapters on a quantized base, but model.name is 'hf'" in err, err


def test_cli_reports_bad_input_on_one_screen(base_cfg: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(base_cfg, parallel=[{"name": "fsdp2"}], **TWO)))
    proc = run_cli("validate", path, check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode == 2, err
    assert "use backend: torchao" in err and "Traceback" not in err
