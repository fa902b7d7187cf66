"""What the builtin datasets share: loading a file or hub dataset, the tokenize -> truncate/drop ->
pack pipeline (:class:`Pipeline`), and the checks ``automodel validate`` runs before anything loads
(:func:`file_dataset`)."""

from __future__ import annotations

import csv
import json
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automodel.errors import AutomodelError

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

Problems = list[tuple[str, str, str]]
Encode = Callable[[dict[str, Any]], dict[str, list[int]]]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _local(path: str) -> bool:
    return Path(path).suffix in FORMATS or path.startswith((".", "/", "~")) or Path(path).exists()


def load(path: str, split: str, streaming: bool = False, cache_dir: str | None = None) -> Any:
    """A local json/jsonl/csv/parquet file, a directory or a hub dataset (``split``), as a
    ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``)."""
    import datasets

    p = Path(path).expanduser()
    try:
        if p.is_file():
            if p.suffix not in FORMATS:
                raise AutomodelError(f"dataset: unsupported file type '{p.suffix}' ({path}); use one of {', '.join(FORMATS)}")
            data = datasets.load_dataset(FORMATS[p.suffix], data_files=str(p), split="train", streaming=streaming, cache_dir=cache_dir)
        else:
            data = datasets.load_dataset(str(p) if p.exists() else path, split=split, streaming=streaming, cache_dir=cache_dir)
    except (datasets.exceptions.DatasetGenerationError, ValueError, StopIteration) as e:
        cause = e.__cause__ or e.__context__ or e
        raise AutomodelError(f"dataset: cannot read {path}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}; "
                             "check the file (one JSON object per line for .jsonl)") from e
    if not streaming and len(data) == 0:
        raise AutomodelError(f"dataset: {path} has no examples")
    return data


def _columns(data: Any) -> list[str]:
    """Column names of a dataset; for a stream without declared features, the keys of its first example."""
    if getattr(data, "column_names", None):
        return list(data.column_names)
    first = next(iter(data), None)
    return list(first) if first else []


def require_columns(data: Any, path: str, wanted: dict[str, str]) -> None:
    """``wanted`` maps config key -> column name; a missing column is an error listing the existing ones."""
    columns = _columns(data)
    missing = {k: c for k, c in wanted.items() if c not in columns}
    if missing:
        keys = " / ".join(f"dataset.{k}" for k in missing)
        raise AutomodelError(
            f"dataset: column(s) {list(missing.values())} not found in {path}; its columns are {columns}. "
            f"Set {keys} to the right column name{'s' if len(missing) > 1 else ''}."
        )


# --------------------------------------------------------------------------------------------------
# The shared pipeline: tokenize -> truncate/drop (counted) -> pack, or the same lazily for a stream
# --------------------------------------------------------------------------------------------------


