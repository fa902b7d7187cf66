"""QLoRA vs plain LoRA on the quickstart's model: held-out exact match of every way to use the result.

    automodel run examples/quickstart/config.yaml                  # exports runs/quickstart/hf
    python examples/qlora/compare.py [runs/quickstart/hf] [--steps 100]

Trains LoRA (full-precision base) and QLoRA (the same base in 4-bit NF4, bitsandbytes) with the same
adapters (all linear layers, r=8), data and steps, through ``automodel run`` (the quickstart's config with
overrides), then greedy-decodes the 100 held-out words exactly as ``examples/quickstart/generate.py`` does:

* the base in full precision and quantized to NF4 (no adapter): what quantization alone costs;
* LoRA: the adapter on the base;
* QLoRA: the adapter on the NF4 base (the model as trained), on the original full-precision base (what
  plain peft loads from ``hf/``), and the dequantized merged model (``hf/merged``);

and, for each, the mean cross-entropy of the 200 held-out answers given their prompts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE.parent / "quickstart"


def exact_match(model: Any, tok: Any, limit: int = 100) -> float:
    """examples/quickstart/generate.py's metric, on a model object."""
    import torch

    rows = [json.loads(line) for line in (QUICKSTART / "data" / "val.jsonl").read_text().splitlines()][:limit]
    model.eval()
    correct = 0
    for row in rows:
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(f"{row['question']}\n", add_special_tokens=False)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        correct += tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == row["answer"]
    return correct / len(rows)


def heldout_loss(model: Any, tok: Any) -> float:
    """Mean cross-entropy of the 200 held-out answers (+ end of sequence) given their prompts: a finer
    signal than exact match when every model gets every word right."""
    import torch

    rows = [json.loads(line) for line in (QUICKSTART / "data" / "val.jsonl").read_text().splitlines()]
    total, count = 0.0, 0
    model.eval()
    for row in rows:
        prompt = [tok.bos_token_id] + tok.encode(f"{row['question']}\n", add_special_tokens=False)
        answer = tok.encode(row["answer"], add_special_tokens=False) + [tok.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
        total += torch.nn.functional.cross_entropy(logits, torch.tensor(answer), reduction="sum").item()
        count += len(answer)
    return total / count


def nf4(base: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(base, quantization_config=q, dtype=torch.float32, device_map="cpu")


def train(base: str, out: Path, steps: int, quantized: bool) -> None:
    model = (["model.name=hf_quantized", "model.dtype=float32"] if quantized else [])
    transform = "qlora" if quantized else "lora"
    cmd = [sys.executable, "-m", "automodel", "run", str(QUICKSTART / "config.yaml"), f"model.pretrained={base}",
           "~model.config", "~model.tokenizer", *model,
           f"transforms=[{{name: {transform}, r: 8, alpha: 16, target_modules: all-linear, export_merged: true}}]",
           f"step_scheduler.max_steps={steps}", "step_scheduler.val_every_steps=null", "~validation_dataset",
           f"output_dir={out}", "checkpoint.resume=never"]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", nargs="?", default="runs/quickstart/hf")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default="runs/qlora-compare")
    ap.add_argument("--skip-training", action="store_true", help="evaluate the runs already in --out")
    args = ap.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(args.out)
    if not args.skip_training:
        train(args.base, out / "lora", args.steps, quantized=False)
        train(args.base, out / "qlora", args.steps, quantized=True)
    tok = AutoTokenizer.from_pretrained(args.base)
    rows = [
        ("base, full precision", lambda: AutoModelForCausalLM.from_pretrained(args.base)),
        ("base, NF4 (no adapter)", lambda: nf4(args.base)),
        ("LoRA: adapter on the base", lambda: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.base), out / "lora" / "hf")),
        ("QLoRA: adapter on the NF4 base (as trained)", lambda: PeftModel.from_pretrained(nf4(args.base), out / "qlora" / "hf")),
        ("QLoRA: adapter on the original base (plain peft)", lambda: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.base), out / "qlora" / "hf")),
        ("QLoRA: merged, dequantized (hf/merged)", lambda: AutoModelForCausalLM.from_pretrained(out / "qlora" / "hf" / "merged")),
    ]
    print(f"\n{args.steps} adapter steps; held-out exact match (100 words, greedy) and answer loss (200 words):")
    for label, build in rows:
        model = build()
        print(f"  {label:<50} {exact_match(model, tok):>5.0%} {heldout_loss(model, tok):>10.5f}", flush=True)


if __name__ == "__main__":
    main()
