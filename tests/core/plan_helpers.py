"""Configs shared by tests/core/test_plan*.py."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = yaml.safe_load((ROOT / "examples/quickstart/config.yaml").read_text())


def quickstart_mock(tmp_path: Path, **extra) -> Path:
    """The quickstart model (architecture and tokenizer) on the mock dataset: fixed 64-token rows."""
    cfg = {
        "seed": 1234, "output_dir": str(tmp_path / "run"),
        "model": {**QUICKSTART["model"], "tokenizer": str(ROOT / "examples/quickstart/tokenizer")},
        "dataset": {"name": "mock", "seq_len": 64, "num_samples": 128},
        "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
        "step_scheduler": {"global_batch_size": 8, "local_batch_size": 8, "max_steps": 2, "log_every_steps": 1},
        "checkpoint": {"keep_last": 1, "save_final": False, "export_hf": False},
        "loggers": [],
        **extra,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


#: The benchmarks' 5M-parameter Llama (tests/benchmarks/_common.py LLAMA_5M): 8 x 256-token rows, fp32.
LLAMA_5M = {"model_type": "llama", "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 688,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

#: Multi-rank comparison variants: name -> (parallel, transforms). LoRA needs no weights (allow_random_base).
PARALLEL = {"fsdp2": [{"name": "fsdp2"}], "tp": [{"name": "tp", "size": 2}]}
EXTRAS = {"": [], "+lora": [{"name": "lora", "allow_random_base": True}],
          "+ac": [{"name": "activation_checkpointing"}]}


def variant(tmp_path: Path, model: str, parallel: str | None, extra: str = "", nproc: int = 1, accum: int = 1) -> Path:
    """A config of the plan-vs-measured comparison: ``model`` "quickstart" (64-token rows, micro-batch 8)
    or "5m" (256-token rows, micro-batch 8), ``parallel`` "fsdp2" / "tp" / None, ``extra`` a key of EXTRAS,
    ``accum`` micro-batches per optimizer step."""
    fields: dict = {"transforms": EXTRAS[extra]} if EXTRAS[extra] else {}
    if parallel:
        fields["parallel"] = PARALLEL[parallel]
        fields["launcher"] = {"name": "local", "nproc_per_node": nproc}
    dp = nproc if parallel == "fsdp2" else 1
    fields["step_scheduler"] = {"global_batch_size": 8 * dp * accum, "local_batch_size": 8, "max_steps": 2, "log_every_steps": 1}
    if model == "5m":
        fields["model"] = {"name": "hf", "config": LLAMA_5M, "tokenizer": str(ROOT / "examples/quickstart/tokenizer")}
        fields["dataset"] = {"name": "mock", "seq_len": 256, "num_samples": 64, "vocab_size": 4096}
    return quickstart_mock(tmp_path, **fields)
