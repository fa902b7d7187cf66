"""One entry point for the benchmarks (``nox -s bench``): automodel next to its peers, the loss kernels and
the CLI start-up, measured in one run on this machine, printed as one table with ratios.

    python tests/benchmarks/run_all.py                 # ~10 min on a 2-core CPU
    python tests/benchmarks/run_all.py --quick         # a few minutes: fewer steps, rounds and repeats
    python tests/benchmarks/run_all.py --install-peers # first pip install torchtune / NeMo Automodel into /tmp venvs
    python tests/benchmarks/run_all.py --plugins       # then also every plugin's bench_*.py (their own tables)
    python tests/benchmarks/run_all.py --gpu           # GPU mode: Llama-3.2-1B shapes, bf16 (see bench_peers.py)

Parts (each also runs alone): ``bench_peers.py`` (tokens/s, peak memory, start -> step 1 of automodel, a
plain PyTorch loop, the HF Trainer, torchtune, NeMo Automodel), the loss step of ``bench_triton_ce.py``
(builtin cross-entropy on full logits vs chunked / Triton fused, memory and time) and ``bench_startup.py``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import HERE, table


def loss_rows(tokens: int, hidden: int, vocab: int, dtype_name: str, repeats: int) -> list[dict[str, Any]]:
    """Peak memory above the inputs and time of one forward + backward of lm_head + loss, per method
    (the measuring code of bench_triton_ce.py); full-logits ``masked_ce`` is the reference."""
    import torch
    from bench_triton_ce import contenders, make_inputs, measure

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype_name)
    names = ["torch_ce", "chunked_ce"] + (["triton_ce", "liger", "cce"] if device.type == "cuda" else [])
    warm = make_inputs(64, 64, 1000, dtype, device)  # one-time allocations (thread pools) are not the step's
    for step in contenders(*warm, names).values():
        step()
    del warm
    h, w, y, n = make_inputs(tokens, hidden, vocab, dtype, device)
    rows = []
    for name, step in contenders(h, w, y, n, names).items():
        peaks, secs = [], []
        for _ in range(1 if device.type == "cuda" else repeats):  # CUDA: measure() repeats itself
            gc.collect()
            peak, sec = measure(step, device, repeats)
            peaks.append(peak)
            secs.append(sec)
        rows.append({"name": name, "peak_gb": statistics.median(peaks) / 2**30, "ms": 1e3 * statistics.median(secs)})
        print(f"  {name:<11} peak {rows[-1]['peak_gb']:.3f} GiB  {rows[-1]['ms']:.0f} ms", flush=True)
    if device.type != "cuda":
        rows.append({"name": "triton_ce", "error": "not run on CPU: Triton kernels need a GPU (the interpreter is far too slow); "
                     "on CPU the loss falls back to chunked_ce"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: fewer steps, rounds and repeats")
    ap.add_argument("--install-peers", action="store_true", help="pip install torchtune / nemo-automodel into throwaway venvs first")
    ap.add_argument("--peers", default=None, help="comma-separated subset of bench_peers.py's contenders")
    ap.add_argument("--gpu", action="store_true", help="GPU mode (Llama-3.2-1B shapes, bf16, FSDP2 over all GPUs, +triton_ce, +fp8)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: peers, loss, startup")
    ap.add_argument("--plugins", action="store_true", help="also run the plugin benchmarks (bench_fsdp2.py, ...) after the table")
    ap.add_argument("--json", type=Path, help="write all results here")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))

    import torch

    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
    }
    print(f"benchmarks on {results['machine']}, {results['date']}", flush=True)
    if "peers" not in skip:
        import bench_peers

        print("\n== training: automodel vs its peers ==", flush=True)
        peer_args = ["--quick"] if a.quick else []
        peer_args += ["--install-peers"] if a.install_peers else []
        peer_args += ["--gpu"] if a.gpu else []
        peer_args += ["--peers", a.peers] if a.peers else []
        results["peers"] = bench_peers.main(peer_args)
    if "loss" not in skip:
        shape = (8192, 2048, 128256, "bfloat16") if a.gpu else ((1024, 1024, 32000, "float32") if a.quick else (2048, 1024, 32000, "float32"))
        print(f"\n== loss step: tokens={shape[0]} hidden={shape[1]} vocab={shape[2]} {shape[3]} ==", flush=True)
        results["loss"] = loss_rows(*shape, repeats=2 if a.quick else 3)
        results["loss_shape"] = shape
    if "startup" not in skip:
        import bench_startup

        print("\n== start-up ==", flush=True)
        results["startup"] = bench_startup.measure(3 if a.quick else 7)

    print("\n" + summary(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str))
    if a.plugins:
        rc = 0
        for script in sorted(HERE.glob("bench_*.py")):
            if script.stem in ("bench_peers", "bench_startup", "bench_core"):
                continue
            print(f"\n== {script.name} ==", flush=True)
            rc |= subprocess.call([sys.executable, str(script)])
        return rc
    return 0


def summary(results: dict[str, Any]) -> str:
    """The single table: every measured number with its reference and ratio."""
    rows: list[list[str]] = []
    notes: list[str] = []
    peers = results.get("peers") or []
    base = next((r for r in peers if r["name"] == "plain" and "tokens_per_s" in r), None)
    for r in peers:
        if "error" in r:
            rows.append([f"train {r['name']}", "-", "-", "-", "-"])
            notes.append(f"{r['name']}: {r['error']}")
            continue
        rows.append([f"train {r['name']}", f"{r['tokens_per_s']:,.0f} tok/s", f"{r['vs_plain']:.3f}" if base else "-",
                     f"{r['peak_rss_gb']:.2f} GiB", f"{r['first_step_s']:.1f} s"])
    loss = results.get("loss") or []
    ref = next((r for r in loss if r["name"] == "torch_ce" and "peak_gb" in r), None)
    for r in loss:
        if "error" in r:
            rows.append([f"loss {r['name']}", "-", "-", "-", "-"])
            notes.append(f"loss {r['name']}: {r['error']}")
            continue
        rows.append([f"loss {r['name']}", f"{r['ms']:,.0f} ms", f"{ref['ms'] / r['ms']:.2f}x speed" if ref else "-",
                     f"{r['peak_gb']:.3f} GiB", f"{ref['peak_gb'] / r['peak_gb']:.1f}x less" if ref else "-"])
    py = next((r for r in results.get("startup") or [] if r["name"] == "python -c pass"), None)
    for r in results.get("startup") or []:
        rows.append([r["name"], f"{r['seconds']:.2f} s", f"+{r['seconds'] - py['seconds']:.2f} s over python" if py else "-",
                     f"{r['peak_rss_gb']:.2f} GiB" if "peak_rss_gb" in r else "", ""])
    header = ["benchmark", "result", "ratio", "memory", "memory ratio / start->step 1"]
    out = [table(rows, header)]
    if base:
        out.append("train: tokens/s ratio vs the plain PyTorch loop (median of interleaved rounds); memory: peak RSS of the process")
    if ref:
        out.append("loss: speed and memory relative to the builtin cross-entropy on full logits (masked_ce); memory above the inputs")
    out += [f"  {n}" for n in notes]
    ours = next((r for r in peers if r["name"] == "automodel" and "vs_plain" in r), None)
    if ours:
        out.append(f"automodel vs plain PyTorch: {ours['vs_plain']:.3f} (overhead {100 * (1 - ours['vs_plain']):+.1f}%; goal < 3%)")
    return "\n".join(out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
