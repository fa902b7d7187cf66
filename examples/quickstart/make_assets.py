"""Rebuild the quickstart's shipped assets: a character tokenizer and the word-reversal task data.

    python examples/quickstart/make_assets.py

Deterministic: running it again writes identical files. Needs only `tokenizers`/`transformers`.
"""

import json
import random
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(string.ascii_lowercase + string.digits + " :\n.,?!-")


def make_tokenizer() -> None:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(HERE / "tokenizer")
    # Name the portable class, so that transformers 4.x and 5.x both load it.
    cfg_path = HERE / "tokenizer" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = 512
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def make_data() -> None:
    rng = random.Random(0)
    seen: set[str] = set()
    words = []
    while len(words) < 4200:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    for name, chunk in (("train", words[:4000]), ("val", words[4000:])):
        with open(HERE / "data" / f"{name}.jsonl", "w") as f:
            for w in chunk:
                f.write(json.dumps({"question": f"reverse {w}", "answer": w[::-1]}) + "\n")


if __name__ == "__main__":
    (HERE / "data").mkdir(exist_ok=True)
    make_tokenizer()
    make_data()
