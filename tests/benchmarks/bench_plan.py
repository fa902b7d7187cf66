"""`automodel plan` against measured peaks on CPU: 1 process and 2 processes (torchrun, gloo), the
quickstart model and the 5M benchmark model, fsdp2 and tp, with LoRA and activation checkpointing.

The measured side is automodel.estimate.measure: the real Trainer (real weights, data and collectives),
two optimizer steps under the same tensor-storage tracker (torch's MemTracker) the plan uses; both count
live tensor storages (a CPU has no allocator high-water mark). Prints the table of docs/plan.md.

    python tests/benchmarks/bench_plan.py [--models quickstart,5m]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "core"))

from plan_helpers import EXTRAS, PARALLEL, ROOT, variant  # noqa: E402


def plan(path: Path, nproc: int) -> dict:
    from automodel import config as config_mod
    from automodel.estimate import estimate
    from automodel.plugins import load_plugins

    plugins = load_plugins()
    v = config_mod.validate(config_mod.load(str(path), []), plugins, world_size=nproc)
    return estimate(v.config, plugins, v.layout, world_size=nproc).to_json()


def measured_2proc(paths: list[Path], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests/core/plan_worker.py"), str(out), *map(str, paths)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="quickstart,5m")
    args = ap.parse_args()
    from automodel import config as config_mod
    from automodel.estimate import measure
    from automodel.plugins import load_plugins

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model in args.models.split(","):
            for extra in EXTRAS:  # 1 process
                path = variant(root / f"{model}-1{extra}", model, None, extra)
                plugins = load_plugins()
                v = config_mod.validate(config_mod.load(str(path), []), plugins, world_size=1)
                real = measure(v.config, plugins, v.layout)["peak_bytes"]
                rows.append((model, "1", f"none{extra}", plan(path, 1)["peak_bytes"], real))
            paths = {f"{p}{extra}": variant(root / f"{model}-2-{p}{extra}", model, p, extra, nproc=2)
                     for p in PARALLEL for extra in EXTRAS}
            # fsdp2 with 2 micro-batches: gradients stay unsharded until the last one (no reduce-scatter before)
            paths["fsdp2, 2 micro-batches"] = variant(root / f"{model}-2-fsdp2-accum", model, "fsdp2", "", nproc=2, accum=2)
            measured = measured_2proc(list(paths.values()), root / f"{model}.json")
            for name, path in paths.items():
                ranks = measured[str(path)]
                rows.append((model, "2", name, plan(path, 2)["peak_bytes"], max(r["peak_bytes"] for r in ranks)))
    print("| model | processes | config | plan (MiB per rank) | measured (MiB, max over ranks) | plan / measured |")
    print("|---|---|---|---|---|---|")
    for model, n, name, est, real in rows:
        print(f"| {model} | {n} | {name} | {est / 2**20:.2f} | {real / 2**20:.2f} | {est / real:.4f} |")


if __name__ == "__main__":
    main()
