"""Writes the small test data files next to this script (deterministic; run once, the files are committed).

    python tests/data/make_data.py

Every text uses only characters of automodel.testing.char_tokenizer(): lowercase, digits, " :\\n.,?!-".
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

HERE = Path(__file__).resolve().parent


def word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def chat(rng: random.Random, n: int = 32) -> list[dict]:
    rows = []
    for i in range(n):
        msgs = []
        if i % 3 == 0:
            msgs.append({"role": "system", "content": "you reverse words."})
        for _ in range(1 + i % 3):  # one to three turns
            w = word(rng)
            msgs.append({"role": "user", "content": f"reverse {w}"})
            msgs.append({"role": "assistant", "content": w[::-1]})
        rows.append({"messages": msgs, "id": i})
    return rows


COLORS = ["red", "blue", "green", "black", "white", "pink"]
ANIMALS = ["cat", "dog", "fox", "owl", "cow", "bee"]


def squad(rng: random.Random, n: int = 32) -> list[dict]:
    rows = []
    for i in range(n):
        pairs = list(zip(rng.sample(ANIMALS, 3), rng.sample(COLORS, 3)))
        context = " ".join(f"the {a} is {c}." for a, c in pairs)
        animal, color = rng.choice(pairs)
        if i % 8 == 7:  # unanswerable (squad v2 style): no answer text
            animal = next(a for a in ANIMALS if a not in dict(pairs))
            answers = {"text": [], "answer_start": []}
        else:
            answers = {"text": [color], "answer_start": [context.index(f"the {animal} is ") + len(f"the {animal} is ")]}
        rows.append({"id": f"q{i}", "context": context, "question": f"what color is the {animal}?", "answers": answers})
    return rows


def hellaswag(rng: random.Random, n: int = 40) -> list[dict]:
    rows = []
    for i in range(n):
        w = word(rng)
        right = w[::-1]
        wrong: list[str] = []
        for cand in (w, right[1:] + right[0], "".join(rng.sample(w, len(w)))):
            while cand == right or cand in wrong:
                cand = word(rng)
            wrong.append(cand)
        endings = [x + "." for x in wrong]
        label = rng.randrange(4)
        endings.insert(label, right + ".")
        rows.append({"ind": i, "ctx": f"reverse {w}:", "endings": endings, "label": str(label)})  # a string, as on the hub
    return rows


def write(name: str, rows: list[dict]) -> None:
    with (HERE / name).open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    write("chat.jsonl", chat(random.Random(0)))
    write("squad.jsonl", squad(random.Random(1)))
    write("hellaswag.jsonl", hellaswag(random.Random(2)))
