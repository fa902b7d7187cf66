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
import torch.nn.functional as F
from automodel import config as config_mod
from automodel import hookimpl
from automodel.builtin.datasets import MockDataset
from automodel.plugins import load_plugins
from automodel.testing import tiny_model
from automodel.train import train

LLAMA_5M = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
BATCH, SEQ, WARMUP = 8, 256, 3


class StepTimer:
    def __init__(self):
        self.times: list[float] = []

    @hookimpl
    def on_step_end(self, step):
        self.times.append(time.perf_counter())


def tokens_per_s(times: list[float]) -> float:
    timed = times[WARMUP:]
    return (len(timed) - 1) * BATCH * SEQ / (timed[-1] - timed[0])


def plain_loop(model_dir: Path, steps: int) -> float:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    data = MockDataset(BATCH * steps, SEQ, LLAMA_5M["vocab_size"], seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps):
        ids = torch.tensor([data[j]["input_ids"] for j in range(i * BATCH, (i + 1) * BATCH)])
        logits = model(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return tokens_per_s(times)


def automodel_loop(model_dir: Path, out: Path, steps: int) -> float:
    raw = {
        "output_dir": str(out),
        "model": {"name": "hf", "pretrained": str(model_dir)},
        "dataset": {"name": "mock", "num_samples": BATCH * steps, "seq_len": SEQ, "vocab_size": LLAMA_5M["vocab_size"]},
        "optimizer": {"name": "adamw", "lr": 1e-4},
        "step_scheduler": {"global_batch_size": BATCH, "local_batch_size": BATCH, "max_steps": steps, "log_every_steps": 10},
        "checkpoint": {"export_hf": False, "save_final": False},
        "loggers": [],
    }
    plugins = load_plugins(entry_points=False)
    timer = StepTimer()
    plugins.pm.register(timer)
    train(config_mod.resolve(raw, plugins, world_size=1), plugins)
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
    steps = args.steps + WARMUP
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
