"""Helpers of the kd tests: a teacher (the tiny Llama), a 4x smaller student on its tokenizer.

A module of its own, not conftest.py: ``from conftest import ...`` gets whichever directory's conftest pytest
imported last."""

from __future__ import annotations

from pathlib import Path

#: 4 optimizer steps of global batch 8 = 4 x 2 accumulation (1 process) = 4 x 1 x 2 ranks.
STEPS = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 4, "log_every_steps": 1}

STUDENT = {"model_type": "llama", "vocab_size": 48, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def student_section(teacher_dir: Path) -> dict:
    return {"name": "hf", "config": dict(STUDENT), "tokenizer": str(teacher_dir)}


def kd_loss(teacher_dir: Path, **options) -> dict:
    return {"name": "kd", "teacher": {"name": "hf", "pretrained": str(teacher_dir)}, "kind": "forward_kl",
            "temperature": 2.0, "kd_weight": 0.5, **options}


def kd_config(directory: Path, teacher_dir: Path, loss: dict | None = None, **sections) -> Path:
    from automodel.testing import make_config

    sections.setdefault("step_scheduler", STEPS)
    sections.setdefault("optimizer", {"name": "adamw", "lr": 1.0e-2})
    sections.setdefault("lr_scheduler", {"name": "constant"})
    return make_config(directory, None, model=student_section(teacher_dir), loss=loss or kd_loss(teacher_dir), **sections)


def curve(directory: Path) -> tuple[list[float], list[float]]:
    from automodel.testing import read_metrics

    records = read_metrics(directory / "run")
    return [r["loss"] for r in records], [r["grad_norm"] for r in records]
