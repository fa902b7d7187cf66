"""LoRA / DoRA vs full fine-tuning, side by side: trainable parameters, memory and tokens/s.

    python tests/benchmarks/bench_lora.py                      # CPU, a ~13M-parameter Llama
    python tests/benchmarks/bench_lora.py --device cuda --hidden 2048 --layers 16 --seq-len 1024

Each variant is a real ``automodel run`` (same model, data, batch and steps) in its own process, so that
peak memory is per variant. Reported per variant:

* trainable / total parameters (from the transform applied in this process);
* training-state memory: parameters + gradients + AdamW moments (2 fp32 tensors per trainable
  parameter), computed from the parameter counts and dtype;
* peak memory measured by the run (``peak_mem_gb``: CUDA max allocated, or the process's max RSS on CPU,
  which includes the ~0.5 GB of the Python/torch runtime);
* tokens/s: the median over the logged steps after the first.

Variants run interleaved ``--repeats`` times; the best tokens/s of each is kept (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from automodel.testing import make_config, read_metrics, run_cli, tiny_model

VARIANTS: dict[str, list[dict[str, Any]]] = {
    "full": [],
    "lora": [{"name": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}],
    "lora_qv": [{"name": "lora", "r": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"]}],
    "dora": [{"name": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear", "use_dora": True}],
}


def param_counts(model_dir: Path, transforms: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(total, trainable, bytes per parameter) of the model with ``transforms`` applied."""
    from automodel.context import Context
    from automodel_lora.transform import LoRA
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for t in transforms:
        model = LoRA(**{k: v for k, v in t.items() if k != "name"}).apply(model, Context(config={"seed": 0}))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable, next(model.parameters()).element_size()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default="full,lora,lora_qv,dora")
    args = ap.parse_args()
    names = args.variants.split(",")

    root = Path(tempfile.mkdtemp(prefix="bench_lora_"))
    heads = max(args.hidden // 64, 1)
    model_dir = tiny_model(root, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.6875) // 8 * 8,
                           num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=max(args.seq_len, 64), vocab_size=4096)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        total, trainable, nbytes = param_counts(model_dir, VARIANTS[name])
        # parameters + gradients (trainable) + two fp32 AdamW moments (trainable)
        state_gb = (total * nbytes + trainable * nbytes + trainable * 8) / 2**30
        results[name] = {"total": total, "trainable": trainable, "state_gb": state_gb, "tps": [], "peak": []}

    for rep in range(args.repeats):
        for name in names:
            d = root / f"{name}_{rep}"
            cfg = make_config(
                d, model_dir, transforms=VARIANTS[name],
                dataset={"name": "mock", "num_samples": args.batch * (args.steps + 1), "seq_len": args.seq_len},
                optimizer={"name": "adamw", "lr": 1.0e-4},
                step_scheduler={"global_batch_size": args.batch, "local_batch_size": args.batch,
                                "max_steps": args.steps, "log_every_steps": 1},
                device=args.device,
            )
            run_cli("run", cfg, cwd=d, timeout=3600)
            metrics = read_metrics(d / "run")
            results[name]["tps"].append(statistics.median(m["tokens_per_s"] for m in metrics[1:]))
            results[name]["peak"].append(metrics[-1]["peak_mem_gb"])
            print(f"  {name} (repeat {rep + 1}/{args.repeats}): {results[name]['tps'][-1]:,.0f} tokens/s", file=sys.stderr, flush=True)

    base = results.get("full")
    print(f"\nmodel: Llama hidden {args.hidden}, {args.layers} layers, {results[names[0]]['total'] / 1e6:.1f}M parameters; "
          f"batch {args.batch} x {args.seq_len} tokens, {args.steps} steps, device {args.device}\n")
    head = f"{'variant':<9} {'trainable':>12} {'fraction':>9} {'state GB':>9} {'vs full':>8} {'peak GB':>8} {'vs full':>8} {'tokens/s':>10} {'vs full':>8}"
    print(head)
    print("-" * len(head))
    for name in names:
        r = results[name]
        tps, peak = max(r["tps"]), min(r["peak"])
        rel = (lambda a, b: f"{a / b:.2f}x") if base else (lambda a, b: "-")
        print(f"{name:<9} {r['trainable']:>12,} {100 * r['trainable'] / r['total']:>8.2f}% {r['state_gb']:>9.3f} "
              f"{rel(r['state_gb'], base['state_gb']) if base else '-':>8} {peak:>8.3f} "
              f"{rel(peak, min(base['peak'])) if base else '-':>8} {tps:>10,.0f} {rel(tps, max(base['tps'])) if base else '-':>8}")
    (root / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nraw numbers: {root / 'results.json'}; configs: {yaml.safe_dump(VARIANTS, default_flow_style=True).strip()}")


if __name__ == "__main__":
    main()
