"""automodel-lora on CPU: training, PEFT adapter / merged export, DDP and FSDP2 against one process, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from automodel.testing import make_config, read_metrics, run_cli, tiny_model

LORA = {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "export_merged": True}
# Global batch 8 = 2 sequences x 4 micro-batches in one process, x 2 micro-batches x 2 ranks in two.
SCHED = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": 8, "log_every_steps": 1, "ckpt_every_steps": 4}
CKPT = {"export_hf": True, "save_final": True, "keep_last": 5}
TWO = {"launcher": {"name": "local", "nproc_per_node": 2}}
PROMPTS = ["reverse abc\n", "reverse hello\ncba", "reverse xyzzy\n"]
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same LoRA run in one process, under DDP and under FSDP2 on two processes."""
    root = tmp_path_factory.mktemp("lora")
    model = tiny_model(root)
    out: dict[str, Any] = {"model": model, "root": root}
    variants = {"single": {}, "ddp": {**TWO, "parallel": [{"name": "ddp"}]}, "fsdp2": {**TWO, "parallel": [{"name": "fsdp2"}]}}
    for name, extra in variants.items():
        cfg = make_config(root / name, model, transforms=[LORA], optimizer={"name": "adamw", "lr": 2.0e-2},
                          step_scheduler=SCHED, checkpoint=CKPT, **extra)
        proc = run_cli("run", cfg, cwd=root)
        out[name] = root / name / "run"
        out[f"{name}_log"] = proc.stdout + proc.stderr
    return out


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    return tokenizer(PROMPTS, return_tensors="pt", padding=True)


@torch.no_grad()
def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    model.eval()
    return model(**_batch(tokenizer)).logits


def _base(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _training_model(run_dir: Path, step: int) -> Any:
    """The model of ``run_dir`` as it was trained (tiny model + lora transform), loaded from its checkpoint."""
    import torch.distributed.checkpoint as dcp
    from automodel.context import Context
    from automodel_lora.transform import LoRA
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    spec = {k: v for k, v in cfg["transforms"][0].items() if k != "name"}
    model = LoRA(**spec).apply(_base(Path(cfg["model"]["pretrained"])), Context(config=cfg))
    sd = get_model_state_dict(model)
    dcp.load({"model": sd}, checkpoint_id=str(run_dir / "checkpoints" / f"step_{step}"))
    set_model_state_dict(model, sd)
    return model


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_losses(got: list[dict], want: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5), (g["step"], g["loss"], w["loss"])
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4), (g["step"], g["grad_norm"], w["grad_norm"])


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_plugin_is_installed_and_listed() -> None:
    listing = json.loads(run_cli("plugins", "--json").stdout)
    entry = next(p for p in listing if p["name"] == "lora")
    assert entry["registers"]["model_transforms"] == ["lora"]


