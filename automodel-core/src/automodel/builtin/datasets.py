"""Builtin datasets: ``instruction`` (prompt/response pairs via HF ``datasets``) and ``mock``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from automodel.errors import AutomodelError

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _local(path: str) -> bool:
    return Path(path).suffix in FORMATS or path.startswith((".", "/", "~")) or Path(path).exists()


def _load(path: str, split: str) -> Any:
    import datasets

    p = Path(path).expanduser()
    try:
        if p.is_file():
            data = datasets.load_dataset(FORMATS[p.suffix], data_files=str(p), split="train")
        else:
            data = datasets.load_dataset(str(p) if p.exists() else path, split=split)
    except (datasets.exceptions.DatasetGenerationError, ValueError, StopIteration) as e:
        cause = e.__cause__ or e.__context__ or e
        raise AutomodelError(f"dataset: cannot read {path}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}; "
                             "check the file (one JSON object per line for .jsonl)") from e
    if len(data) == 0:
        raise AutomodelError(f"dataset: {path} has no examples")
    return data


def instruction(
    ctx: Any,
    tokenizer: Any,
    path: str,
    prompt: str = "prompt",
    response: str = "response",
    prompt_template: str = "{prompt}",
    split: str = "train",
    max_length: int = 512,
    add_eos: bool = True,
    limit: int | None = None,
) -> Any:
    """Prompt/response pairs from a local json/jsonl/csv/parquet file, a directory or a hub dataset.

    ``prompt`` and ``response`` name the columns. Each example is ``prompt_template`` (with
    ``{prompt}`` filled in) followed by the response and EOS; only response tokens carry labels.
    Examples are truncated to ``max_length`` tokens.
    """
    data = _load(path, split)
    missing = [c for c in (prompt, response) if c not in data.column_names]
    if missing:
        raise AutomodelError(
            f"dataset: column(s) {missing} not found in {path}; its columns are {data.column_names}. "
            "Set dataset.prompt / dataset.response to the right column names."
        )
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        p = bos + tokenizer.encode(prompt_template.format(prompt=row[prompt]), add_special_tokens=False)
        r = tokenizer.encode(str(row[response]), add_special_tokens=False) + eos
        ids = (p + r)[:max_length]
        labels = ([-100] * len(p) + r)[:max_length]
        return {"input_ids": ids, "labels": labels, "prompt_tokens": len(p), "response_tokens": max(0, len(ids) - len(p))}

    data = data.map(encode, remove_columns=data.column_names, desc="tokenizing", keep_in_memory=True)
    empty = sum(1 for n in data["response_tokens"] if n == 0)
    if empty:
        longest = max(data["prompt_tokens"])
        what = f"{empty} of the {len(data)} examples of {path} keep no response token after truncation to max_length={max_length}"
        hint = f"the longest prompt is {longest} tokens; raise dataset.max_length or shorten the prompts"
        if empty == len(data):
            raise AutomodelError(f"dataset: {what}: there is nothing to learn from; {hint}")
        if empty > 0.01 * len(data):
            ctx.print(f"warning: dataset: {what} (they add no loss); {hint}")
    return data.remove_columns(["prompt_tokens", "response_tokens"])


def _peek_columns(path: Path) -> list[str] | None:
    """Column names from the first record of a json/jsonl/csv file, cheaply (no datasets import)."""
    try:
        if path.suffix == ".jsonl":
            with path.open() as f:
                return list(json.loads(f.readline()))
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                return next(csv.reader(f))
    except Exception:
        return None
    return None


def _instruction_validate(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    path = args.get("path")
    if not isinstance(path, str) or not _local(path):
        return []
    for key, least in (("max_length", 2), ("limit", 1)):
        value = args.get(key)
        if isinstance(value, int) and value < least:
            return [(key, f"must be at least {least}, got {value}", "")]
    p = Path(path).expanduser()
    if not p.exists():
        return [("path", f"data file not found: {path} (resolved: {p.resolve()})",
                 "relative paths are relative to the current directory; write ${cfg_dir}/... for files next to the config")]
    if p.is_file() and p.stat().st_size == 0:
        return [("path", f"{path} is empty", "")]
    if p.is_file() and p.suffix not in FORMATS:
        return [("path", f"unsupported file type '{p.suffix}'", f"use one of {', '.join(FORMATS)}")]
    columns = _peek_columns(p) if p.is_file() else None
    out = []
    for key, default in (("prompt", "prompt"), ("response", "response")):
        col = args.get(key, default)
        if columns is not None and col not in columns:
            out.append((key, f"column '{col}' is not in {path}", f"its columns are: {', '.join(columns)}"))
    return out


instruction.validate_args = _instruction_validate  # type: ignore[attr-defined]
instruction.path_args = ("path",)  # type: ignore[attr-defined]


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
