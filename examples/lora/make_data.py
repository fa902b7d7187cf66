"""Rebuild the LoRA example's data: a new command for the quickstart model, "backwards abc" -> "cba"
(the base only knows "reverse abc").

    python examples/lora/make_data.py

Deterministic: running it again writes identical files. Only characters of the quickstart's tokenizer.
"""

import json
import random
import string
from pathlib import Path

HERE = Path(__file__).parent
LETTERS = string.ascii_lowercase


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
                f.write(json.dumps({"question": f"backwards {w}", "answer": w[::-1]}) + "\n")


if __name__ == "__main__":
    main()
