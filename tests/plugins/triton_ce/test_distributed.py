"""2 processes (gloo): DTensor weights (FSDP2-sharded, TP vocab-sharded) and the real fsdp2 / tp plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from triton_ce_helpers import assert_same_curve, train_curve

HERE = Path(__file__).parent


def test_dtensor_weights_match_single_process():
    """FSDP2-style Shard(0) weight with per-rank data, and a vocab-parallel TP weight (uneven shards):
    loss, dW and dh equal the single-process full-logits computation (both backends)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HERE / "triton_ce_dist.py")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 and "DIST OK" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-8000:]


def test_fsdp2_plugin_trains_like_single_process(tmp_path, tiny_model_dir, masked_ce_baseline):
    # fsdp2's defaults (reshard_after_forward: true): the plugin keeps the root gathered, so the loss can
    # read the lm_head weight after forward.
    got = train_curve(tmp_path, tiny_model_dir, {"name": "triton_ce"},
                      parallel=[{"name": "fsdp2"}],
                      launcher={"name": "local", "nproc_per_node": 2})
    assert_same_curve(got, masked_ce_baseline, "fsdp2 x2 + triton_ce")


def test_tp_vocab_parallel_with_fsdp2_trains_like_single_process(tmp_path, tiny_model_dir, masked_ce_baseline):
    """4 ranks, mesh dp_shard=2 x tp=2 with sequence parallelism: the lm_head is sharded over the
    vocabulary and the loss combines the shards' softmax statistics instead of gathering the weight."""
    got = train_curve(tmp_path, tiny_model_dir, {"name": "triton_ce"},
                      parallel=[{"name": "tp", "size": 2, "sequence_parallel": True},
                                {"name": "fsdp2"}],
                      launcher={"name": "local", "nproc_per_node": 4})
    assert_same_curve(got, masked_ce_baseline, "fsdp2 x2 * tp x2 (sequence parallel) + triton_ce")
