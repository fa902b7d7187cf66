"""Load the quickstart's exported model with plain transformers and check what it learned.

    python examples/quickstart/generate.py [runs/quickstart/hf]

Greedy-decodes the held-out validation words and prints exact-match accuracy.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).parent


def main(model_dir: str = "runs/quickstart/hf", limit: int = 100) -> float:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in (HERE / "data" / "val.jsonl").read_text().splitlines()][:limit]
    correct = 0
    for i, row in enumerate(rows):
        prompt = f"{row['question']}\n"
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        correct += answer == row["answer"]
        if i < 5:
            print(f"{row['question']!r:>20} -> {answer!r:10} (expected {row['answer']!r})")
    accuracy = correct / len(rows)
    print(f"exact match on {len(rows)} held-out words: {accuracy:.0%}")
    return accuracy


if __name__ == "__main__":
    main(*sys.argv[1:2])
