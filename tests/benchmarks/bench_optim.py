"""Optimizers side by side on the benchmark model: step time, state memory and a 20-step loss curve.

    python tests/benchmarks/bench_optim.py                         # CPU, the 5M-parameter Llama (_common.LLAMA_5M)
    python tests/benchmarks/bench_optim.py --steps 50 --device cuda --seq-len 1024

Every optimizer is built by the builtin factory (``automodel.builtin.optim``) from the same named
parameters (so the weight-decay groups are the ones a run gets), on the same initial weights and the same
batches (mock tokens). Reported per optimizer:

* ``step ms``: median wall time of ``optimizer.step()`` alone over the steps after the first two (the
  forward/backward is the same for all and not counted);
* ``state MB``: bytes of every tensor in ``optimizer.state`` after the run, and that per parameter;
* the loss at steps 1, 10 and the last on learnable tokens (rows that count by a stride of 1-3), so one
  can see each one learns sanely at its usual lr.

Ratios are against ``adamw``. Optimizers whose dependency is missing (bitsandbytes) are listed as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from typing import Any

from _common import BATCH, LLAMA_5M, SEQ

#: name -> (factory arguments): each at a learning rate people use with it for this size of model
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {"lr": 1e-3, "weight_decay": 0.1},
    "adamw_8bit": {"lr": 1e-3, "weight_decay": 0.1},
    "muon": {"lr": 1e-3, "weight_decay": 0.1},
    "adafactor": {"lr": 1e-2, "weight_decay": 0.0},
    "sgd": {"lr": 0.3, "momentum": 0.9, "weight_decay": 0.0},
}


def state_bytes(opt: Any) -> int:
    import torch

    seen, total = set(), 0
    for state in opt.state.values():
        for v in (state.values() if isinstance(state, dict) else []):
            if torch.is_tensor(v) and id(v) not in seen:
                seen.add(id(v))
                total += v.numel() * v.element_size()
    return total


def counting_batches(steps: int, batch: int, seq_len: int, vocab: int) -> list[Any]:
    """Learnable tokens (random tokens cannot go below ln(vocab)): each row counts from a random start by a
    stride of 1, 2 or 3 modulo the vocabulary, so the loss falls as a model infers the stride."""
    import torch

    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, vocab, (steps, batch, 1), generator=g)
    stride = torch.randint(1, 4, (steps, batch, 1), generator=g)
    return list((start + stride * torch.arange(seq_len)) % vocab)


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from automodel.builtin import optim
    from automodel.train import NamedParameters
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    spec = {**LLAMA_5M, "hidden_size": args.hidden, "num_hidden_layers": args.layers}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **spec)).to(args.device).train()
    params = NamedParameters.of(model)
    opt = getattr(optim, name)(params, **OPTIMIZERS[name])
    batches = counting_batches(args.steps, args.batch, args.seq_len, spec["vocab_size"])
    step_times, losses = [], []
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for i in range(args.steps):
        ids = batches[i].to(args.device)
        logits = model(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        sync()
        t0 = time.perf_counter()
        opt.step()
        sync()
        step_times.append(time.perf_counter() - t0)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    n = sum(p.numel() for p in params)
    return {"step_ms": 1000 * statistics.median(step_times[2:] or step_times), "state_bytes": state_bytes(opt),
            "params": n, "losses": losses, "groups": len(opt.param_groups)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=BATCH // 2)
    ap.add_argument("--seq-len", type=int, default=SEQ // 2)
    ap.add_argument("--hidden", type=int, default=LLAMA_5M["hidden_size"])
    ap.add_argument("--layers", type=int, default=LLAMA_5M["num_hidden_layers"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(OPTIMIZERS))
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(OPTIMIZERS)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
            print(f"{name}: skipped (pip install bitsandbytes)", file=sys.stderr)
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        results[name] = run(name, args)
    base = results.get("adamw")
    last = args.steps
    print(f"\noptimizers on a {args.layers}-layer, hidden-{args.hidden} Llama ({next(iter(results.values()))['params'] / 1e6:.1f}M "
          f"parameters), batch {args.batch} x {args.seq_len} tokens, {args.steps} steps, {args.device}\n")
    print(f"| optimizer | lr | step ms | x adamw | state MB | bytes/param | x adamw | loss@1 | loss@10 | loss@{last} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        t_ratio = f"{r['step_ms'] / base['step_ms']:.2f}" if base else "-"
        m_ratio = f"{r['state_bytes'] / base['state_bytes']:.2f}" if base and base["state_bytes"] else "-"
        ls = r["losses"]
        print(f"| {name} | {OPTIMIZERS[name]['lr']:g} | {r['step_ms']:.1f} | {t_ratio} | {r['state_bytes'] / 2**20:.2f} | "
              f"{r['state_bytes'] / r['params']:.2f} | {m_ratio} | {ls[0]:.3f} | {ls[min(9, last - 1)]:.3f} | {ls[-1]:.3f} |")


if __name__ == "__main__":
    main()
