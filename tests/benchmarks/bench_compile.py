"""torch.compile (the builtin ``compile`` transform) against eager: tokens/s, first-step time, recompilations.

    python tests/benchmarks/bench_compile.py                 # CPU: the 5M benchmark model and hidden 1024 x 8 layers
    python tests/benchmarks/bench_compile.py --device cuda   # GPU (bf16 parameters)
    python tests/benchmarks/bench_compile.py --models bench --steps 6 --seq 128

Each configuration runs in its own process (a fresh compiler; the inductor cache is a fresh temporary
directory unless --cache-dir is given, so the first step pays a cold compile). The model is built through
the same transform a run uses (automodel.builtin.transforms.Compile, scope blocks). Steady tokens/s is one
step's tokens over the median step time after the first two steps. Not a timed test: it prints a table.
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

from _common import LLAMA_5M, table

LARGE = {**LLAMA_5M, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
         "num_key_value_heads": 16}
MODELS = {"bench": LLAMA_5M, "large": LARGE}


def one(model: str, compiled: bool, steps: int, batch: int, seq: int, device: str, varlen: bool) -> dict:
    import torch
    from automodel.builtin.transforms import Compile
    from automodel.context import Context
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = AutoConfig.for_model("llama", **MODELS[model])
    m = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dtype)
    transform = Compile() if compiled else None
    if transform is not None:
        m = transform.apply(m, Context(device=device, output_dir=Path(tempfile.mkdtemp())))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    times, losses = [], []
    for i in range(steps):
        length = seq - (i % 3) * 16 if varlen else seq
        x = torch.randint(3, cfg.vocab_size, (batch, length), device=device)
        t = time.perf_counter()
        loss = m(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))  # syncs the device
        times.append(time.perf_counter() - t)
        if transform is not None and i == 0:
            transform.metrics()  # as a run's first logged step: graphs compiled later are recompilations
    out = {"first_step_s": times[0], "step_s": statistics.median(times[2:]), "tokens_per_step": batch * seq,
           "loss": losses[-1]}
    if transform is not None:
        out.update(transform.metrics())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="bench,large")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--varlen", action="store_true", help="vary the sequence length (recompilations)")
    ap.add_argument("--cache-dir", default=None, help="TORCHINDUCTOR_CACHE_DIR (default: a fresh, cold one per run)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        model, compiled = args.one.split(":")
        print(json.dumps(one(model, compiled == "1", args.steps, args.batch, args.seq, args.device, args.varlen)))
        return
    rows = []
    for model in args.models.split(","):
        res = {}
        for compiled in (False, True):
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": args.cache_dir or tempfile.mkdtemp(prefix="inductor-")}
            cmd = [sys.executable, __file__, "--one", f"{model}:{int(compiled)}", "--steps", str(args.steps),
                   "--batch", str(args.batch), "--seq", str(args.seq), "--device", args.device] + (["--varlen"] if args.varlen else [])
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).parent)
            if proc.returncode != 0:
                sys.exit(f"{model} compiled={compiled} failed:\n{proc.stderr[-3000:]}")
            res[compiled] = json.loads(proc.stdout.strip().splitlines()[-1])
        e, c = res[False], res[True]
        tps = lambda r: r["tokens_per_step"] / r["step_s"]  # noqa: E731
        rows.append([model, f"{tps(e):,.0f}", f"{tps(c):,.0f}", f"{tps(c) / tps(e):.2f}x", f"{e['first_step_s']:.1f}",
                     f"{c['first_step_s']:.1f}", f"{c['compile_s']:.1f}", str(c["recompiles"]),
                     f"{abs(c['loss'] - e['loss']):.1e}"])
        print(table(rows[-1:], HEADER), flush=True)
    print(f"\n{args.device}, batch {args.batch} x seq {args.seq}{' (varying)' if args.varlen else ''}, {args.steps} steps, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(table(rows, HEADER))


HEADER = ["model", "eager tok/s", "compiled tok/s", "speedup", "eager 1st step s", "compiled 1st step s", "compile_s",
          "recompiles", "|loss diff| last step"]

if __name__ == "__main__":
    main()
