"""Core overhead, measured side by side in one run.

1. tokens/s of automodel's training loop vs a plain PyTorch loop on the same 5M-parameter Llama, the
   same batches (8 x 256 tokens, fp32, AdamW, grad clipping), in the same process, interleaved rounds.
2. wall time of `automodel --help` vs `python -c pass`.

    python tests/benchmarks/bench_core.py [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import BATCH, LLAMA_5M, LR, SEQ, plain_steps
from _common import tokens_per_s as _tokens_per_s
from automodel import config as config_mod
from automodel import hookimpl
from automodel.plugins import load_plugins
from automodel.testing import tiny_model
from automodel.train import train


class StepTimer:
    def __init__(self):
        self.times: list[float] = []

    @hookimpl
    def on_step_end(self, step):
        self.times.append(time.perf_counter())


def tokens_per_s(times: list[float]) -> float:
    return _tokens_per_s(times, BATCH, SEQ)


def plain_loop(model_dir: Path, steps: int) -> float:
    """The plain PyTorch reference loop of _common.py (the one bench_peers.py runs too)."""
    return tokens_per_s(plain_steps(model_dir, steps)[0])


def automodel_loop(model_dir: Path, out: Path, steps: int) -> float:
    raw = {
        "output_dir": str(out),
        "model": {"name": "hf", "pretrained": str(model_dir)},
        "dataset": {"name": "mock", "num_samples": BATCH * steps, "seq_len": SEQ, "vocab_size": LLAMA_5M["vocab_size"]},
        "optimizer": {"name": "adamw", "lr": LR},
        "step_scheduler": {"global_batch_size": BATCH, "local_batch_size": BATCH, "max_steps": steps, "log_every_steps": 10},
        "checkpoint": {"export_hf": False, "save_final": False},
        "loggers": [],
    }
    plugins = load_plugins(entry_points=False)
    timer = StepTimer()
    plugins.pm.register(timer)
    train(config_mod.validate(raw, plugins, world_size=1))
    return tokens_per_s(timer.times)


def cli_help_time(runs: int = 10) -> tuple[float, float]:
    def median(cmd: list[str]) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return median([sys.executable, "-m", "automodel", "--help"]), median([sys.executable, "-c", "pass"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    steps = args.steps + 3  # + the untimed warm-up steps
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model(tmp, **LLAMA_5M)
        n = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        print(f"model: Llama {n / 1e6:.2f}M parameters, batch {BATCH} x {SEQ} tokens, fp32, {torch.get_num_threads()} threads")
        plain, ours = [], []
        for r in range(args.rounds):
            plain.append(plain_loop(model_dir, steps))
            ours.append(automodel_loop(model_dir, Path(tmp) / f"run{r}", steps))
            print(f"round {r + 1}: plain {plain[-1]:,.0f} tok/s   automodel {ours[-1]:,.0f} tok/s")
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"tokens/s (median of {args.rounds}): plain PyTorch {p:,.0f}, automodel {o:,.0f}, ratio automodel/plain = {o / p:.3f} "
          f"(overhead {100 * (1 - o / p):+.1f}%; goal < 3%)")
    ours_help, python = cli_help_time()
    print(f"`automodel --help` {ours_help * 1000:.0f} ms vs `python -c pass` {python * 1000:.0f} ms: "
          f"ratio {ours_help / python:.1f}x, {1000 * (ours_help - python):.0f} ms over bare Python (goal: < 300 ms total)")


if __name__ == "__main__":
    main()
