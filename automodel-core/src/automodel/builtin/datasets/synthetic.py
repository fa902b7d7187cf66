"""``mock``: random token sequences, for benchmarks and smoke tests."""

from __future__ import annotations

from typing import Any


class MockDataset:
    """``num_samples`` random sequences of ``seq_len`` tokens; every token is a label."""

    def __init__(self, num_samples: int, seq_len: int, vocab_size: int, seed: int):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, vocab_size, (num_samples, seq_len), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.data[i], "labels": self.data[i]}


def mock(
    ctx: Any, tokenizer: Any, num_samples: int = 1024, seq_len: int = 256, vocab_size: int | None = None, seed: int = 0
) -> MockDataset:
    """Random tokens, for benchmarks and smoke tests. ``vocab_size`` defaults to the tokenizer's."""
    return MockDataset(num_samples, seq_len, vocab_size or len(tokenizer), seed)


def _mock_validate(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for key, least in (("num_samples", 1), ("seq_len", 2), ("vocab_size", 2)):
        value = args.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < least:
            out.append((key, f"must be at least {least}, got {value}", "a sequence needs 2 tokens to predict one" if key == "seq_len" else ""))
    return out


mock.validate_args = _mock_validate  # type: ignore[attr-defined]
