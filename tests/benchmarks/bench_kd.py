"""Peak memory and time of one knowledge-distillation loss step (both lm_head projections + KD + CE,
forward + backward): the naive computation on full logits vs automodel-kd's fused, token-chunked loss.

    python tests/benchmarks/bench_kd.py                          # tokens=4096 vocab=32000, fp32, CPU
    python tests/benchmarks/bench_kd.py --tokens 16384 --vocab 128256 --dtype bfloat16   # on a GPU

Both contenders get the same inputs: the student's final hidden states ``[tokens, Ds]`` (with grad)
and lm_head ``[V, Ds]`` (with grad), the teacher's hidden states ``[tokens, Dt]`` and lm_head
``[V, Dt]`` (frozen), labels with 10% prompt tokens (-100).

* ``naive``: ``student_logits = hs @ Ws^T`` and ``teacher_logits = ht @ Wt^T`` (no grad), then
  :func:`automodel_kd.fused.reference_kd_loss` (fp32 log_softmax of both, ``F.kl_div``, ``F.cross_entropy``)
  and autograd: what a plain KD step does (torchtune's / TRL's KD losses take full logits the same way).
* ``fused``: :func:`automodel_kd.fused.fused_linear_kd` (chunks of tokens; gradients in closed form).
* ``liger`` (GPU, when ``liger-kernel`` is installed): ``LigerFusedLinearJSD`` (JSD only: run with
  ``--kind jsd``).

Peak memory is what the step allocates above its inputs, the gradients of ``hs`` and ``Ws``
included (CPU: peak RSS through ``/proc/self/clear_refs``, see bench_triton_ce.py; CUDA:
``max_memory_allocated``). The peak of ``naive`` grows with tokens x vocab; ``fused`` stays at the
gradients plus a few ``[chunk, vocab]`` blocks.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_triton_ce import measure  # noqa: E402  (peak RSS / CUDA peak of one step)

GiB = 2**30


def make_inputs(tokens: int, ds: int, dt: int, vocab: int, dtype: torch.dtype, device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    hs = torch.randn(tokens, ds, generator=g, device=device).to(dtype).requires_grad_(True)
    ws = (torch.randn(vocab, ds, generator=g, device=device) * ds**-0.5).to(dtype).requires_grad_(True)
    ht = torch.randn(tokens, dt, generator=g, device=device).to(dtype)
    wt = (torch.randn(vocab, dt, generator=g, device=device) * dt**-0.5 * 2).to(dtype)
    y = torch.randint(0, vocab, (tokens,), generator=g, device=device)
    y[: tokens // 10] = -100
    n = (y != -100).sum().float()
    return hs, ws, ht, wt, y, n


def contenders(inputs, opts, names):
    from automodel_kd.fused import fused_linear_kd, reference_kd_loss

    hs, ws, ht, wt, y, n = inputs

    def step(compute):
        def run() -> None:
            loss = compute()
            loss.backward()
            hs.grad = ws.grad = None

        return run

    def naive():
        with torch.no_grad():
            teacher_logits = ht @ wt.t()
        return reference_kd_loss(hs @ ws.t(), teacher_logits, y, n, opts)

    out = {}
    if "fused" in names:
        out["fused"] = step(lambda: fused_linear_kd(hs, ws, ht, wt, y, n, opts))
    if "naive" in names:
        out["naive"] = step(naive)
    if "liger" in names:
        try:
            from liger_kernel.transformers import LigerFusedLinearJSD

            jsd = LigerFusedLinearJSD(jsd_beta=opts.beta, temperature=opts.temperature)
            out["liger"] = step(lambda: jsd(hs, ws, ht, wt, y))
        except ImportError:
            print("liger: not installed (pip install liger-kernel) - skipped")
    return out


def main(argv: list[str] | None = None) -> int:
    from automodel_kd.fused import KDOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--student-hidden", type=int, default=256)
    p.add_argument("--teacher-hidden", type=int, default=512)
    p.add_argument("--kind", default="forward_kl", choices=["forward_kl", "reverse_kl", "jsd"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3, help="timed steps per method (GPU)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    dtype = getattr(torch, args.dtype)
    T, V = args.tokens, args.vocab
    opts = KDOptions(kind=args.kind, temperature=2.0, kd_weight=0.5)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"KD loss step ({args.kind}, T=2, kd_weight 0.5, forward + backward): tokens={T} vocab={V} "
          f"student hidden={args.student_hidden} teacher hidden={args.teacher_hidden} {args.dtype} on {where}")
    print(f"one [tokens, vocab] fp32 logits tensor: {T * V * 4 / GiB:.3f} GiB; gradients of the inputs (in every "
          f"peak): {(T + V) * args.student_hidden * dtype.itemsize / GiB:.3f} GiB")
    names = ["fused", "naive"] + (["liger"] if device.type == "cuda" and args.kind == "jsd" else [])
    # one-time allocations (thread pools, oneDNN) must not count as the step's
    for fn in contenders(make_inputs(64, 32, 32, 1000, dtype, device), opts, names).values():
        fn()
    inputs = make_inputs(T, args.student_hidden, args.teacher_hidden, V, dtype, device)
    with torch.no_grad():  # the two agree on these inputs
        from automodel_kd.fused import fused_linear_kd, reference_kd_loss

        hs, ws, ht, wt, y, n = inputs
        a = float(fused_linear_kd(hs, ws, ht, wt, y, n, opts))
        b = float(reference_kd_loss(hs @ ws.t(), ht @ wt.t(), y, n, opts))
        print(f"loss: fused {a:.6f}, naive {b:.6f} (|diff| {abs(a - b):.2e})")
    gc.collect()
    peaks, times = {}, {}
    for name, fn in contenders(inputs, opts, names).items():
        peaks[name], times[name] = measure(fn, device, args.repeats)
        gc.collect()
        print(f"  {name:<6} peak {peaks[name] / GiB:8.3f} GiB   {times[name] * 1e3:10.1f} ms", flush=True)
    print()
    print("| loss | peak loss-step memory | x naive | time | x naive |")
    print("|---|---|---|---|---|")
    for name in peaks:
        print(f"| {name} | {peaks[name] / GiB:.3f} GiB | {peaks[name] / peaks['naive']:.2f} | {times[name] * 1e3:.0f} ms | "
              f"{times[name] / times['naive']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