def _fit(encode: Encode, max_length: int, truncation: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Wrap ``encode`` (row -> full ``input_ids``/``labels``) with truncation and the bookkeeping columns."""

    def fit(row: dict[str, Any]) -> dict[str, Any]:
        out = encode(row)
        ids, labels = out["input_ids"], out["labels"]
        n = len(ids)
        had_labels = any(x != -100 for x in labels[1:])
        if n > max_length and truncation == "truncate":
            ids, labels = ids[:max_length], labels[:max_length]
        labeled = any(x != -100 for x in labels[1:])
        # _labeled: 1 has label tokens, 0 has none, -1 lost them to truncation
        return {"input_ids": ids, "labels": labels, "_length": n, "_labeled": 1 if labeled else (-1 if had_labels else 0)}

    return fit


def _cache_files(data: Any) -> set[str]:
    """The arrow files in the cache directory of ``data`` (a map that reuses its cache adds none)."""
    files = getattr(data, "cache_files", None)
    if not files:
        return set()
    return {str(p) for p in Path(files[0]["filename"]).parent.glob("cache-*.arrow")}


@dataclass(frozen=True)
class Pipeline:
    """The keys every tokenized dataset (instruction, chat, squad) ends its signature with, and what
    they do: :meth:`load` the data, then :meth:`build` tokenizes it with the dataset's ``encode`` (a row
    -> its full ``input_ids``/``labels``), truncates or drops examples over ``max_length`` and those left
    without a label token (counted in a one-line summary), and packs into rows of ``pack_length``
    tokens; with ``streaming``, all of it lazily (:class:`automodel.data.StreamingDataset`)."""

    name: str
    path: str
    split: str
    max_length: int
    truncation: str
    packing: bool
    pack_length: int | None
    streaming: bool
    num_proc: int | None
    cache_dir: str | None
    limit: int | None

    @classmethod
    def of(cls, name: str, args: dict[str, Any]) -> Pipeline:
        """From a factory's arguments (its ``locals()`` before anything else is bound)."""
        return cls(name, *(args[k] for k in cls.__dataclass_fields__ if k != "name"))

    def load(self, columns: dict[str, str]) -> Any:
        """The data of ``path``, with the ``columns`` (config key -> column name) checked to be there."""
        data = load(self.path, self.split, self.streaming, self.cache_dir)
        require_columns(data, self.path, columns)
        return data

    def build(self, ctx: Any, data: Any, encode: Encode) -> Any:
        """Tokenize, fit to ``max_length`` and pack ``data``: a map-style dataset, or a stream."""
        fit = _fit(encode, self.max_length, self.truncation)
        if self.streaming:
            return self._stream(ctx, data, fit)
        return self._map(ctx, data, fit)

    def _stream(self, ctx: Any, data: Any, fit: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
        from automodel.data import StreamingDataset

        name, max_length, truncation = self.name, self.max_length, self.truncation
        row_length = self.pack_length or max_length  # packed rows; examples are cut at max_length before packing
        if self.limit is not None:
            data = data.take(self.limit)
        drop = truncation == "drop"
        data = data.map(fit).filter(lambda x: x["_labeled"] == 1 and not (drop and x["_length"] > max_length))
        ctx.print(f"dataset {name}: streaming {self.path} (tokenized on the fly; truncation: {truncation} at max_length={max_length}"
                  f"{f'; packed in order into rows of {row_length} tokens' if self.packing else ''})")
        return StreamingDataset(data, pack_length=row_length if self.packing else None, description=f"{name}:{self.path}")

    def _map(self, ctx: Any, data: Any, fit: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
        name, path, max_length, truncation, num_proc = self.name, self.path, self.max_length, self.truncation, self.num_proc
        if self.limit is not None:
            data = data.select(range(min(self.limit, len(data))))
        before = _cache_files(data)
        start = time.perf_counter()
        data = data.map(fit, remove_columns=data.column_names, num_proc=num_proc, desc=f"tokenizing {name}")
        seconds = time.perf_counter() - start
        cached = bool(before) and not (_cache_files(data) - before)
        lengths = list(data["_length"])
        status = list(data["_labeled"])
        labeled = [x == 1 for x in status]
        over = [n > max_length for n in lengths]
        keep = [i for i in range(len(lengths)) if labeled[i] and not (over[i] and truncation == "drop")]
        n_over, n_cut, n_unlabeled = sum(over), status.count(-1), status.count(0)
        dropped_long = sum(1 for i in range(len(lengths)) if over[i] and truncation == "drop" and labeled[i])
        if not keep:
            why = []
            if n_cut:
                why.append(f"{n_cut} keep no response token after truncation to max_length={max_length}")
            if n_unlabeled:
                why.append(f"{n_unlabeled} have no label token (e.g. no answer, no assistant turn)")
            if dropped_long:
                why.append(f"{dropped_long} are longer than max_length={max_length} (truncation: drop)")
            longest = max(lengths)
            raise AutomodelError(
                f"dataset: all {len(lengths)} examples of {path} were dropped ({'; '.join(why)}): there is nothing to learn from; "
                f"the longest example is {longest} tokens; raise dataset.max_length, use dataset.truncation=truncate, or check the data"
            )
        if len(keep) < len(lengths):
            data = data.select(keep)
        data = data.remove_columns(["_length", "_labeled"])
        kept_lengths = [min(lengths[i], max_length) for i in keep]
        tokens = sum(kept_lengths)
        parts = [f"dataset {name}: {len(lengths)} examples from {path} -> {len(keep)} sequences, {tokens:,} tokens "
                 f"({'from the tokenization cache' if cached else f'tokenized in {seconds:.1f}s'}{f', {num_proc} processes' if num_proc and not cached else ''})"]
        if n_over:
            parts.append(f"{n_over} longer than max_length={max_length} " + ("truncated" if truncation == "truncate" else "dropped"))
        if n_cut:
            parts.append(f"{n_cut} dropped: no label token left after truncation")
        if n_unlabeled:
            parts.append(f"{n_unlabeled} dropped: no label token")
        if self.packing:
            from automodel.packing import pack

            row_length = self.pack_length or max_length
            packed = pack(data, row_length, kept_lengths)
            parts.append(f"packed into {len(packed)} rows of {row_length} tokens: packing efficiency {packed.efficiency:.3f} "
                         f"(real tokens / total)")
            data = packed
        ctx.print("; ".join(parts))
        if n_cut > 0.01 * len(lengths):
            ctx.print(f"warning: dataset: {n_cut} of the {len(lengths)} examples of {path} keep no response token after "
                      f"truncation to max_length={max_length} (dropped); raise dataset.max_length or shorten the prompts")
        return data


# --------------------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------------------


def bos_eos(tokenizer: Any, add_eos: bool) -> tuple[list[int], list[int]]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    return bos, eos


def template_fields(template: str) -> list[str]:
    """The column names a ``str.format`` template refers to (``{a.b}``, ``{a[0]}``: ``a``)."""
    try:
        return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError:
        return []


# --------------------------------------------------------------------------------------------------
# Checks before anything loads (validate_args)
# --------------------------------------------------------------------------------------------------


def peek_record(path: Path) -> dict[str, Any] | None:
    """The first record of a json/jsonl/csv file, cheaply (no datasets import)."""
    try:
        if path.suffix == ".jsonl":
            with path.open() as f:
                return json.loads(f.readline())
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                return next(csv.DictReader(f))
    except Exception:
        return None
    return None


#: JSONL files up to this size are checked line by line before anything is built (larger: the first part)
JSONL_CHECK_BYTES = 256 << 20


def _bad_jsonl_line(path: Path) -> str | None:
    """The first line of a JSONL file that is not a JSON object, described; None when all are fine."""
    read = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            read += len(raw)
            if read > JSONL_CHECK_BYTES:
                return None
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except UnicodeDecodeError as e:
                return f"line {n} of {path.name} is not UTF-8 text ({e.reason})"
            except ValueError as e:
                return f"line {n} of {path.name} is not valid JSON: {e}: {raw[:60].decode(errors='replace').strip()!r}"
            if not isinstance(record, dict):
                return f"line {n} of {path.name} is a JSON {type(record).__name__}, not an object"
    return None


def peek_columns(path: Path) -> list[str] | None:
    record = peek_record(path)
    return list(record) if isinstance(record, dict) else None


def _file_problems(args: dict[str, Any]) -> tuple[Problems, Path | None]:
    """Checks shared by every file-based dataset; returns (problems, the local file or None)."""
    path = args.get("path")
    for key, least in (("max_length", 2), ("pack_length", 2), ("limit", 1), ("num_proc", 1)):
        value = args.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < least:
            return [(key, f"must be at least {least}, got {value}", "")], None
    pack_length, max_length = args.get("pack_length"), args.get("max_length", 512)
    if pack_length is not None and not args.get("packing"):
        return [("pack_length", f"is set ({pack_length}) but packing is off", "set packing: true, or drop pack_length")], None
    if isinstance(pack_length, int) and isinstance(max_length, int) and pack_length < max_length:
        return [("pack_length", f"({pack_length}) is shorter than max_length ({max_length}): an example of max_length "
                 "tokens would not fit in a row", "raise pack_length, or lower max_length (the longest example kept)")], None
    if not isinstance(path, str) or not _local(path):
        return [], None
    p = Path(path).expanduser()
    if not p.exists():
        return [("path", f"data file not found: {path} (resolved: {p.resolve()})",
                 "relative paths are relative to the current directory; write ${cfg_dir}/... for files next to the config")], None
    if p.is_file() and p.stat().st_size == 0:
        return [("path", f"{path} is empty", "")], None
    if p.is_dir() and not any(f.is_file() and not f.name.startswith(".") for f in p.rglob("*")):
        return [("path", f"{path} is an empty directory (no data files in it)",
                 f"point dataset.path at a data file ({', '.join(FORMATS)}) or a directory that holds some")], None
    if p.is_file() and p.suffix == ".jsonl":
        bad = _bad_jsonl_line(p)
        if bad:
            return [("path", bad, "each line must be one JSON object, e.g. {\"prompt\": \"...\", \"response\": \"...\"}")], None
    if p.is_file() and p.suffix not in FORMATS:
        return [("path", f"unsupported file type '{p.suffix}'", f"use one of {', '.join(FORMATS)}")], None
    return [], p if p.is_file() else None


def column_problems(args: dict[str, Any], p: Path | None, keys: dict[str, str]) -> Problems:
    """``keys``: config key -> default column name; each configured column must be in the file."""
    columns = peek_columns(p) if p is not None else None
    if columns is None:
        return []
    out = []
    for key, default in keys.items():
        col = args.get(key, default)
        if isinstance(col, str) and col not in columns:
            out.append((key, f"column '{col}' is not in {args['path']}", f"its columns are: {', '.join(columns)}"))
    return out


#: ``check(args, file, config)``: a dataset's own checks; ``file`` is the local data file (None for a
#: directory or a hub dataset), ``config`` the whole resolved config
Check = Callable[[dict[str, Any], Path | None, dict[str, Any]], Problems]


def file_dataset(check: Check) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorates a factory that reads ``path`` (a file, a directory or a hub dataset): its
    ``validate_args`` runs the checks every such dataset shares (the sizes, ``pack_length`` against
    ``packing`` and ``max_length``, the file: there, not empty, one JSON object per JSONL line, a known
    type) and, when those pass, ``check``; ``path`` and ``cache_dir`` are its ``path_args``."""

    def validate_args(args: dict[str, Any], config: dict[str, Any] | None = None) -> Problems:
        out, p = _file_problems(args)
        return out or check(args, p, config or {})

    def attach(factory: Callable[..., Any]) -> Callable[..., Any]:
        factory.validate_args = validate_args  # type: ignore[attr-defined]
        factory.path_args = ("path", "cache_dir")  # type: ignore[attr-defined]
        return factory

    return attach
