"""Start-up times of the CLI: what a user waits for before anything useful happens.

    python tests/benchmarks/bench_startup.py [--runs 5]

Median wall time of ``automodel --help``, ``automodel plugins``, ``automodel validate`` (the quickstart
config) and ``automodel run`` of the quickstart config until the end of its first step (process start to
``on_step_end``, through the ``_steptimer`` local plugin), next to ``python -c pass`` and
``python -c "import torch, transformers"`` for scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import ROOT, automodel_exe, median_wall, python_env, run_measured, table

QUICKSTART = ROOT / "examples" / "quickstart" / "config.yaml"


def run_to_first_step(runs: int) -> tuple[float, float]:
    """(median seconds from process start to the end of step 1, median peak RSS GiB) of the quickstart run."""
    firsts, peaks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            out = Path(tmp) / f"times{i}.json"
            cmd = [*automodel_exe(), "run", str(QUICKSTART), f"output_dir={tmp}/run{i}", "step_scheduler.max_steps=1",
                   "checkpoint.save_final=false", "checkpoint.export_hf=false", "--plugin", "_steptimer"]
            rc, start, peak, text = run_measured(cmd, env=python_env(BENCH_STEP_TIMES=str(out)), cwd=tmp, timeout=600)
            if rc != 0 or not out.exists():
                raise RuntimeError(f"{' '.join(cmd)} exited {rc}:\n{text[-3000:]}")
            firsts.append(json.loads(out.read_text())["times"][0] - start)
            peaks.append(peak)
    return statistics.median(firsts), statistics.median(peaks)


def measure(runs: int = 5) -> list[dict[str, Any]]:
    env = python_env()
    am = automodel_exe()
    rows = []
    for name, cmd in [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("python -c 'import torch, transformers'", [sys.executable, "-c", "import torch, transformers"]),
        ("automodel --help", [*am, "--help"]),
        ("automodel plugins", [*am, "plugins"]),
        ("automodel validate quickstart", [*am, "validate", str(QUICKSTART)]),
    ]:
        rows.append({"name": name, "seconds": median_wall(cmd, runs, env=env, cwd=ROOT)})
        print(f"  {name:<40} {rows[-1]['seconds']:.2f} s", flush=True)
    first, peak = run_to_first_step(max(runs // 2, 2))
    rows.append({"name": "automodel run quickstart -> step 1", "seconds": first, "peak_rss_gb": peak})
    print(f"  {rows[-1]['name']:<40} {first:.2f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per command (the median is reported)")
    a = ap.parse_args(argv)
    rows = measure(a.runs)
    print()
    print(table([[r["name"], f"{r['seconds']:.2f}"] for r in rows], ["command", "median s"]))
    return rows


if __name__ == "__main__":
    main()
