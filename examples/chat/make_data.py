"""Rebuild the chat example's data: short conversations (one to three turns) in which the assistant
reverses the words the user asks about, in the quickstart's character set.

    python examples/chat/make_data.py

Deterministic: running it again writes identical files.
"""

import json
import random
import string
from pathlib import Path

HERE = Path(__file__).parent
ASKS = ["reverse {w}", "please reverse {w}", "what is {w} reversed?", "and {w}?"]


def word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def conversation(rng: random.Random, i: int) -> dict:
    messages = []
    if i % 2 == 0:
        messages.append({"role": "system", "content": "you reverse words."})
    for turn in range(rng.randint(1, 3)):
        w = word(rng)
        ask = rng.choice(ASKS[:3] if turn == 0 else ASKS)
        messages.append({"role": "user", "content": ask.format(w=w)})
        messages.append({"role": "assistant", "content": w[::-1]})
    return {"messages": messages}


def main() -> None:
    rng = random.Random(2)
    (HERE / "data").mkdir(exist_ok=True)
    for name, n in (("train", 1200), ("val", 100)):
        with open(HERE / "data" / f"{name}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps(conversation(rng, i)) + "\n")


if __name__ == "__main__":
    main()
