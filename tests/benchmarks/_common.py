"""Shared pieces of the benchmarks: the model shapes, the plain PyTorch reference loop, timing helpers.

Imported by the ``bench_*.py`` scripts as ``from _common import ...`` (they run as scripts, so their own
directory is on ``sys.path``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# The guide's reference: a 5M-parameter Llama, batch 8 x 256 tokens, fp32, AdamW, grad clipping.
LLAMA_5M: dict[str, Any] = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
BATCH, SEQ, WARMUP = 8, 256, 3
LR = 1e-4

# Llama-3.2-1B shapes (random init) for the GPU mode.
LLAMA_1B: dict[str, Any] = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                                rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001)


def tokens_per_s(times: list[float], batch: int = BATCH, seq: int = SEQ, warmup: int = WARMUP, robust: bool = False) -> float:
    """Throughput over the steps after ``warmup``, from the wall-clock end times of every step: total tokens
    over the span, or with ``robust`` one step's tokens over the median step time (on a machine shared with
    other jobs, a burst of their load then moves the number less)."""
    timed = times[warmup:] if len(times) > warmup + 1 else times
    if len(timed) < 2:
        raise ValueError(f"need at least 2 timed steps, got {len(times)} step times")
    if robust:
        return batch * seq / statistics.median(b - a for a, b in zip(timed, timed[1:]))
    return (len(timed) - 1) * batch * seq / (timed[-1] - timed[0])


def plain_steps(model_dir: str | os.PathLike[str], steps: int, batch: int = BATCH, seq: int = SEQ,
                vocab_size: int = LLAMA_5M["vocab_size"], device: str = "cpu", dtype: str = "float32") -> tuple[list[float], list[float]]:
    """The reference: a plain PyTorch loop (HF model, torch AdamW, grad clipping 1.0, no scheduler).

    Returns (wall-clock ``time.time()`` at the end of every step, loss of every step)."""
    import torch
    import torch.nn.functional as F
    from automodel.builtin.datasets import MockDataset
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).train()
    data = MockDataset(batch * steps, seq, vocab_size, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    times, losses = [], []
    for i in range(steps):
        ids = torch.tensor([data[j]["input_ids"] for j in range(i * batch, (i + 1) * batch)], device=device)
        logits = model(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))  # syncs on a GPU, as any loop that logs its loss does
        times.append(time.time())
    return times, losses


def python_env(**extra: str) -> dict[str, str]:
    """The environment for benchmark subprocesses: this directory importable (the step-timer plugin),
    no progress bars, no network, no launch marker inherited from a parent run."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.pop("AUTOMODEL_LAUNCHED", None)
    return env


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                 timeout: float = 1800, log: str | os.PathLike[str] | None = None) -> tuple[int, float, float, str]:
    """Run ``cmd``; returns (exit code, wall-clock start ``time.time()``, peak RSS in GiB of the process and its
    waited-for children, output). Peak memory comes from ``wait4`` for that process alone: nothing else
    this script ran is counted."""
    out_path = Path(log) if log else None
    with open(out_path, "w+") if out_path else _TempText() as out:
        start = time.time()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    return proc.returncode, start, usage.ru_maxrss / 2**20, text


class _TempText:
    def __enter__(self):
        import tempfile

        self.f = tempfile.TemporaryFile("w+")
        return self.f

    def __exit__(self, *exc: Any) -> None:
        self.f.close()


def median_wall(cmd: list[str], runs: int, env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None) -> float:
    """Median wall time in seconds of ``runs`` runs of ``cmd`` (each must exit 0)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return statistics.median(times)


def automodel_exe() -> list[str]:
    """The ``automodel`` console script next to this interpreter (what a user types), else ``python -m automodel``."""
    exe = Path(sys.executable).parent / "automodel"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "automodel"]


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])
