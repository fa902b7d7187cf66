"""QLoRA vs LoRA, side by side: base parameter memory (NF4 / int8 vs bf16 / fp32), peak step memory and tokens/s.

    python tests/benchmarks/bench_qlora.py                       # CPU: the 5M benchmark Llama + a 0.2B one
    python tests/benchmarks/bench_qlora.py --device cuda --large 1b --seq-len 1024

Part 1, base parameter memory (in this process, no training): the benchmark model (``LLAMA_5M`` of
``_common``) and a larger one (``--large``: ``200m``, a 0.2B Llama, or ``1b``, Llama-3.2-1B's shapes), loaded
with ``hf`` in fp32 and bf16 and with ``hf_quantized`` in NF4 (bitsandbytes, with and without double
quantization; torchao) and int8. The bytes are the real storage of the frozen weights: packed 4-bit data
plus the quantization state (absmax, code, nested scales), embeddings, norms and the output head (kept in
the loader's ``dtype``, bf16 here, ``upcast_unquantized: false``, so the table compares the weights alone).

Part 2, one training step (each variant a real ``automodel run`` in its own process, same model, data,
batch, steps): plain LoRA on the full-precision base vs QLoRA on the NF4 base (bitsandbytes, torchao),
all-linear adapters r=16. Peak memory is the run's ``peak_mem_gb`` (CUDA max allocated; on CPU the process's
max RSS, which includes ~0.5 GB of Python/torch runtime). tokens/s: the median over the steps after the first,
best of ``--repeats`` interleaved repeats (shared machines are noisy). ``state MiB``: what training holds
whatever the activations (frozen base as stored + adapters + their gradients + two fp32 AdamW moments),
built in this process with the same loader and transform.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LLAMA_1B, LLAMA_5M  # noqa: E402
from automodel.testing import make_config, read_metrics, run_cli, tiny_model  # noqa: E402

LLAMA_200M: dict[str, Any] = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                                  num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=2048)
LARGE = {"200m": LLAMA_200M, "1b": LLAMA_1B}

MEMORY_VARIANTS: dict[str, dict[str, Any] | None] = {
    "fp32 (hf)": None,
    "bf16 (hf)": None,
    "nf4 bnb + double quant": {"backend": "bitsandbytes", "bits": 4, "quant_type": "nf4", "double_quant": True},
    "nf4 bnb": {"backend": "bitsandbytes", "bits": 4, "quant_type": "nf4", "double_quant": False},
    "nf4 torchao": {"backend": "torchao", "bits": 4},
    "int8 bnb": {"backend": "bitsandbytes", "bits": 8},
}

ADAPTER = {"r": 16, "alpha": 32, "target_modules": "all-linear"}


def _available(spec: dict[str, Any] | None) -> bool:
    return spec is None or importlib.util.find_spec(spec["backend"]) is not None


def base_memory(model_dir: Path, device: str) -> dict[str, tuple[int, int]]:
    """Variant -> (bytes of the frozen weights, bytes of those in quantized layers)."""
    import torch
    from automodel.context import Context
    from automodel_qlora.backends import quantized_layers
    from automodel_qlora.loader import hf_quantized
    from automodel_qlora.memory import tensor_bytes
    from transformers import AutoModelForCausalLM

    out: dict[str, tuple[int, int]] = {}
    for name, spec in MEMORY_VARIANTS.items():
        if not _available(spec):
            continue
        if spec is None:
            dtype = torch.float32 if name.startswith("fp32") else torch.bfloat16
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
            linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()}
        else:
            ctx = Context(device=device, config={}, extras={})
            ctx.print = lambda *a, **k: None  # type: ignore[method-assign]
            model, _ = hf_quantized(ctx, str(model_dir), dtype="bfloat16", upcast_unquantized=False, **spec)
            linear = set(quantized_layers(model))
        seen: set[int] = set()
        total = in_linear = 0
        for mname, module in model.named_modules():
            for p in module.parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                n = tensor_bytes(p)
                total += n
                in_linear += n if mname in linear else 0
        out[name] = (total, in_linear)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def print_memory(title: str, results: dict[str, tuple[int, int]]) -> None:
    fp32, bf16 = results["fp32 (hf)"], results["bf16 (hf)"]
    print(f"\n{title}")
    head = (f"{'base weights':<24} {'all MiB':>9} {'vs bf16':>8} {'vs fp32':>8} {'linear MiB':>11} {'vs bf16':>8} "
            f"{'bits/weight':>11}")
    print(head)
    print("-" * len(head))
    linear_values = bf16[1] / 2  # bf16: 2 bytes per weight
    for name, (total, lin) in results.items():
        print(f"{name:<24} {total / 2**20:>9.1f} {total / bf16[0]:>7.2f}x {total / fp32[0]:>7.2f}x {lin / 2**20:>11.1f} "
              f"{lin / bf16[1]:>7.2f}x {8 * lin / linear_values:>11.2f}")


def step_variants(model_dir: Path, dtype: str) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    lora = {"name": "lora", **ADAPTER}
    qlora = {"name": "qlora", **ADAPTER}
    quantized = {"name": "hf_quantized", "pretrained": str(model_dir), "dtype": dtype}
    variants = {
        "lora": ({"name": "hf", "pretrained": str(model_dir), "dtype": dtype}, [lora]),
        "qlora nf4 bnb": ({**quantized, "backend": "bitsandbytes"}, [qlora]),
        "qlora nf4 torchao": ({**quantized, "backend": "torchao"}, [qlora]),
    }
    return {k: v for k, v in variants.items() if "torchao" not in k or importlib.util.find_spec("torchao")}


def training_state_bytes(model_dir: Path, model_cfg: dict[str, Any], transforms: list[dict[str, Any]], device: str) -> int:
    """Bytes of what training keeps whatever the activations: the frozen base (real storage), the adapters,
    their gradients and two AdamW moments (fp32), built in this process with the run's loader and transform."""
    import torch
    from automodel.context import Context
    from automodel_lora.transform import LoRA
    from automodel_qlora.memory import tensor_bytes
    from automodel_qlora.transform import QLoRA
    from transformers import AutoModelForCausalLM

    ctx = Context(device=device, config={"seed": 0}, extras={})
    ctx.print = lambda *a, **k: None  # type: ignore[method-assign]
    args = {k: v for k, v in model_cfg.items() if k != "name"}
    if model_cfg["name"] == "hf":
        model = AutoModelForCausalLM.from_pretrained(args["pretrained"], dtype=getattr(torch, args["dtype"])).to(device)
    else:
        from automodel_qlora.loader import hf_quantized

        model, _ = hf_quantized(ctx, **args)
    for t in transforms:
        cls = QLoRA if t["name"] == "qlora" else LoRA
        model = cls(**{k: v for k, v in t.items() if k != "name"}).apply(model, ctx)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += tensor_bytes(p) + (p.numel() * (p.element_size() + 8) if p.requires_grad else 0)
    del model
    gc.collect()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--large", default="200m", choices=sorted(LARGE))
    ap.add_argument("--dtype", default=None, help="dtype of the training runs (default: float32 on cpu, bfloat16 on cuda)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-steps", action="store_true", help="part 1 only")
    args = ap.parse_args()
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")

    root = Path(tempfile.mkdtemp(prefix="bench_qlora_"))
    small = tiny_model(root / "small", **LLAMA_5M)
    large = tiny_model(root / "large", **LARGE[args.large])
    for label, model_dir, cfg in (("benchmark model (LLAMA_5M)", small, LLAMA_5M), (f"larger model ({args.large})", large, LARGE[args.large])):
        results = base_memory(model_dir, args.device)
        print_memory(f"{label}: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']}; "
                     f"device {args.device}", results)
    if args.skip_steps:
        return

    variants = step_variants(small, dtype)
    numbers: dict[str, dict[str, Any]] = {name: {"tps": [], "peak": [], "loss": []} for name in variants}
    for name, (model_cfg, transforms) in variants.items():
        numbers[name]["state"] = training_state_bytes(small, model_cfg, transforms, args.device)
    for rep in range(args.repeats):
        for name, (model_cfg, transforms) in variants.items():
            d = root / f"{name.replace(' ', '_')}_{rep}"
            cfg = make_config(
                d, small, model=model_cfg, transforms=transforms,
                dataset={"name": "mock", "num_samples": args.batch * (args.steps + 1), "seq_len": args.seq_len},
                optimizer={"name": "adamw", "lr": 1.0e-4},
                step_scheduler={"global_batch_size": args.batch, "local_batch_size": args.batch,
                                "max_steps": args.steps, "log_every_steps": 1},
                device=args.device,
            )
            run_cli("run", cfg, cwd=d, timeout=3600)
            metrics = read_metrics(d / "run")
            numbers[name]["tps"].append(statistics.median(m["tokens_per_s"] for m in metrics[1:]))
            numbers[name]["peak"].append(metrics[-1]["peak_mem_gb"])
            numbers[name]["loss"].append(metrics[-1]["loss"])
            print(f"  {name} (repeat {rep + 1}/{args.repeats}): {numbers[name]['tps'][-1]:,.0f} tokens/s", file=sys.stderr, flush=True)

    base = numbers["lora"]
    print(f"\ntraining step: benchmark model, batch {args.batch} x {args.seq_len} tokens, {args.steps} steps, {dtype}, "
          f"device {args.device}, adapters {ADAPTER}")
    head = (f"{'variant':<19} {'state MiB':>10} {'vs lora':>8} {'peak GB':>8} {'vs lora':>8} {'tokens/s':>10} {'vs lora':>8} "
            f"{'last loss':>10}")
    print(head)
    print("-" * len(head))
    for name, r in numbers.items():
        peak, tps = min(r["peak"]), max(r["tps"])
        print(f"{name:<19} {r['state'] / 2**20:>10.1f} {r['state'] / base['state']:>7.2f}x {peak:>8.3f} {peak / min(base['peak']):>7.2f}x {tps:>10,.0f} {tps / max(base['tps']):>7.2f}x "
              f"{r['loss'][-1]:>10.4f}")
    print(f"\nrun directories: {root}")


if __name__ == "__main__":
    main()
