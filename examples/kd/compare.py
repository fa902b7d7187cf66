"""Train the KD example's student twice, with the teacher (``loss: kd``) and without (``masked_ce``),
and print both exact-match curves and the steps each needs to reach a target accuracy.

    automodel run examples/quickstart/config.yaml        # the teacher: exports runs/quickstart/hf
    python examples/kd/compare.py                        # both students (a few minutes on 2 CPU cores)
    python examples/kd/compare.py --no-train             # only print the curves of existing runs

Run from the repository root (the config's teacher path, runs/quickstart/hf, is relative to it).
Any extra arguments are config overrides passed to both runs (e.g. step_scheduler.max_steps=200).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {"kd": "runs/kd-student", "baseline": "runs/kd-baseline"}


def train(which: str, overrides: list[str]) -> None:
    args = [sys.executable, "-m", "automodel", "run", str(HERE / "config.yaml"), f"output_dir={RUNS[which]}", *overrides]
    if which == "baseline":
        args.append("loss={name: masked_ce}")  # the same student, data, optimizer and steps; no teacher
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    print(f"--- {which}: {' '.join(args[2:])}", flush=True)
    subprocess.run(args, env=env, check=True)


def accuracy(run: str) -> dict[int, float]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: train it first (python examples/kd/compare.py without --no-train)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["val_exact_match"] for r in records if "val_exact_match" in r}


def first_reaching(curve: dict[int, float], target: float) -> int | None:
    return next((step for step in sorted(curve) if curve[step] >= target), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=float, default=0.6, help="exact-match accuracy to reach (default 0.6)")
    p.add_argument("--no-train", action="store_true", help="only print the curves of runs/kd-student and runs/kd-baseline")
    args, overrides = p.parse_known_args(argv)
    if not args.no_train:
        if not Path("runs/quickstart/hf/config.json").is_file():
            print("error: the teacher runs/quickstart/hf does not exist; train it first (from the repository root):\n"
                  "  automodel run examples/quickstart/config.yaml", file=sys.stderr)
            return 2
        for which in ("kd", "baseline"):
            train(which, overrides)
    kd, base = accuracy(RUNS["kd"]), accuracy(RUNS["baseline"])
    print("\nexact match on the held-out words (greedy decoding), student with 1/5 of the teacher's parameters:\n")
    print("| step | without teacher (masked_ce) | with teacher (kd) |")
    print("|---:|---:|---:|")
    for step in sorted(set(kd) | set(base)):
        cells = [f"{c[step]:.1%}" if step in c else "-" for c in (base, kd)]
        print(f"| {step} | {cells[0]} | {cells[1]} |")
    s_kd, s_base = first_reaching(kd, args.target), first_reaching(base, args.target)
    print(f"\nsteps to reach {args.target:.0%} exact match: with teacher {s_kd or 'not reached'}, "
          f"without {s_base or 'not reached'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
