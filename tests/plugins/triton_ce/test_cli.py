"""The plugin as users meet it: listed by the CLI, selected in a config, training a real tiny model."""

from __future__ import annotations

import json

import pytest
from automodel.testing import make_config, read_metrics, run_cli, tiny_model


def test_installed_and_listed(tmp_path):
    out = run_cli("plugins", "--json", cwd=tmp_path).stdout
    plugins = {p["name"]: p for p in json.loads(out)}
    assert "triton_ce" in plugins, sorted(plugins)
    entry = plugins["triton_ce"]
    assert entry["error"] is None and entry["distribution"] == "automodel-triton-ce"
    assert sorted(entry["registers"]["losses"]) == ["chunked_ce", "triton_ce"]


def test_bad_option_is_caught_before_launch(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, loss={"name": "triton_ce", "label_smoothing": 2.0})
    proc = run_cli("run", cfg, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "loss.label_smoothing" in proc.stdout + proc.stderr and "[0, 1)" in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


STEPS = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 5, "log_every_steps": 1}


def _curve(tmp_path, model_dir, loss, name):
    cfg = make_config(tmp_path / name, model_dir, loss=loss, step_scheduler=STEPS)
    run_cli("run", cfg, cwd=tmp_path, env={"TRITON_INTERPRET": "1"})
    return [m["loss"] for m in read_metrics(tmp_path / name / "run")], [m["grad_norm"] for m in read_metrics(tmp_path / name / "run")]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_trains_like_builtin_cross_entropy(tmp_path, tied):
    """Same loss curve (and grad norms) as masked_ce on the full logits, with the real CLI and loop."""
    model_dir = tiny_model(tmp_path, tie_word_embeddings=tied)
    base, base_gn = _curve(tmp_path, model_dir, {"name": "masked_ce"}, "masked")
    assert base[-1] < base[0] - 0.2  # it really trains
    losses = ["chunked_ce", "triton_ce"] if not tied else ["chunked_ce"]
    for name in losses:
        curve, gn = _curve(tmp_path, model_dir, {"name": name}, name)
        assert len(curve) == len(base) == 5
        for a, b in zip(curve, base):
            assert abs(a - b) < 1e-4 * max(1.0, abs(b)), (name, curve, base)
        for a, b in zip(gn, base_gn):
            assert abs(a - b) < 1e-3 * max(1.0, abs(b)), (name, gn, base_gn)
