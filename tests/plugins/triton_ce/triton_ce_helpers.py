"""Helpers of the triton_ce tests (a module of its own: ``from conftest import`` gets whichever conftest pytest
imported last)."""

from __future__ import annotations

#: Global batch 8 = 2 sequences x 4 micro-batches (1 process) = 2 x 2 x 2 data-parallel ranks.
STEPS = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": 4, "log_every_steps": 1}


def train_curve(directory, model_dir, loss, **sections):
    """Train with the real CLI; (losses, grad norms) per step."""
    from automodel.testing import make_config, read_metrics, run_cli

    cfg = make_config(directory, model_dir, loss=loss, step_scheduler=STEPS, **sections)
    run_cli("run", cfg, cwd=directory, env={"TRITON_INTERPRET": "1"})
    records = read_metrics(directory / "run")
    return [r["loss"] for r in records], [r["grad_norm"] for r in records]


def assert_same_curve(got, base, what):
    (losses, norms), (base_losses, base_norms) = got, base
    assert len(losses) == len(base_losses) == STEPS["max_steps"], what
    for a, b in zip(losses, base_losses):
        assert abs(a - b) < 1e-4 * max(1.0, abs(b)), (what, losses, base_losses)
    for a, b in zip(norms, base_norms):
        assert abs(a - b) < 1e-3 * max(1.0, abs(b)), (what, norms, base_norms)
