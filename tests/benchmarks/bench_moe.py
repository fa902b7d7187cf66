"""Expert parallelism, side by side: tokens/s and per-rank memory of a small Mixtral at ep=1 and ep=2.

    python tests/benchmarks/bench_moe.py                      # CPU, gloo
    python tests/benchmarks/bench_moe.py --device cuda        # GPUs, nccl (2 devices)

Variants (each a real ``automodel run`` in its own process group, same model, data, global batch, steps):

* ``1 process``: one rank holds every expert (transformers' own experts forward);
* ``fsdp2, 2 ranks``: plain FSDP2, every parameter (experts included) sharded over 2 ranks, all-gathered
  for compute;
* ``ep=2 + fsdp2``: experts split over 2 ranks (each holds half of them whole, tokens exchanged by
  all-to-all), everything else FSDP2-sharded over the 2 ranks.

``expert MiB/rank`` is what the ep parallelizer reports (the local shard of the 3-D expert weights);
``peak mem GB`` is the run's ``peak_mem_gb`` (CUDA max allocated; on CPU the process's max RSS, which
includes ~0.5 GB of Python/torch runtime). tokens/s: median over the steps after the first.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from automodel.testing import VOCAB_SIZE, make_config, read_metrics, run_cli, tiny_model

MIXTRAL: dict[str, Any] = {"model_type": "mixtral", "vocab_size": VOCAB_SIZE, "hidden_size": 256, "intermediate_size": 512,
                           "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
                           "max_position_embeddings": 256, "num_local_experts": 8, "num_experts_per_tok": 2,
                           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

VARIANTS: dict[str, dict[str, Any]] = {
    "1 process": {},
    "fsdp2, 2 ranks": {"parallel": [{"name": "fsdp2"}], "launcher": {"name": "local", "nproc_per_node": 2}},
    "ep=2 + fsdp2": {"parallel": [{"name": "ep", "size": 2}, {"name": "fsdp2"}], "launcher": {"name": "local", "nproc_per_node": 2}},
}


def run(root: Path, name: str, tokenizer: Path, device: str, steps: int, sections: dict[str, Any]) -> dict[str, Any]:
    nproc = sections.get("launcher", {}).get("nproc_per_node", 1)
    cfg = make_config(root / name.replace(" ", "_").replace(",", "").replace("=", ""), None,
                      model={"name": "hf", "config": MIXTRAL, "tokenizer": str(tokenizer)}, device=device,
                      step_scheduler={"global_batch_size": 16, "local_batch_size": 16 // nproc, "max_steps": steps,
                                      "log_every_steps": 1},
                      transforms=[{"name": "moe", "aux_loss_weight": 0.01}], **sections)
    proc = run_cli("run", cfg, cwd=root)
    out = proc.stdout + proc.stderr
    metrics = read_metrics(Path(cfg).parent / "run")
    m = re.search(r"expert weights ([\d.]+) MiB per ep rank \(([\d.]+) MiB unsharded\)", out)
    full = 4 * MIXTRAL["num_local_experts"] * 3 * MIXTRAL["hidden_size"] * MIXTRAL["intermediate_size"] * MIXTRAL["num_hidden_layers"] / 2**20
    expert_mib = float(m.group(1)) if m else (full / nproc if "fsdp2" in name else full)
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in metrics[1:]),
        "peak_mem_gb": max(r["peak_mem_gb"] for r in metrics),
        "expert_mib": expert_mib,
        "aux": metrics[-1]["moe_aux_loss"],
        "load": (metrics[-1]["moe_tokens_per_expert_min"], metrics[-1]["moe_tokens_per_expert_max"]),
        "loss": [round(r["loss"], 5) for r in metrics],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = tiny_model(root)
        results = {name: run(root, name, tokenizer, args.device, args.steps, sections) for name, sections in VARIANTS.items()}
    base = results["1 process"]
    print(f"\nMixtral {MIXTRAL['num_hidden_layers']} layers x {MIXTRAL['num_local_experts']} experts (hidden {MIXTRAL['hidden_size']}, "
          f"expert ffn {MIXTRAL['intermediate_size']}), global batch 16, {args.steps} steps, {args.device}")
    print(f"{'variant':<16} {'tokens/s':>9} {'x':>5} {'expert MiB/rank':>16} {'x':>5} {'peak mem GB':>12} {'aux loss':>9} {'load min/max':>13}")
    for name, r in results.items():
        print(f"{name:<16} {r['tokens_per_s']:>9.0f} {r['tokens_per_s'] / base['tokens_per_s']:>5.2f} {r['expert_mib']:>16.2f} "
              f"{r['expert_mib'] / base['expert_mib']:>5.2f} {r['peak_mem_gb']:>12.3f} {r['aux']:>9.4f} "
              f"{r['load'][0]:>6.2f}/{r['load'][1]:<6.2f}")
    print("loss per step:")
    for name, r in results.items():
        print(f"  {name:<16} {r['loss']}")


if __name__ == "__main__":
    sys.exit(main())
