"""`automodel plan --world-size 2` against real 2-process runs (torchrun, gloo): the quickstart model with
fsdp2 + activation checkpointing and with tp + LoRA, in one torchrun launch. The measured side is
automodel.estimate.measure on every rank (the real Trainer, real collectives, two optimizer steps under
the same tensor-storage tracker); the plan runs here with the fake process group. The full table
(1 and 2 processes, quickstart and the 5M model) is tests/benchmarks/bench_plan.py -> docs/plan.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from automodel import config as config_mod
from automodel.plugins import load_plugins
from plan_helpers import ROOT, variant

CASES = {"fsdp2+ac": ("fsdp2", "+ac"), "tp+lora": ("tp", "+lora")}


def test_plan_matches_two_real_processes(tmp_path, monkeypatch):
    from automodel.estimate import estimate

    paths = {name: variant(tmp_path / name, "quickstart", p, extra, nproc=2) for name, (p, extra) in CASES.items()}
    out = tmp_path / "measured.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(ROOT / "tests/core/plan_worker.py"), str(out), *map(str, paths.values())],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # the plans run here while the real processes train
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        plugins = load_plugins()
        plans = {}
        for name, path in paths.items():
            v = config_mod.validate(config_mod.load(str(path), []), plugins, world_size=2)
            plans[name] = estimate(v.config, plugins, v.layout, world_size=2)
        log, _ = launch.communicate(timeout=300)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 0, log[-3000:]
    measured = json.loads(out.read_text())
    rows = []
    for name, path in paths.items():
        ranks, est = measured[str(path)], plans[name]
        assert len(ranks) == 2
        real = max(ranks, key=lambda r: r["peak_bytes"])
        rows.append((name, est.peak_bytes, real["peak_bytes"]))
        assert abs(est.peak_bytes / real["peak_bytes"] - 1) < 0.10, (name, est.breakdown, real)
        for key in ("parameters", "gradients", "optimizer"):  # sharded state: what this rank holds
            assert abs(est.breakdown[key] - real["breakdown"][key]) <= 0.10 * max(real["breakdown"][key], 1), (name, key)
    print("\n".join(f"{n:10} plan {e / 2**20:8.2f} MiB  measured {m / 2**20:8.2f} MiB  {e / m:.4f}" for n, e, m in rows))
