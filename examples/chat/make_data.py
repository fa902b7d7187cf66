"""Rebuild the chat example's data: short conversations (one or two turns) in which the assistant
reverses the words the user asks about, in the quickstart's character set, each within the quickstart
model's 64 positions.

    python examples/chat/make_data.py

Deterministic: running it again writes identical files.
"""

import json
import random
import string
from pathlib import Path

HERE = Path(__file__).parent
MAX_TOKENS = 64  # the quickstart model's max_position_embeddings; one token per character here


def word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def conversation(rng: random.Random, i: int) -> dict:
    """A system message and one turn, one turn, or two turns (the second a follow-up question)."""
    w = word(rng)
    if i % 3 == 0:
        return {"messages": [{"role": "system", "content": "you reverse words."},
                             {"role": "user", "content": f"reverse {w}"}, {"role": "assistant", "content": w[::-1]}]}
    if i % 3 == 1:
        ask = rng.choice(["reverse {w}", "please reverse {w}"])
        return {"messages": [{"role": "user", "content": ask.format(w=w)}, {"role": "assistant", "content": w[::-1]}]}
    v = word(rng)
    return {"messages": [{"role": "user", "content": f"reverse {w}"}, {"role": "assistant", "content": w[::-1]},
                         {"role": "user", "content": f"and {v}?"}, {"role": "assistant", "content": v[::-1]}]}


def rendered_length(messages: list[dict]) -> int:
    """Tokens of the conversation as chat_template.jinja renders it: <s>, each message and a newline, "s: "
    before a system message, </s> after each reply."""
    return 1 + sum(len(m["content"]) + 1 + 3 * (m["role"] == "system") + (m["role"] == "assistant") for m in messages)


def main() -> None:
    rng = random.Random(2)
    (HERE / "data").mkdir(exist_ok=True)
    for name, n in (("train", 1200), ("val", 100)):
        with open(HERE / "data" / f"{name}.jsonl", "w") as f:
            for i in range(n):
                row = conversation(rng, i)
                assert rendered_length(row["messages"]) <= MAX_TOKENS, row
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
