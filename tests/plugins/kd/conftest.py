"""Fixtures of the kd tests (helpers live in kd_helpers.py)."""

from __future__ import annotations

import pytest
from kd_helpers import STEPS, curve, kd_config


@pytest.fixture(scope="session")
def one_process_run(tmp_path_factory, tiny_model_dir):
    """A 1-process KD run with a checkpoint at step 2 and the final export: the curve the fsdp2 and resumed
    runs must reproduce."""
    from automodel.testing import run_cli

    directory = tmp_path_factory.mktemp("kd-one")
    cfg = kd_config(directory, tiny_model_dir, step_scheduler={**STEPS, "ckpt_every_steps": 2},
                    checkpoint={"keep_last": 5, "export_hf": True, "save_final": True})
    proc = run_cli("run", cfg, cwd=directory)
    return directory, cfg, curve(directory), proc.stdout