def test_adapter_trains_and_loss_falls(runs: dict[str, Any]) -> None:
    losses = [m["loss"] for m in read_metrics(runs["single"])]
    assert len(losses) == SCHED["max_steps"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses


def test_only_adapter_parameters_change(runs: dict[str, Any]) -> None:
    trained = _training_model(runs["single"], SCHED["max_steps"])
    original = _base(runs["model"]).state_dict()
    adapters, frozen = 0, 0
    for name, p in trained.named_parameters():
        if "lora_" in name:
            adapters += 1
            assert p.requires_grad, name
            continue
        frozen += 1
        assert not p.requires_grad, name
        torch.testing.assert_close(p.detach(), original[name.replace(".base_layer", "")], rtol=0, atol=0, msg=name)
    assert adapters == 2 * 3 * 2 and frozen == len(original)  # A and B of 3 layer kinds in 2 blocks
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert all(float(p.detach().abs().max()) > 0 for p in lora_b)  # B starts at zero: it was trained


def test_peft_loads_the_adapter_with_the_training_logits(runs: dict[str, Any]) -> None:
    from peft import PeftModel

    hf = runs["single"] / "hf"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= {p.name for p in hf.iterdir()}
    assert not any(k.endswith(("q_proj.weight", "base_layer.weight")) for k in _safetensors(hf / "adapter_model.safetensors"))
    tok = _tokenizer(hf)
    loaded = PeftModel.from_pretrained(_base(runs["model"]), hf)
    want = _logits(_training_model(runs["single"], SCHED["max_steps"]), tok)
    torch.testing.assert_close(_logits(loaded, tok), want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(_base(runs["model"]), tok), want, atol=1e-3)  # the adapter matters


def test_merged_export_equals_adapter_on_base(runs: dict[str, Any]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf = runs["single"] / "hf"
    merged = AutoModelForCausalLM.from_pretrained(hf / "merged")
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    tok = _tokenizer(hf / "merged")
    adapter_on_base = PeftModel.from_pretrained(_base(runs["model"]), hf)
    torch.testing.assert_close(_logits(merged, tok), _logits(adapter_on_base, tok), rtol=1e-5, atol=1e-5)


def test_ddp_two_processes_match_one(runs: dict[str, Any]) -> None:
    _assert_same_losses(read_metrics(runs["ddp"]), read_metrics(runs["single"]))
    got, want = (_safetensors(runs[n] / "hf" / "adapter_model.safetensors") for n in ("ddp", "single"))
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_fsdp2_two_processes_match_one(runs: dict[str, Any]) -> None:
    """Frozen base weights and trainable adapters share FSDP2 blocks; export gathers the DTensors."""
    pytest.importorskip("automodel_fsdp2")
    _assert_same_losses(read_metrics(runs["fsdp2"]), read_metrics(runs["single"]))
    got, want = (_safetensors(runs[n] / "hf" / "adapter_model.safetensors") for n in ("fsdp2", "single"))
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    got, want = (_safetensors(runs[n] / "hf" / "merged" / "model.safetensors") for n in ("fsdp2", "single"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_fsdp2_meta_init_loads_base_shards_not_the_whole_model(runs: dict[str, Any]) -> None:
    """fsdp2 (meta_init by default) + lora: the LoRA model stays on meta through sharding and the core
    reads each rank's shards of the base files; no rank loads the base model unsharded first."""
    pytest.importorskip("automodel_fsdp2")
    log = runs["fsdp2_log"]
    assert "on the meta device: base weights load sharded, adapters initialized after" in log, log[-3000:]
    assert "unsharded" not in log, log[-3000:]


def test_fsdp2_exports_load_with_peft_and_transformers(runs: dict[str, Any]) -> None:
    """The adapter and merged model of the 2-process FSDP2 run load as they are and give the logits
    of the 1-process run's."""
    pytest.importorskip("automodel_fsdp2")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(runs["single"] / "hf")
    want = _logits(PeftModel.from_pretrained(_base(runs["model"]), runs["single"] / "hf"), tok)
    got = _logits(PeftModel.from_pretrained(_base(runs["model"]), runs["fsdp2"] / "hf"), tok)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    merged = _logits(AutoModelForCausalLM.from_pretrained(runs["fsdp2"] / "hf" / "merged"), tok)
    torch.testing.assert_close(merged, want, rtol=1e-4, atol=1e-4)


def test_fsdp2_meta_init_matches_unsharded_init(runs: dict[str, Any]) -> None:
    """Under torchrun (2 processes, gloo): meta model + lora + fsdp2 + materialize holds exactly the
    weights of the unsharded LoRA model (pretrained and random base; LoRA, DoRA + modules_to_save +
    random A/B, gaussian + rsLoRA), and each rank holds only its shards."""
    pytest.importorskip("automodel_fsdp2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("AUTOMODEL_LAUNCHED", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "lora_dist_checks.py"), str(runs["model"])],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    for case in ("lora", "dora_saved_random_ab", "gaussian_rslora"):
        for base in ("pretrained", "random"):
            assert f"ok {case} {base}" in proc.stdout, proc.stdout[-4000:]


@pytest.mark.parametrize("source", ["single", "fsdp2"])
def test_resume_continues_the_same_curve(runs: dict[str, Any], source: str) -> None:
    """Resume a step-4 checkpoint (of the 1-process run, or of the 2-process FSDP2 run: resharded) in one
    process, in a new run directory: steps 5-8 match the uninterrupted run."""
    root = runs["root"] / f"resumed_{source}"
    ckpt = runs[source] / "checkpoints" / f"step_{SCHED['ckpt_every_steps']}"
    cfg = make_config(root, runs["model"], transforms=[LORA], optimizer={"name": "adamw", "lr": 2.0e-2},
                      step_scheduler=SCHED, checkpoint={**CKPT, "resume": str(ckpt)})
    run_cli("run", cfg, cwd=root)
    want = [m for m in read_metrics(runs["single"]) if m["step"] > SCHED["ckpt_every_steps"]]
    _assert_same_losses(read_metrics(root / "run"), want)


def test_export_command_writes_adapter_and_merged(runs: dict[str, Any], tmp_path: Path) -> None:
    """``automodel export`` rebuilds the LoRA model from the checkpoint: the adapter always, the merged
    model per the run's export_merged or --merged / --adapter-only."""
    ckpt = runs["single"] / "checkpoints" / f"step_{SCHED['max_steps']}"
    out, only = tmp_path / "exported", tmp_path / "adapter_only"
    run_cli("export", ckpt, out)  # the run has export_merged: true
    run_cli("export", ckpt, only, "--adapter-only")
    for d in (out, only):
        got, want = (_safetensors(x / "adapter_model.safetensors") for x in (d, runs["single"] / "hf"))
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    got, want = (_safetensors(x / "merged" / "model.safetensors") for x in (out, runs["single"] / "hf"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    assert not (only / "merged").exists()


def test_unknown_target_module_lists_the_linear_layers(tmp_path: Path) -> None:
    model = tiny_model(tmp_path)
    cfg = make_config(tmp_path, model, transforms=[{"name": "lora", "target_modules": ["q_proj", "qkv_proj"]}])
    proc = run_cli("run", cfg, cwd=tmp_path, check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode == 2, err
    assert "'qkv_proj' matches no module" in err
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"):
        assert name in err.split("linear layers:")[1], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("transforms.0.r=0", "transforms.0.r: must be a positive integer"),
        ("transforms.0.r=eight", "transforms.0.r: expected int"),
        ("transforms.0.dropout=1.5", "transforms.0.dropout: must be in [0, 1)"),
        ("transforms.0.target_modules=[", "transforms.0.target_modules: is not a valid regular expression"),
        ("transforms.0.init_lora_weights=pissa", "transforms.0.init_lora_weights: expected"),
        ("transforms.0.lora_alpha=8", "transforms.0.lora_alpha: unknown key"),
    ],
)
def test_bad_values_fail_before_launch(tmp_path: Path, override: str, expect: str) -> None:
    (tmp_path / "model").mkdir()
    cfg = make_config(tmp_path, tmp_path / "model", transforms=[{"name": "lora"}])
    proc = run_cli("validate", cfg, override, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expect in proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------------
# In-process: target forms, DoRA / rsLoRA / modules_to_save export round trip
# --------------------------------------------------------------------------------------------------


def _apply(model_dir: Path, **kwargs: Any) -> tuple[Any, Any]:
    from automodel.context import Context
    from automodel_lora.transform import LoRA

    transform = LoRA(**kwargs)
    return transform, transform.apply(_base(model_dir), Context(config={"seed": 3}))


def _adapted(model: Any) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}


def test_target_module_forms(tmp_path: Path) -> None:
    model_dir = tiny_model(tmp_path)
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert _adapted(_apply(model_dir)[1]) == linear  # all-linear: every linear layer but lm_head
    assert _adapted(_apply(model_dir, target_modules=r".*\.mlp\.(up|down)_proj")[1]) == {"up_proj", "down_proj"}
    assert _adapted(_apply(model_dir, exclude_modules=["o_proj", "gate_proj"])[1]) == linear - {"o_proj", "gate_proj"}
    assert _adapted(_apply(model_dir, target_modules="v_proj", exclude_modules="k_proj")[1]) == {"v_proj"}  # bare names
    _, model = _apply(model_dir, target_modules=["q_proj"], modules_to_save=["lm_head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "lm_head.modules_to_save" in n for n in trainable), trainable
    from automodel.errors import AutomodelError

    with pytest.raises(AutomodelError, match="matches no module"):
        _apply(model_dir, target_modules=r"layers\.\d+\.attn\.q")
    with pytest.raises(AutomodelError, match="not linear layers"):
        _apply(model_dir, target_modules=["self_attn"])
    # a trainable copy of one half of tied embeddings would untie them (peft then fails at export)
    tied_dir = tiny_model(tmp_path / "tied", tie_word_embeddings=True)
    with pytest.raises(AutomodelError, match="'lm_head' is one half of the model's tied embeddings"):
        _apply(tied_dir, target_modules=["q_proj"], modules_to_save=["lm_head"])


@pytest.mark.parametrize("kwargs", [{"use_dora": True}, {"use_rslora": True, "modules_to_save": ["lm_head"]}])
def test_export_round_trip(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    """Adapters with non-zero B (init_lora_weights: false): PEFT reload and merged model match the model."""
    from automodel.context import Context
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model(tmp_path)
    tok = _tokenizer(model_dir)
    transform, model = _apply(model_dir, r=4, alpha=8, target_modules=["q_proj", "o_proj", "up_proj"],
                              init_lora_weights=False, export_merged=True, **kwargs)
    with torch.no_grad():
        if "modules_to_save" in kwargs:
            model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    want = _logits(model, tok)
    assert not torch.allclose(want, _logits(_base(model_dir), tok), atol=1e-3)
    out = tmp_path / "hf"
    transform.export(model, tok, out, Context(output_dir=tmp_path))
    loaded = PeftModel.from_pretrained(_base(model_dir), out)
    torch.testing.assert_close(_logits(loaded, tok), want, rtol=1e-5, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    torch.testing.assert_close(_logits(merged, tok), want, rtol=1e-4, atol=1e-5)


def test_adapters_do_not_depend_on_the_device_layout(tmp_path: Path) -> None:
    """Adapter init comes from the seed alone (not from the global RNG stream the loader consumed)."""
    model_dir = tiny_model(tmp_path)
    _, a = _apply(model_dir, init_lora_weights=False)
    torch.rand(100)
    _, b = _apply(model_dir, init_lora_weights=False)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("pretrained", [True, False])
def test_meta_model_stays_on_meta_until_materialize(tmp_path: Path, pretrained: bool) -> None:
    """A loader that built the model on meta (meta_init parallelizers): lora adapts it on meta; the
    core's materialize then loads the base weights by their names in the files (``checkpoint_key``),
    or initializes them as for the model without lora, and lora initializes the adapters
    (``init_weights``): the result equals lora applied to the real model."""
    from accelerate import init_empty_weights
    from automodel.context import Context
    from automodel.weights import init_weights, materialize
    from automodel_lora.transform import LoRA
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = tiny_model(tmp_path)
    spec = {"target_modules": ["q_proj", "down_proj"], "modules_to_save": ["lm_head"], "use_dora": True}
    with init_empty_weights(include_buffers=False):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    meta.config.name_or_path = str(model_dir) if pretrained else ""
    transform = LoRA(**spec)
    ctx = Context(config={"seed": 3}, meta_init=True)
    model = transform.apply(meta, ctx)
    assert all(p.is_meta for p in model.parameters())
    assert transform.checkpoint_key("model.layers.0.self_attn.q_proj.base_layer.weight") == "model.layers.0.self_attn.q_proj.weight"
    assert transform.checkpoint_key("model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
    assert transform.checkpoint_key("lm_head.modules_to_save.default.weight") == "lm_head.weight"
    assert transform.checkpoint_key("model.norm.weight") == "model.norm.weight"
    materialize(model, ctx, [transform])
    if pretrained:
        base = _base(model_dir)
    else:
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        init_weights(base, 3)
    want = LoRA(**spec).apply(base, Context(config={"seed": 3}))
    got = model.state_dict()
    assert set(got) == set(want.state_dict())
    for k, v in want.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
    saved = model.lm_head.modules_to_save["default"].weight  # the trained copy starts as the base head
    torch.testing.assert_close(saved, model.lm_head.original_module.weight, rtol=0, atol=0)
    assert float(saved.abs().max()) > 0


def test_run_dir_has_no_full_weights(runs: dict[str, Any]) -> None:
    """The adapter directory is small: no base weights are exported next to it."""
    size = (runs["single"] / "hf" / "adapter_model.safetensors").stat().st_size
    full = sum(p.stat().st_size for p in runs["model"].glob("*.safetensors"))
    assert size < full / 5


# --------------------------------------------------------------------------------------------------
# A loadable base (issue 31)
# --------------------------------------------------------------------------------------------------


def test_adapter_records_its_base_as_an_absolute_path_that_auto_peft_loads(runs: dict[str, Any]) -> None:
    from peft import AutoPeftModelForCausalLM

    hf = runs["single"] / "hf"
    config = json.loads((hf / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(runs["model"].resolve())
    assert oct((hf / "adapter_model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    tok = _tokenizer(hf)
    auto = AutoPeftModelForCausalLM.from_pretrained(hf)  # nothing but the adapter directory
    want = _logits(_training_model(runs["single"], SCHED["max_steps"]), tok)
    torch.testing.assert_close(_logits(auto, tok), want, rtol=1e-5, atol=1e-5)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_base_built_from_config_is_refused_before_launch_unless_allowed(tmp_path: Path) -> None:
    model_dir = tiny_model(tmp_path / "model")
    cfg = make_config(tmp_path, model_dir, transforms=[{"name": "lora", "r": 4}])
    config = json.loads((model_dir / "config.json").read_text())
    from_config = ["~model.pretrained", f"model.tokenizer={model_dir}",
                   f"model.config={{model_type: llama, vocab_size: {config['vocab_size']}, hidden_size: 32}}"]
    out = run_cli("validate", cfg, *from_config, cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "transforms.0: the base model is built from model.config (random weights) and LoRA freezes it" in out.stderr
    assert "model.pretrained=<dir or hub id> '~model.config' '~model.tokenizer'" in out.stderr
    assert run_cli("validate", cfg, *from_config, "transforms.0.allow_random_base=true", cwd=tmp_path).returncode == 0
    assert run_cli("validate", cfg, cwd=tmp_path).returncode == 0  # loaded from a directory: fine


def test_a_random_base_is_exported_next_to_the_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A base that was not loaded (built from a config; the direct API does not validate): a warning at
    apply, and the export writes the base to <out>/base, which the adapter names: peft loads the pair."""
    from automodel.context import Context
    from automodel_lora.transform import LoRA
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = tiny_model(tmp_path / "model")
    tok = _tokenizer(model_dir)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    base.config.name_or_path = ""  # as the hf loader builds it from model.config (AutoConfig.for_model)
    transform = LoRA(r=4, alpha=8, init_lora_weights=False)
    model = transform.apply(base, Context(config={"seed": 0}))
    assert "warning: lora: the base model was not loaded from a path or hub id" in capsys.readouterr().out
    want = _logits(model, tok)
    out = tmp_path / "hf"
    transform.export(model, tok, out, Context(output_dir=tmp_path))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base").resolve())
    assert (out / "base" / "config.json").exists() and not list((out / "base").glob("adapter_*"))
    torch.testing.assert_close(_logits(AutoPeftModelForCausalLM.from_pretrained(out), tok), want, rtol=1e-5, atol=1e-5)
