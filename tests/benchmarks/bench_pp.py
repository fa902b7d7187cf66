"""Pipeline-parallel benchmark on CPU (gloo): the bubble per schedule and per-rank memory vs 1 process.

    python tests/benchmarks/bench_pp.py [--steps 4] [--layers 8] [--hidden 256] [--micro 4 8]

Model: the quickstart's Llama at a larger size (random init, fp32), the quickstart data, 32 sequences
a step. One torchrun launch (2 processes, pp=2) trains every schedule for each micro-batch count, one
process trains the same config for the reference. Reported:

* bubble per rank = 1 - busy / schedule time, where busy is the wall time inside the stage's
  forward / backward (input and weight) calls and schedule time the whole ``schedule.step`` (steps
  after the first; the first includes the shape handshake). The textbook bubble of GPipe and 1F1B
  is (p - 1) / (m + p - 1) for p stages and m micro-batches.
* per-rank state memory: parameters + optimizer state (AdamW: 2 x parameters) held by each rank, and
  peak RSS (interpreter, torch and data included), against the 1-process run.

On a shared 2-core machine the timings are noisy: compare schedules within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
DRIVER = ROOT / "tests" / "plugins" / "pp" / "pp_driver.py"
QUICKSTART = ROOT / "examples" / "quickstart"
SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b", "interleaved_zb", "zbv")


def _config(directory: Path, layers: int, hidden: int, steps: int) -> Path:
    quick = yaml.safe_load((QUICKSTART / "config.yaml").read_text())
    model = {**quick["model"], "tokenizer": str(QUICKSTART / "tokenizer")}
    model["config"] = {**model["config"], "num_hidden_layers": layers, "hidden_size": hidden, "intermediate_size": 3 * hidden}
    cfg = {
        "seed": 1234, "output_dir": str(directory / "run"), "model": model,
        "dataset": {**quick["dataset"], "path": str(QUICKSTART / "data" / "train.jsonl")},
        "optimizer": quick["optimizer"], "clip_grad_norm": 1.0,
        "step_scheduler": {"global_batch_size": 32, "local_batch_size": 16, "max_steps": steps, "log_every_steps": 1},
        "checkpoint": {"export_hf": False, "save_final": False}, "loggers": [{"name": "jsonl"}],
    }
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _launch(nproc: int, out: Path, base: Path, runs: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("AUTOMODEL_LAUNCHED", None)
    cmd = [str(DRIVER), str(out), str(base), *runs]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *cmd] if nproc > 1 \
        else [sys.executable, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-5000:])
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--micro", type=int, nargs="+", default=[4, 8])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = _config(d, args.layers, args.hidden, args.steps)
        runs = [f"{s}/m{m}=output_dir={d / f'{s}-{m}'};parallel=[{{name: pp, size: 2, schedule: {s}, microbatches: {m}}}]"
                for m in args.micro for s in SCHEDULES]
        pp = _launch(2, d / "pp.json", base, runs)
        one = _launch(1, d / "one.json", base, [f"single=output_dir={d / 'single'}"])["single"]

    print(f"pp=2 on 2 gloo processes, {args.layers} blocks x hidden {args.hidden}, 32 sequences/step, {args.steps} steps")
    print(f"{'schedule':<18} {'m':>3} {'stages':>6} {'bubble r0':>10} {'bubble r1':>10} {'textbook':>9} {'step s':>7} {'loss ok':>8}")
    for m in args.micro:
        for s in SCHEDULES:
            r = pp[f"{s}/m{m}"]
            bubbles = []
            for rank in r["ranks"]:
                t = rank["timings"][1:] or rank["timings"]
                bubbles.append(1 - sum(x["busy_s"] for x in t) / sum(x["schedule_s"] for x in t))
            n_stages = 2 if s in ("gpipe", "1f1b") else 4
            textbook = f"{(n_stages - 1) / (m + n_stages - 1):.2f}" if n_stages == 2 else "-"
            step = sum(x["schedule_s"] for x in r["ranks"][0]["timings"][1:]) / max(len(r["ranks"][0]["timings"]) - 1, 1)
            same = all(abs(a - b) < 1e-4 for a, b in zip(r["loss"], one["loss"]))
            print(f"{s:<18} {m:>3} {n_stages:>6} {bubbles[0]:>10.2f} {bubbles[1]:>10.2f} {textbook:>9} {step:>7.3f} {str(same):>8}")
    one_state = one["ranks"][0]["state_bytes"]
    print("\nper-rank memory (parameters + AdamW state; peak RSS includes interpreter, torch, data):")
    print(f"{'run':<22} {'rank':>4} {'state MiB':>10} {'vs 1 proc':>10} {'peak RSS GiB':>13}")
    print(f"{'1 process':<22} {0:>4} {one_state / 2**20:>10.2f} {1.0:>10.2f} {one['ranks'][0]['peak_rss_gb']:>13.2f}")
    r = pp[f"1f1b/m{args.micro[0]}"]
    for i, rank in enumerate(r["ranks"]):
        print(f"{'pp=2 (1f1b)':<22} {i:>4} {rank['state_bytes'] / 2**20:>10.2f} {rank['state_bytes'] / one_state:>10.2f} "
              f"{rank['peak_rss_gb']:>13.2f}")


if __name__ == "__main__":
    main()
