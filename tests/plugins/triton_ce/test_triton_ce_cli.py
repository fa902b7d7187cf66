"""The plugin as users meet it: listed by the CLI, selected in a config, training a real tiny model."""

from __future__ import annotations

import json

import pytest
from automodel.testing import make_config, run_cli, tiny_model
from triton_ce_helpers import assert_same_curve, train_curve


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
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "loss.label_smoothing" in out and "[0, 1)" in out
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("name", ["triton_ce", "chunked_ce"])
def test_trains_like_builtin_cross_entropy(tmp_path, tiny_model_dir, masked_ce_baseline, name):
    """Same loss curve and grad norms as masked_ce on the full logits, through the real CLI and loop."""
    assert_same_curve(train_curve(tmp_path, tiny_model_dir, {"name": name}), masked_ce_baseline, name)


def test_tied_embeddings_train_like_builtin(tmp_path):
    model_dir = tiny_model(tmp_path, tie_word_embeddings=True)
    base = train_curve(tmp_path / "masked", model_dir, {"name": "masked_ce"})
    assert_same_curve(train_curve(tmp_path / "chunked", model_dir, {"name": "chunked_ce"}), base, "tied chunked_ce")


def test_import_is_cheap():
    """Discovering the plugin and validating a loss config import neither torch nor triton."""
    import subprocess
    import sys

    code = ("import sys, automodel_triton_ce, automodel_triton_ce.loss as m; "
            "assert m.FusedLinearCrossEntropy.validate_args({'softcap': 0})[0][0] == 'softcap'; "
            "print(sorted(k for k in ('torch', 'triton') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
