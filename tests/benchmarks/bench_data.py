"""The data pipeline alone vs a training step: data must never be the bottleneck.

Measured in one process on the same machine:

1. tokenization (``datasets.map``, fresh cache) of a generated chat and instruction file, tokens/s;
2. the loader: ``TrainData.batches`` (read rows, pack, collate, shift labels) over the tokenized data,
   packed into rows of 256 tokens, batch 8, tokens/s of the batches it yields;
3. a training step of the 5M-parameter Llama (the benchmarks' reference loop of _common.py, batch
   8 x 256, fp32, AdamW), tokens/s.

Prints the ratios loader / train and tokenize / train (goal: both far above 1; the loader runs every
step, tokenization once per dataset and then comes from the cache).

    python tests/benchmarks/bench_data.py [--rows 4000] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import random
import string
import tempfile
import time
from pathlib import Path

import torch
from _common import BATCH, LLAMA_5M, SEQ, plain_steps, tokens_per_s
from automodel.builtin import datasets as D
from automodel.context import Context
from automodel.data import Collator, TrainData
from automodel.state import TrainState
from automodel.testing import char_tokenizer, tiny_model

TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: "
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}</s>{{ '\\n' }}{% endgeneration %}"
    "{% else %}{{ m.content }}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 8))) for _ in range(words))


def write_files(directory: Path, rows: int) -> tuple[Path, Path]:
    rng = random.Random(0)
    chat, inst = directory / "chat.jsonl", directory / "inst.jsonl"
    with chat.open("w") as c, inst.open("w") as i:
        for _ in range(rows):
            turns = []
            for _ in range(rng.randint(1, 3)):
                turns += [{"role": "user", "content": sentence(rng, rng.randint(3, 15))},
                          {"role": "assistant", "content": sentence(rng, rng.randint(3, 20))}]
            c.write(json.dumps({"messages": turns}) + "\n")
            i.write(json.dumps({"prompt": sentence(rng, rng.randint(3, 20)), "response": sentence(rng, rng.randint(3, 25))}) + "\n")
    return chat, inst


def loader_tokens_per_s(dataset, batches: int) -> float:
    data = TrainData(dataset, Collator(pad_id=0), BATCH, 0, 1, seed=0)
    it = data.batches(TrainState())
    next(it)
    tokens, start = 0, time.perf_counter()
    for _ in range(batches):
        tokens += next(it)["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()
    ctx = Context(device=torch.device("cpu"))
    tok = char_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chat_file, inst_file = write_files(tmp, args.rows)
        results = {}
        for name, build in (
            ("chat", lambda **kw: D.chat(ctx, tok, str(chat_file), chat_template=TEMPLATE, max_length=SEQ, **kw)),
            ("instruction", lambda **kw: D.instruction(ctx, tok, str(inst_file), max_length=SEQ, **kw)),
        ):
            start = time.perf_counter()
            plain = build(cache_dir=str(tmp / f"cache-{name}"))
            seconds = time.perf_counter() - start
            tokenized = sum(len(x) for x in plain["input_ids"])
            packed = build(cache_dir=str(tmp / f"cache-{name}"), packing=True)  # cached tokenization + packing
            results[name] = (tokenized / seconds, loader_tokens_per_s(packed, args.batches), packed.efficiency,
                             loader_tokens_per_s(plain, args.batches))
        model_dir = tiny_model(tmp, **LLAMA_5M)
        train = tokens_per_s(plain_steps(model_dir, args.steps + 3)[0])
    print(f"training step: Llama 5M, batch {BATCH} x {SEQ}, fp32, {torch.get_num_threads()} threads: {train:,.0f} tokens/s")
    for name, (tokenize, loader, efficiency, unpacked) in results.items():
        print(f"{name:12s} tokenize {tokenize:>11,.0f} tok/s ({tokenize / train:6.1f}x train) | loader packed {loader:>12,.0f} tok/s "
              f"({loader / train:7.1f}x train, packing efficiency {efficiency:.3f}) | loader unpacked {unpacked:>12,.0f} tok/s "
              f"({unpacked / train:7.1f}x train)")


if __name__ == "__main__":
    main()
