"""What running through Ray costs: the same 2-process fsdp2 run under the ``local`` launcher and the ``ray`` one.

    python tests/benchmarks/bench_ray.py [--steps 40] [--address 127.0.0.1:26379]

Side by side, per launcher: wall time of ``automodel run`` (start to exit), time to the first logged step
(start-up: process start, Ray connect + worker group + process group, model build, data), and the
steady-state tokens/s (median of the ``tokens_per_s`` of steps 5..N in metrics.jsonl), each with its ratio
to ``local``. Launchers: ``local`` (torchrun --standalone, 2 processes); ``ray`` attached to the running test
cluster (``ci/start_ray.sh``: 2 nodes, 1 worker on each); ``ray`` with ``address: local`` (a Ray instance
started inside ``automodel run``). Losses are compared too: all three must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from automodel.testing import make_config, tiny_model

BASE = Path(os.environ.get("AUTOMODEL_RAY_DIR", "/tmp/automodel-test-ray"))


def run(cfg: Path, cwd: Path, out: Path) -> dict[str, float]:
    metrics = out / "metrics.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("AUTOMODEL_LAUNCHED", None)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "automodel", "run", str(cfg)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = None
    while proc.poll() is None:
        if first is None and metrics.is_file() and metrics.read_text().strip():
            first = time.monotonic() - t0
        time.sleep(0.05)
    wall = time.monotonic() - t0
    text = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{cfg.name} exited {proc.returncode}:\n{text[-3000:]}")
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    return {"wall": wall, "first_step": first or wall,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records if r["step"] >= 5),
            "losses": [r["loss"] for r in records]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--address", default=None, help="GCS address of a running cluster (default: the test cluster's)")
    args = ap.parse_args()
    address = args.address or (BASE / "address").read_text().strip()
    root = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    model = tiny_model(root)
    sched = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": args.steps, "log_every_steps": 1}
    rows = {}
    for name, launcher in [
        ("local (torchrun, 2 procs)", {"name": "local", "nproc_per_node": 2}),
        (f"ray, attached to {address} (2 nodes)", {"name": "ray", "address": address, "num_workers": 2}),
        ("ray, address: local (Ray started in-process)", {"name": "ray", "address": "local", "num_workers": 2}),
    ]:
        tag = str(len(rows))
        cfg = make_config(root, model, name=f"c{tag}.yaml", step_scheduler=sched, parallel=[{"name": "fsdp2"}])
        data = yaml.safe_load(cfg.read_text())
        data["output_dir"] = str(root / f"run{tag}")
        data["launcher"] = launcher
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        rows[name] = run(cfg, root, root / f"run{tag}")
        print(f"{name}: {rows[name]['wall']:.1f} s", flush=True)
    base = rows["local (torchrun, 2 procs)"]
    print(f"\n{args.steps} steps, tiny Llama, fsdp2 over 2 processes, gloo; load average {os.getloadavg()[0]:.1f}")
    print(f"{'launcher':48} {'wall s':>8} {'x local':>8} {'1st step s':>11} {'x local':>8} {'tok/s':>8} {'x local':>8}")
    for name, r in rows.items():
        print(f"{name:48} {r['wall']:8.1f} {r['wall'] / base['wall']:8.2f} {r['first_step']:11.1f} "
              f"{r['first_step'] / base['first_step']:8.2f} {r['tokens_per_s']:8.0f} {r['tokens_per_s'] / base['tokens_per_s']:8.2f}")
    same = all(r["losses"] == base["losses"] for r in rows.values())
    print(f"losses identical across launchers: {same}")


if __name__ == "__main__":
    main()
