"""automodel-vlm end to end through the CLI: a tiny Llava trained on one process and on two (fsdp2 over
gloo, same losses), with activation checkpointing and a frozen vision tower; resume; the export loaded
by plain transformers; LoRA on the language model and its adapter loaded by peft."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from automodel.testing import read_metrics, run_cli
from automodel_vlm.testing import tiny_vlm, write_shapes

SCHED = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": 4, "log_every_steps": 1, "ckpt_every_steps": 2,
         "val_every_steps": 4}
FSDP2 = {"parallel": [{"name": "fsdp2"}], "launcher": {"name": "local", "nproc_per_node": 2}}


def _config(root: Path, name: str, model_dir: Path, data: Path, **sections) -> Path:
    cfg = {
        "seed": 7,
        "output_dir": str(root / name),
        "model": {"name": "hf_vlm", "pretrained": str(model_dir), "freeze_vision_tower": True},
        "dataset": {"name": "image_chat", "path": str(data)},
        "validation_dataset": {"name": "image_chat", "path": str(data), "limit": 4},
        "transforms": [{"name": "activation_checkpointing"}],
        "optimizer": {"name": "adamw", "lr": 3.0e-3},
        "step_scheduler": SCHED,
        "checkpoint": {"export_hf": True, "save_final": True, "keep_last": 5},
        "loggers": [{"name": "jsonl"}],
        **sections,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm")
    out = {"root": root, "model": tiny_vlm(root), "data": write_shapes(root / "data", n=16)}
    for name, extra in (("single", {}), ("fsdp2", FSDP2)):
        out[name + "_cfg"] = _config(root, name, out["model"], out["data"], **extra)
        out[name + "_log"] = Path(run_cli("run", out[name + "_cfg"], cwd=root).stdout)
        out[name] = root / name
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return {k: v.detach() for k, v in AutoModelForImageTextToText.from_pretrained(path).state_dict().items()}


def _same_metrics(got: list[dict], want: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for g, w in zip(got, want):
        assert g["label_tokens"] == w["label_tokens"], (g, w)
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5), (g["step"], g["loss"], w["loss"])
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4), (g["step"], g["grad_norm"], w["grad_norm"])


def test_plugin_listed_without_importing_torch() -> None:
    listing = json.loads(run_cli("plugins", "--json").stdout)
    entry = next(p for p in listing if p["name"] == "vlm")
    assert entry["error"] is None
    assert entry["registers"]["model_loaders"] == ["hf_vlm"] and entry["registers"]["datasets"] == ["image_chat"]
    subprocess.run([sys.executable, "-c", "import sys, automodel_vlm; assert 'torch' not in sys.modules"], check=True)


def test_fsdp2_two_processes_match_one(runs: dict[str, Path]) -> None:
    single, sharded = read_metrics(runs["single"]), read_metrics(runs["fsdp2"])
    assert len(single) == SCHED["max_steps"] and single[-1]["loss"] < single[0]["loss"]
    _same_metrics(sharded, single)
    val = [json.loads(x) for x in (runs["single"] / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert val and val[-1]["val_tokens"] > 0  # validation batches go through the dataset's collate too
    a, b = _weights(runs["fsdp2"] / "hf"), _weights(runs["single"] / "hf")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    # the vision tower was frozen, the language model trained
    start = _weights(runs["model"])
    vision = [k for k in start if ".vision_tower." in k]
    assert vision and all(torch.equal(start[k], b[k]) for k in vision)
    assert not torch.equal(start["model.language_model.layers.0.mlp.up_proj.weight"],
                           b["model.language_model.layers.0.mlp.up_proj.weight"])


def test_export_loads_with_plain_transformers(runs: dict[str, Path]) -> None:
    from automodel_vlm.data import load_image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    hf = runs["single"] / "hf"
    processor = AutoProcessor.from_pretrained(hf)
    model = AutoModelForImageTextToText.from_pretrained(hf).eval()
    record = json.loads(runs["data"].read_text().splitlines()[0])
    image = load_image(str(runs["data"].parent / record["images"][0]), "")
    prompt = processor.apply_chat_template(record["messages"][:1], add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[image]], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_resume_continues_the_same_curve(runs: dict[str, Path]) -> None:
    root = runs["root"]
    step2 = runs["single"] / "checkpoints" / "step_2"
    run_cli("run", runs["single_cfg"], f"output_dir={root / 'resumed'}", f"checkpoint.resume={step2}", cwd=root)
    resumed = read_metrics(root / "resumed")
    assert [m["step"] for m in resumed] == [3, 4]
    _same_metrics(resumed, read_metrics(runs["single"])[2:])


def test_lora_adapter_on_the_language_model_loads_in_peft(runs: dict[str, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    root = runs["root"]
    cfg = _config(root, "lora", runs["model"], runs["data"], transforms=[{"name": "lora", "r": 4, "alpha": 8}],
                  optimizer={"name": "adamw", "lr": 1.0e-2},
                  step_scheduler={**SCHED, "max_steps": 2, "ckpt_every_steps": None, "val_every_steps": None})
    log = run_cli("run", cfg, cwd=root).stdout
    assert "lora: LoRA r=4" in log
    adapter = root / "lora" / "hf"
    keys = json.loads((adapter / "adapter_config.json").read_text())
    assert keys["exclude_modules"] and (adapter / "adapter_model.safetensors").exists()
    base = AutoModelForImageTextToText.from_pretrained(runs["model"]).eval()
    ids = torch.tensor([[1, 25, 42, 27, 12, 5, 24]])
    before = base(input_ids=ids).logits
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    adapted = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert adapted and all(".language_model." in n for n in adapted)  # none on the vision tower or projector
    assert not torch.allclose(peft_model(input_ids=ids).logits, before)  # the trained adapter changes the output


def test_example_smoke(tmp_path: Path) -> None:
    """examples/vlm: its config trains (2 steps) and generate.py reads the export with plain transformers."""
    import importlib.util

    example = Path(__file__).resolve().parents[3] / "examples" / "vlm"
    run_cli("run", example / "config.yaml", f"output_dir={tmp_path / 'run'}", "step_scheduler.max_steps=2",
            "step_scheduler.global_batch_size=4", "step_scheduler.local_batch_size=4", "~validation_dataset", "step_scheduler.val_every_steps=null",
            "step_scheduler.log_every_steps=1",
            "checkpoint.save_final=false", cwd=tmp_path)
    assert len(read_metrics(tmp_path / "run")) == 2
    spec = importlib.util.spec_from_file_location("vlm_generate", example / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert 0.0 <= generate.main(str(tmp_path / "run" / "hf"), limit=3) <= 1.0
