"""Peak memory (and time) of one loss step, forward + backward, of the lm_head + cross-entropy:
builtin ``masked_ce`` on full logits vs ``chunked_ce`` / ``triton_ce`` (and Liger-Kernel / Cut
Cross-Entropy when installed, on a GPU).

    python tests/benchmarks/bench_triton_ce.py                      # tokens=8192 hidden=2048 vocab=128256, bf16
    python tests/benchmarks/bench_triton_ce.py --tokens 2048 --full-reference

Peak memory is what the step allocates on top of its inputs (hidden states, lm_head weight, labels),
gradients included:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
* CPU: the kernel's peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) minus
  the resident size before the step. Allocations above 32 MiB are mmapped by glibc and returned on
  free, so this tracks tensor memory; small allocations kept by malloc only make it conservative.
  The Triton interpreter is far too slow for this shape, so on CPU ``triton_ce`` is not run (its
  memory is the chunked algorithm's: same chunks, fewer temporaries). The full-logits reference
  needs ~15 GB at 8192 tokens, so on CPU it is measured at tokens/8 and tokens/4 and extrapolated
  linearly (its memory is exactly affine in tokens) unless ``--full-reference`` is given.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable

import torch

GiB = 2**30


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(step: Callable[[], None], device: torch.device, repeats: int) -> tuple[float, float]:
    """(peak bytes above the starting point, seconds per step) of ``step``."""
    gc.collect()
    if device.type == "cuda":
        step()  # warm-up: Triton compilation, cuBLAS workspaces
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - base
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
        return peak, (time.perf_counter() - start) / repeats
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS")
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    return (_rss_kb("VmHWM") - base) * 1024, seconds


# --------------------------------------------------------------------------------------------------
# The contenders: each returns a function running forward + backward and dropping the gradients
# --------------------------------------------------------------------------------------------------


def make_inputs(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g, device=device).to(dtype).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g, device=device) * hidden**-0.5).to(dtype).requires_grad_(True)
    y = torch.randint(0, vocab, (tokens,), generator=g, device=device)
    y[: tokens // 10] = -100  # a prompt: 10% of the tokens take no loss
    n = (y != -100).sum().float()
    return h, w, y, n


def _step(h: torch.Tensor, w: torch.Tensor, compute: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        loss = compute()
        loss.backward()
        h.grad = None
        w.grad = None

    return run


def contenders(h, w, y, n, names: list[str]) -> dict[str, Callable[[], None]]:
    from automodel.builtin.losses import MaskedCrossEntropy
    from automodel_triton_ce.loss import ChunkedCrossEntropy, FusedLinearCrossEntropy

    out = {}
    if "torch_ce" in names:
        masked = MaskedCrossEntropy()
        out["torch_ce"] = _step(h, w, lambda: masked(labels=y, num_label_tokens=n, logits=h @ w.t()))
    for name, cls in (("chunked_ce", ChunkedCrossEntropy), ("triton_ce", FusedLinearCrossEntropy)):
        if name in names:
            fn = cls()
            out[name] = _step(h, w, lambda fn=fn: fn(labels=y, num_label_tokens=n, hidden_states=h, lm_head_weight=w))
    if "liger" in names:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss(reduction="sum")
            out["liger"] = _step(h, w, lambda: liger(w, h, y) / n)
        except ImportError:
            print("liger: not installed (pip install liger-kernel) - skipped")
    if "cce" in names:
        try:
            from cut_cross_entropy import linear_cross_entropy

            out["cce"] = _step(h, w, lambda: linear_cross_entropy(h, w, y, reduction="sum") / n)
        except ImportError:
            print("cce: not installed (pip install cut-cross-entropy) - skipped")
    return out


def check_against_torch(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, device: torch.device) -> None:
    """Loss and gradients of triton_ce / chunked_ce vs the builtin loss on the same inputs (GPU runs)."""
    from automodel.builtin.losses import MaskedCrossEntropy
    from automodel_triton_ce.loss import ChunkedCrossEntropy, FusedLinearCrossEntropy

    h, w, y, n = make_inputs(tokens, hidden, vocab, dtype, device)
    results = {}
    for name, fn in (("torch_ce", lambda: MaskedCrossEntropy()(labels=y, num_label_tokens=n, logits=h @ w.t())),
                     ("triton_ce", lambda: FusedLinearCrossEntropy()(labels=y, num_label_tokens=n, hidden_states=h, lm_head_weight=w)),
                     ("chunked_ce", lambda: ChunkedCrossEntropy()(labels=y, num_label_tokens=n, hidden_states=h, lm_head_weight=w))):
        loss = fn()
        loss.backward()
        results[name] = (loss.detach().float(), h.grad.float(), w.grad.float())
        h.grad = w.grad = None
    ref = results["torch_ce"]
    for name in ("triton_ce", "chunked_ce"):
        diffs = [float((a - b).abs().max()) for a, b in zip(results[name], ref)]
        print(f"check at tokens={tokens}: {name} vs torch_ce max |diff| loss {diffs[0]:.2e}  dh {diffs[1]:.2e}  dW {diffs[2]:.2e}")


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=5, help="timed steps per method (GPU)")
    p.add_argument("--full-reference", action="store_true", help="on CPU: run torch_ce at the full shape too (~15 GB)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    dtype = getattr(torch, args.dtype)
    T, D, V = args.tokens, args.hidden, args.vocab
    print(f"loss step (lm_head matmul + cross-entropy, forward + backward): tokens={T} hidden={D} vocab={V} {args.dtype} on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (' + str(torch.get_num_threads()) + ' threads)'}")
    print(f"inputs: hidden states {T * D * dtype.itemsize / GiB:.3f} GiB, lm_head weight {V * D * dtype.itemsize / GiB:.3f} GiB "
          f"(its gradient is part of every method's peak)")

    peaks: dict[str, float] = {}
    times: dict[str, float] = {}
    notes: dict[str, str] = {}
    if device.type == "cuda":
        names = ["torch_ce", "chunked_ce", "triton_ce", "liger", "cce"]
    else:
        names = ["chunked_ce"] + (["torch_ce"] if args.full_reference else [])
    if device.type == "cpu":  # one-time allocations (thread pools, oneDNN) must not count as the step's
        hw = make_inputs(64, 64, 1000, dtype, device)
        for step in contenders(*hw, names + ["torch_ce"]).values():
            step()
        del hw, step
    if device.type == "cuda":
        check_against_torch(min(T, 1024), D, V, dtype, device)
    h, w, y, n = make_inputs(T, D, V, dtype, device)
    for name, step in contenders(h, w, y, n, names).items():
        peaks[name], times[name] = measure(step, device, args.repeats)
        print(f"  {name:<11} peak {peaks[name] / GiB:8.3f} GiB   {times[name] * 1e3:10.1f} ms", flush=True)
    del h, w, y, n
    gc.collect()

    if "torch_ce" not in peaks:  # CPU: measure the full-logits reference at two smaller sizes, extrapolate
        pts = []
        for t in (T // 8, T // 4):
            h, w, y, n = make_inputs(t, D, V, dtype, device)
            step = contenders(h, w, y, n, ["torch_ce"])["torch_ce"]
            peak, sec = measure(step, device, args.repeats)
            pts.append((t, peak, sec))
            print(f"  torch_ce    peak {peak / GiB:8.3f} GiB   {sec * 1e3:10.1f} ms   (measured at tokens={t})", flush=True)
            del h, w, y, n, step
            gc.collect()
        (t1, p1, s1), (t2, p2, s2) = pts
        slope = (p2 - p1) / (t2 - t1)
        peaks["torch_ce"] = p1 + slope * (T - t1)
        times["torch_ce"] = s1 + (s2 - s1) / (t2 - t1) * (T - t1)
        notes["torch_ce"] = f"extrapolated from tokens={t1},{t2} ({slope * 1024 / GiB:.3f} GiB per 1K tokens)"
        print(f"  torch_ce    peak {peaks['torch_ce'] / GiB:8.3f} GiB   {times['torch_ce'] * 1e3:10.1f} ms   ({notes['torch_ce']})")

    ref = peaks["torch_ce"]
    grads = (T * D + V * D) * dtype.itemsize  # dh + dW: the output every method must allocate
    print(f"\npeak memory of the loss step vs builtin masked_ce (tokens={T}, hidden={D}, vocab={V}); "
          f"'beyond grads' subtracts the {grads / GiB:.3f} GiB of dh + dW that every method returns:")
    for name in peaks:
        line = (f"  {name:<11} {peaks[name] / GiB:8.3f} GiB   {ref / peaks[name]:6.1f}x less than torch_ce   "
                f"beyond grads {(peaks[name] - grads) / GiB:7.3f} GiB ({(ref - grads) / max(peaks[name] - grads, 1):6.1f}x less)")
        if device.type == "cuda":
            line += f"   time {times[name] * 1e3:8.2f} ms ({times['torch_ce'] / times[name]:.2f}x torch_ce speed)"
        print(line + (f"   [{notes[name]}]" if name in notes else ""))
    best = max(ref / peaks[k] for k in peaks if k in ("chunked_ce", "triton_ce"))
    bound = ref / grads
    print(f"goal >= 24x less memory: {'met' if best >= 24 else 'NOT met'} ({best:.1f}x; a method allocating nothing but "
          f"dh + dW would reach {bound:.1f}x here)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
