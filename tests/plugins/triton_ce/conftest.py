"""Fixtures of the triton_ce tests (helpers live in triton_ce_helpers.py).

Triton runs on CPU through its interpreter. TRITON_INTERPRET must be set before anything imports triton
(bitsandbytes does, while pytest collects tests/plugins/qlora): tests/conftest.py sets it; this is the same
for a run of this directory alone.
"""

from __future__ import annotations

import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"

from triton_ce_helpers import train_curve  # noqa: E402


@pytest.fixture(scope="session")
def masked_ce_baseline(tmp_path_factory, tiny_model_dir):
    """The builtin masked_ce (full logits), one process: the curve every fused run must reproduce."""
    base = train_curve(tmp_path_factory.mktemp("masked_ce"), tiny_model_dir, {"name": "masked_ce"})
    assert base[0][-1] < base[0][0] - 0.15, base  # it really trains
    return base
