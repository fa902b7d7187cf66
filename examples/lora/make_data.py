"""Rebuild the LoRA example's data: a new skill for the quickstart model, "shift abc" -> "bcd" (every
letter moved one place on in the alphabet, z -> a).

    python examples/lora/make_data.py

Deterministic: running it again writes identical files. Only characters of the quickstart's tokenizer.
"""

import json
import random
import string
from pathlib import Path

HERE = Path(__file__).parent
LETTERS = string.ascii_lowercase


def shift(word: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in word)


def main() -> None:
    rng = random.Random(1)
    seen: set[str] = set()
    words = []
    while len(words) < 2200:
        w = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    (HERE / "data").mkdir(exist_ok=True)
    for name, chunk in (("train", words[:2000]), ("val", words[2000:])):
        with open(HERE / "data" / f"{name}.jsonl", "w") as f:
            for w in chunk:
                f.write(json.dumps({"question": f"shift {w}", "answer": shift(w)}) + "\n")


if __name__ == "__main__":
    main()
