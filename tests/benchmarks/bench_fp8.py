"""FP8 training vs bf16 (or fp32 on CPU), per backend: tokens/s, speed-up and loss difference.

    python tests/benchmarks/bench_fp8.py                       # CPU: a small Llama, FP8 emulated (overhead only)
    python tests/benchmarks/bench_fp8.py --gpu                 # GPU: Llama-3.2-1B layer shapes, bf16, 4 layers
    python tests/benchmarks/bench_fp8.py --gpu --shape 8b      # Llama-3-8B layer shapes (hidden 4096, MLP 14336)

Each variant is a real ``automodel run`` (same random-init model, mock data, batch and steps) in its
own process: ``baseline`` (no transform) and ``fp8`` with each backend that is installed and runs
here (``torch``; ``torchao``; ``transformer_engine`` on a GPU only). Reported per variant: median
tokens/s over the logged steps after ``--warmup``, the speed-up over the baseline, and the mean
absolute difference of the loss curve from the baseline's.

On CPU both FP8 backends emulate the FP8 matmuls in float32 (``torch._scaled_mm`` on CPU is a slow
reference kernel), so the CPU numbers measure the quantization overhead, not a speed-up. FP8 pays off
on GPUs with FP8 tensor cores (compute capability 8.9+) and large matmuls: the 1B/8B shapes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from automodel.testing import make_config, read_metrics, run_cli, tiny_model

SHAPES: dict[str, dict[str, Any]] = {  # layer shapes; --layers sets the depth
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "cpu": dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=4, vocab_size=4096),
}


def backends(gpu: bool) -> list[str]:
    out = ["torch"]
    if importlib.util.find_spec("torchao") is not None:
        out.append("torchao")
    if gpu and importlib.util.find_spec("transformer_engine") is not None:
        out.append("transformer_engine")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="CUDA, bf16, Llama-3.2-1B (or --shape 8b) layer shapes")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: 1b with --gpu, cpu without")
    ap.add_argument("--layers", type=int, default=None, help="default: 4 on GPU, 2 on CPU")
    ap.add_argument("--seq-len", type=int, default=None, help="default: 2048 on GPU, 128 on CPU")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step; default: 8 on GPU, 8 on CPU")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--backends", default=None, help="comma-separated subset of torch,torchao,transformer_engine")
    ap.add_argument("--recipe", default="tensorwise")
    args = ap.parse_args()
    shape = args.shape or ("1b" if args.gpu else "cpu")
    layers = args.layers or (4 if args.gpu else 2)
    seq = args.seq_len or (2048 if args.gpu else 128)
    batch = args.batch or 8
    names = args.backends.split(",") if args.backends else backends(args.gpu)

    root = Path(tempfile.mkdtemp(prefix="bench_fp8_"))
    model_dir = tiny_model(root, num_hidden_layers=layers, max_position_embeddings=max(seq, 64),
                           tie_word_embeddings=shape == "1b", **SHAPES[shape])
    variants: dict[str, list[dict[str, Any]]] = {"baseline": []}
    for b in names:
        variants[f"fp8-{b}"] = [{"name": "fp8", "backend": b, "recipe": args.recipe}]
    dtype = "bfloat16" if args.gpu else "float32"
    results: dict[str, dict[str, Any]] = {}
    for name, transforms in variants.items():
        d = root / name
        cfg = make_config(
            d, model_dir, transforms=transforms,
            model={"name": "hf", "pretrained": str(model_dir), "dtype": dtype},
            dataset={"name": "mock", "num_samples": batch * (args.steps + 1), "seq_len": seq, "vocab_size": SHAPES[shape]["vocab_size"]},
            optimizer={"name": "adamw", "lr": 1.0e-4},
            step_scheduler={"global_batch_size": batch, "local_batch_size": batch if not args.gpu else 2,
                            "max_steps": args.steps, "log_every_steps": 1},
            device="cuda" if args.gpu else "cpu",
        )
        proc = run_cli("run", cfg, cwd=d, timeout=3600, check=False)
        if proc.returncode:
            print(f"  {name}: failed ({proc.returncode}): {(proc.stdout + proc.stderr).strip().splitlines()[-1]}", file=sys.stderr)
            continue
        metrics = read_metrics(d / "run")
        results[name] = {"tps": statistics.median(m["tokens_per_s"] for m in metrics[args.warmup:]),
                         "loss": [m["loss"] for m in metrics], "peak": max(m["peak_mem_gb"] for m in metrics)}
        print(f"  {name}: {results[name]['tps']:,.0f} tokens/s", file=sys.stderr, flush=True)

    base = results.get("baseline")
    print(f"\nmodel: Llama {shape} layer shapes x {layers} layers, {dtype}; batch {batch} x {seq} tokens, "
          f"{args.steps} steps, recipe {args.recipe}, {'cuda' if args.gpu else 'cpu (FP8 emulated)'}\n")
    head = f"{'variant':<22} {'tokens/s':>10} {'speed-up':>9} {'peak GB':>8} {'|loss - baseline|':>18} {'final loss':>11}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        diff = statistics.mean(abs(a - b) for a, b in zip(r["loss"], base["loss"])) if base else float("nan")
        speed = f"{r['tps'] / base['tps']:.2f}x" if base else "-"
        print(f"{name:<22} {r['tps']:>10,.0f} {speed:>9} {r['peak']:>8.2f} {diff:>18.4f} {r['loss'][-1]:>11.4f}")
    (root / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nraw numbers: {root / 'results.json'}")


if __name__ == "__main__":
    main()
