"""Chat with the chat example's exported model using only what the export holds: the tokenizer's saved
chat template renders the conversation (tokenizer.apply_chat_template), plain transformers generates.

    python examples/chat/generate.py [runs/chat/hf [N]]

Answers the last user turn of each held-out conversation and prints exact-match accuracy.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).parent


def reply(model, tok, messages: list[dict]) -> str:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def main(model_dir: str = "runs/chat/hf", limit: int = 100) -> float:
    tok = AutoTokenizer.from_pretrained(model_dir)
    if not tok.chat_template:
        raise SystemExit(f"{model_dir} has no chat template: export it with automodel (it saves the one it trained with)")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in (HERE / "data" / "val.jsonl").read_text().splitlines()][:limit]
    correct = 0
    for i, row in enumerate(rows):
        history, expected = row["messages"][:-1], row["messages"][-1]["content"]
        got = reply(model, tok, history)
        correct += got == expected
        if i < 3:
            print(tok.apply_chat_template(history, add_generation_prompt=True, tokenize=False) + got)
            print(f"  (expected {expected!r})\n")
    accuracy = correct / len(rows)
    print(f"exact match on the last turn of {len(rows)} held-out conversations: {accuracy:.0%}")
    return accuracy


if __name__ == "__main__":
    main(*sys.argv[1:2], *map(int, sys.argv[2:3]))
