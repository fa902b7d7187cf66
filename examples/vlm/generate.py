"""Load the VLM example's export with plain transformers and check what it learned.

    python examples/vlm/generate.py [runs/vlm/hf]

Greedy-decodes the answer to every held-out question of data/val.jsonl (100 images, two questions each) and prints exact-match accuracy.
"""

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

HERE = Path(__file__).parent


def main(model_dir: str = "runs/vlm/hf", limit: int | None = None) -> float:
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in (HERE / "data" / "val.jsonl").read_text().splitlines()][:limit]
    correct = 0
    for i, row in enumerate(rows):
        question, answer = row["messages"][0], row["messages"][1]["content"][0]["text"]
        image = Image.open(HERE / "data" / row["images"][0]).convert("RGB")
        prompt = processor.apply_chat_template([question], add_generation_prompt=True)
        inputs = processor(text=[prompt], images=[[image]], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=10, do_sample=False,
                                 eos_token_id=processor.tokenizer.eos_token_id, pad_token_id=processor.tokenizer.pad_token_id)
        got = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        correct += got == answer
        if i < 6:
            print(f"{row['images'][0]:>22}  {question['content'][1]['text']:<26} -> {got!r:10} (expected {answer!r})")
    accuracy = correct / len(rows)
    images = len({row["images"][0] for row in rows})
    print(f"exact match on {len(rows)} held-out questions ({images} images): {accuracy:.1%}")
    return accuracy


if __name__ == "__main__":
    main(*sys.argv[1:2])
