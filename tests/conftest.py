"""Shared fixtures: a tiny model saved once per session, and an isolated environment per test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run through Triton's interpreter on a machine without an NVIDIA GPU. It must be set before
# anything imports triton (bitsandbytes does, while pytest collects tests/plugins/qlora): triton decorates its
# own tl.* helpers once, at import, as interpreted or compiled functions.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Llama + char tokenizer saved with save_pretrained (model.pretrained points here)."""
    from automodel.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("model"))

