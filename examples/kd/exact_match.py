"""A local plugin for the KD example: the ``exact_match`` validation dataset.

It greedy-decodes the answer of every held-out example with the model being trained and reports the
fraction that is exactly right (``val_exact_match``), so both runs of the example log an accuracy
curve in ``metrics.jsonl``. Loaded with ``plugins: [exact_match]`` in the config and this directory on
``PYTHONPATH`` (``compare.py`` does both).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from automodel import hookimpl


class ExactMatch:
    """``path`` (JSON lines with ``prompt``/``response`` keys); ``limit`` rows greedy-decoded per evaluation."""

    def __init__(self, ctx: Any, tokenizer: Any, path: str, prompt: str = "question", response: str = "answer",
                 prompt_template: str = "{prompt}\n", limit: int = 200, max_new_tokens: int = 12):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()][:limit]
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.examples = [([tokenizer.bos_token_id] + tokenizer.encode(prompt_template.format(prompt=r[prompt]),
                                                                      add_special_tokens=False), r[response]) for r in rows]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids = self.examples[i][0]
        return {"input_ids": ids, "labels": [-100] * len(ids)}

    def evaluate(self, model: Any, ctx: Any) -> dict[str, Any]:
        """Greedy decoding, batched by prompt length (no padding needed); one process."""
        import torch
        from automodel.weights import unwrap

        hf = unwrap(model)
        tok = self.tokenizer
        by_len: dict[int, list[tuple[list[int], str]]] = {}
        for ids, answer in self.examples:
            by_len.setdefault(len(ids), []).append((ids, answer))
        right = 0
        for group in by_len.values():
            ids = torch.tensor([g[0] for g in group], device=ctx.device)
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            for row, (_, answer) in zip(out[:, ids.shape[1]:], group):
                right += tok.decode(row, skip_special_tokens=True).strip() == answer
        return {"val_exact_match": right / max(1, len(self.examples))}


@hookimpl
def register_datasets(register):
    register("exact_match", ExactMatch, description="greedy-decoding exact-match accuracy (KD example)")
