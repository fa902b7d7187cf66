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
