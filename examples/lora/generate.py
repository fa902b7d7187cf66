"""Load the LoRA example's adapter with plain peft on the base it records, and check what it learned.

    python examples/lora/generate.py [runs/lora/hf [N]]

The adapter directory's adapter_config.json names its base (base_model_name_or_path: the absolute path
of runs/quickstart/hf), so nothing else is needed. Greedy-decodes the held-out "backwards" words with the
adapter, then asks the base alone (adapter disabled): it still does "reverse", not "backwards".
"""

import json
import sys
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).parent


def answer(model, tok, prompt: str) -> str:
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(prompt + "\n", add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def main(adapter: str = "runs/lora/hf", limit: int = 100) -> float:
    base_path = PeftConfig.from_pretrained(adapter).base_model_name_or_path
    print(f"base model (from {adapter}/adapter_config.json): {base_path}")
    base = AutoModelForCausalLM.from_pretrained(base_path)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    rows = [json.loads(line) for line in (HERE / "data" / "val.jsonl").read_text().splitlines()][:limit]
    correct = 0
    for i, row in enumerate(rows):
        got = answer(model, tok, row["question"])
        correct += got == row["answer"]
        if i < 3:
            print(f"{row['question']!r:>16} -> {got!r:10} (expected {row['answer']!r})")
    accuracy = correct / len(rows)
    print(f"with the adapter: exact match on {len(rows)} held-out words: {accuracy:.0%}")
    word = rows[0]["question"].split()[1]
    with model.disable_adapter():
        print(f"adapter disabled: 'reverse {word}' -> {answer(model, tok, f'reverse {word}')!r}, "
              f"'backwards {word}' -> {answer(model, tok, f'backwards {word}')!r} (the frozen base)")
    return accuracy


if __name__ == "__main__":
    main(*sys.argv[1:2], *map(int, sys.argv[2:3]))
