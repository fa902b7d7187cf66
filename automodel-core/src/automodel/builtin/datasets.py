"""Builtin datasets, on Hugging Face ``datasets``:

* ``instruction``: prompt/response pairs (column mapping, prompt templates, answer-only loss)
* ``chat``: ``messages`` lists rendered with the tokenizer's chat template, loss on assistant turns
* ``squad``: context + question -> answer (SQuAD's ``answers: {text: [...]}`` or a plain string)
* ``hellaswag``: multiple choice (context + endings + label); as a validation dataset it reports
  accuracy (:meth:`MultipleChoice.evaluate`)
* ``mock``: random tokens

``instruction``, ``chat`` and ``squad`` share one pipeline: tokenize (``datasets.map``: cached, ``num_proc``
workers), then samples longer than ``max_length`` are truncated or dropped (``truncation``) and samples
without a label token are dropped, both counted in a one-line summary; then optional packing into rows of
``pack_length`` tokens (default ``max_length``; :func:`automodel.data.pack`), or, with ``streaming: true``, all of it lazily on a
``datasets.IterableDataset`` (:class:`automodel.data.StreamingDataset`).
"""

from __future__ import annotations

import csv
import json
import re
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from automodel.errors import AutomodelError

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _local(path: str) -> bool:
    return Path(path).suffix in FORMATS or path.startswith((".", "/", "~")) or Path(path).exists()


def _load(path: str, split: str, streaming: bool = False, cache_dir: str | None = None) -> Any:
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


def _require_columns(data: Any, path: str, wanted: dict[str, str]) -> None:
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


def _fit(encode: Callable[[dict[str, Any]], dict[str, list[int]]], max_length: int, truncation: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
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


def _build(
    ctx: Any, name: str, path: str, data: Any, encode: Callable[[dict[str, Any]], dict[str, list[int]]], *,
    max_length: int, truncation: str, packing: bool, pack_length: int | None, num_proc: int | None, limit: int | None,
    streaming: bool,
) -> Any:
    fit = _fit(encode, max_length, truncation)
    row_length = pack_length or max_length  # packed rows; examples are cut at max_length before packing
    if streaming:
        from automodel.data import StreamingDataset

        if limit is not None:
            data = data.take(limit)
        drop = truncation == "drop"
        data = data.map(fit).filter(lambda x: x["_labeled"] == 1 and not (drop and x["_length"] > max_length))
        ctx.print(f"dataset {name}: streaming {path} (tokenized on the fly; truncation: {truncation} at max_length={max_length}"
                  f"{f'; packed in order into rows of {row_length} tokens' if packing else ''})")
        return StreamingDataset(data, pack_length=row_length if packing else None, description=f"{name}:{path}")

    if limit is not None:
        data = data.select(range(min(limit, len(data))))
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
    if packing:
        from automodel.data import pack

        packed = pack(data, row_length, kept_lengths)
        parts.append(f"packed into {len(packed)} rows of {row_length} tokens: packing efficiency {packed.efficiency:.3f} "
                     f"(real tokens / total)")
        data = packed
    ctx.print("; ".join(parts))
    if n_cut > 0.01 * len(lengths):
        ctx.print(f"warning: dataset: {n_cut} of the {len(lengths)} examples of {path} keep no response token after "
                  f"truncation to max_length={max_length} (dropped); raise dataset.max_length or shorten the prompts")
    return data


def _bos_eos(tokenizer: Any, add_eos: bool) -> tuple[list[int], list[int]]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    return bos, eos


def _pair_encoder(tokenizer: Any, make_prompt: Callable[[dict[str, Any]], str], make_response: Callable[[dict[str, Any]], str],
                  add_eos: bool, answer_only_loss: bool) -> Callable[[dict[str, Any]], dict[str, list[int]]]:
    bos, eos = _bos_eos(tokenizer, add_eos)

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        p = bos + tokenizer.encode(make_prompt(row), add_special_tokens=False)
        r = tokenizer.encode(make_response(row), add_special_tokens=False) + eos
        labels = ([-100] * len(p) if answer_only_loss else [-100] * len(bos) + p[len(bos):]) + r
        return {"input_ids": p + r, "labels": labels}

    return encode


def _template_fields(template: str) -> list[str]:
    try:
        return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError:
        return []


# --------------------------------------------------------------------------------------------------
# instruction
# --------------------------------------------------------------------------------------------------


def instruction(
    ctx: Any,
    tokenizer: Any,
    path: str,
    prompt: str = "prompt",
    response: str = "response",
    prompt_template: str = "{prompt}",
    split: str = "train",
    max_length: int = 512,
    truncation: Literal["truncate", "drop"] = "truncate",
    add_eos: bool = True,
    answer_only_loss: bool = True,
    packing: bool = False,
    pack_length: int | None = None,
    streaming: bool = False,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    limit: int | None = None,
) -> Any:
    """Prompt/response pairs from a local json/jsonl/csv/parquet file, a directory or a hub dataset.

    ``prompt`` and ``response`` name the columns. Each example is BOS, ``prompt_template`` filled in
    (``{prompt}`` is the prompt column; any other ``{column}`` is that column, e.g.
    ``"{instruction}\\n{input}\\n"``), the response and EOS. With ``answer_only_loss`` only response tokens
    carry labels, else every token after BOS. Examples longer than ``max_length`` tokens are truncated
    or dropped (``truncation``); examples left without a response token are dropped. ``packing`` groups
    examples into rows of ``pack_length`` tokens (default ``max_length``).
    """
    data = _load(path, split, streaming, cache_dir)
    fields = [f for f in _template_fields(prompt_template) if f != "prompt"]
    _require_columns(data, path, {"prompt": prompt, "response": response} | {f"prompt_template {{{f}}}": f for f in fields})

    def make_prompt(row: dict[str, Any]) -> str:
        return prompt_template.format_map({**row, "prompt": row[prompt]})

    encode = _pair_encoder(tokenizer, make_prompt, lambda row: str(row[response]), add_eos, answer_only_loss)
    return _build(ctx, "instruction", path, data, encode, max_length=max_length, truncation=truncation, packing=packing,
                  pack_length=pack_length, num_proc=num_proc, limit=limit, streaming=streaming)


def _peek_record(path: Path) -> dict[str, Any] | None:
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


def _peek_columns(path: Path) -> list[str] | None:
    record = _peek_record(path)
    return list(record) if isinstance(record, dict) else None


def _file_problems(args: dict[str, Any]) -> tuple[list[tuple[str, str, str]], Path | None]:
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


def _column_problems(args: dict[str, Any], p: Path | None, keys: dict[str, str]) -> list[tuple[str, str, str]]:
    """``keys``: config key -> default column name; each configured column must be in the file."""
    columns = _peek_columns(p) if p is not None else None
    if columns is None:
        return []
    out = []
    for key, default in keys.items():
        col = args.get(key, default)
        if isinstance(col, str) and col not in columns:
            out.append((key, f"column '{col}' is not in {args['path']}", f"its columns are: {', '.join(columns)}"))
    return out


def _instruction_validate(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out, p = _file_problems(args)
    if out:
        return out
    out = _column_problems(args, p, {"prompt": "prompt", "response": "response"})
    columns = _peek_columns(p) if p is not None else None
    template = args.get("prompt_template")
    if isinstance(template, str):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as e:
            return [*out, ("prompt_template", f"is not a valid format string: {e}", "write {prompt} or {column_name}; double braces {{ }} for literal ones")]
        if any(f == "" or f.isdigit() for f in fields):
            out.append(("prompt_template", "has a positional field {} ", "name the field: {prompt} or {column_name}"))
        elif columns is not None:
            unknown = [f for f in _template_fields(template) if f != "prompt" and f not in columns]
            if unknown:
                out.append(("prompt_template", f"field(s) {', '.join('{' + f + '}' for f in unknown)} name no column of {args['path']}",
                            f"use {{prompt}} or one of: {', '.join(columns)}"))
    return out


instruction.validate_args = _instruction_validate  # type: ignore[attr-defined]
instruction.path_args = ("path", "cache_dir")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# squad
# --------------------------------------------------------------------------------------------------


def _answer_text(value: Any) -> str:
    """SQuAD's ``{"text": [...], "answer_start": [...]}`` (the first answer), a list, or a plain string."""
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else ""
    return "" if value is None else str(value)


def squad(
    ctx: Any,
    tokenizer: Any,
    path: str,
    context: str = "context",
    question: str = "question",
    answers: str = "answers",
    prompt_template: str = "Context: {context}\nQuestion: {question}\nAnswer: ",
    split: str = "train",
    max_length: int = 512,
    truncation: Literal["truncate", "drop"] = "truncate",
    add_eos: bool = True,
    packing: bool = False,
    pack_length: int | None = None,
    streaming: bool = False,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    limit: int | None = None,
) -> Any:
    """Extractive QA as generation: ``prompt_template`` (``{context}``, ``{question}``) -> the answer + EOS,
    loss on the answer only. ``answers`` is SQuAD's ``{"text": [...]}`` (the first answer is the target)
    or a string. An example without an answer (SQuAD v2 unanswerable) is dropped and counted."""
    data = _load(path, split, streaming, cache_dir)
    _require_columns(data, path, {"context": context, "question": question, "answers": answers})

    def make_prompt(row: dict[str, Any]) -> str:
        return prompt_template.format(context=row[context], question=row[question])

    def make_response(row: dict[str, Any]) -> str:
        return _answer_text(row[answers])

    bos, eos = _bos_eos(tokenizer, add_eos)
    base = _pair_encoder(tokenizer, make_prompt, make_response, add_eos, True)

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        if not make_response(row):  # nothing to answer: no label (dropped and counted)
            ids = bos + tokenizer.encode(make_prompt(row), add_special_tokens=False)
            return {"input_ids": ids, "labels": [-100] * len(ids)}
        return base(row)

    return _build(ctx, "squad", path, data, encode, max_length=max_length, truncation=truncation, packing=packing,
                  pack_length=pack_length, num_proc=num_proc, limit=limit, streaming=streaming)


def _squad_validate(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out, p = _file_problems(args)
    if out:
        return out
    out = _column_problems(args, p, {"context": "context", "question": "question", "answers": "answers"})
    template = args.get("prompt_template")
    if isinstance(template, str):
        unknown = [f for f in _template_fields(template) if f not in ("context", "question")]
        if unknown:
            out.append(("prompt_template", f"unknown field(s) {', '.join('{' + f + '}' for f in unknown)}", "use {context} and {question}"))
    return out


squad.validate_args = _squad_validate  # type: ignore[attr-defined]
squad.path_args = ("path", "cache_dir")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# chat
# --------------------------------------------------------------------------------------------------

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
ROLES = ("system", "user", "assistant", "tool")


def _chat_template(tokenizer: Any, chat_template: str | None) -> str:
    if chat_template is None:
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise AutomodelError(
                "dataset: the tokenizer has no chat template; set dataset.chat_template to a Jinja template "
                "(the text, or a path to a .jinja file), or use a tokenizer that has one"
            )
        return template
    if "{%" in chat_template or "{{" in chat_template:
        return chat_template
    p = Path(chat_template).expanduser()
    if not p.is_file():
        raise AutomodelError(f"dataset: chat_template {chat_template!r} is neither a Jinja template nor a file")
    return p.read_text()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assistant_spans_by_prefix(tokenizer: Any, messages: list[dict[str, Any]], template: str) -> tuple[list[int], list[int]]:
    """(token ids, assistant mask) for a template without ``{% generation %}``: render the conversation
    up to each assistant turn (with the generation prompt) and up to its end, and mark the tokens
    in between. Prefixes are matched token by token, so a template that renders earlier turns
    differently once later ones follow still gets the tokens that the full rendering has."""

    def ids(msgs: list[dict[str, Any]], gen: bool) -> list[int]:
        if not msgs:
            return []
        text = tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=gen)
        return tokenizer.encode(text, add_special_tokens=False)

    full = ids(messages, False)
    mask = [0] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _common_prefix(ids(messages[:i], True), full)
        end = _common_prefix(ids(messages[: i + 1], False), full)
        for j in range(start, end):
            mask[j] = 1
    return full, mask


def _clean_messages(row_messages: Any, system_prompt: str | None) -> list[dict[str, Any]]:
    if not isinstance(row_messages, list) or not row_messages:
        raise AutomodelError(f"dataset: a chat example's messages must be a non-empty list of {{role, content}}, got {str(row_messages)[:80]!r}")
    msgs = []
    for m in row_messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise AutomodelError(f"dataset: a chat message must have 'role' and 'content', got {str(m)[:80]!r}")
        if m["role"] not in ROLES:
            raise AutomodelError(f"dataset: unknown chat role {m['role']!r} (expected one of {', '.join(ROLES)})")
        msgs.append({k: v for k, v in m.items() if v is not None})
    if system_prompt is not None and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def chat(
    ctx: Any,
    tokenizer: Any,
    path: str,
    messages: str = "messages",
    chat_template: str | None = None,
    system_prompt: str | None = None,
    train_on: Literal["assistant", "all"] = "assistant",
    split: str = "train",
    max_length: int = 512,
    truncation: Literal["truncate", "drop"] = "truncate",
    packing: bool = False,
    pack_length: int | None = None,
    streaming: bool = False,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    limit: int | None = None,
) -> Any:
    """Conversations (``messages``: a list of ``{role, content}``; roles system/user/assistant/tool),
    rendered with the tokenizer's chat template or ``chat_template`` (Jinja text or a file).

    Loss on the assistant turns only (``train_on: all``: every token). The assistant tokens come from the
    template's ``{% generation %}`` blocks when it has them (``return_assistant_tokens_mask``), else from
    rendering each prefix of the conversation and diffing the token ids. ``system_prompt`` is prepended
    to conversations that have no system message. Multi-turn: every assistant turn is trained on.
    """
    data = _load(path, split, streaming, cache_dir)
    _require_columns(data, path, {"messages": messages})
    template = _chat_template(tokenizer, chat_template)
    native = bool(_GENERATION.search(template))

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        msgs = _clean_messages(row[messages], system_prompt)
        if native:
            out = tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        else:
            ids, mask = assistant_spans_by_prefix(tokenizer, msgs, template)
        if train_on == "all":
            return {"input_ids": ids, "labels": list(ids)}
        return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]}

    return _build(ctx, "chat", path, data, encode, max_length=max_length, truncation=truncation, packing=packing,
                  pack_length=pack_length, num_proc=num_proc, limit=limit, streaming=streaming)


def _tokenizer_has_chat_template(config: dict[str, Any]) -> tuple[str, bool] | None:
    """(tokenizer directory, whether it has a chat template) for a local tokenizer named by the model
    section, read from its files without loading it; None when that cannot be known cheaply."""
    model = (config or {}).get("model") or {}
    source = model.get("tokenizer") or model.get("pretrained")
    if not isinstance(source, str):
        return None
    d = Path(source).expanduser()
    if not (d / "tokenizer_config.json").is_file():
        return None
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return source, True
    try:
        return source, bool(json.loads((d / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return None


def _chat_validate(args: dict[str, Any], config: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    out, p = _file_problems(args)
    if out:
        return out
    if args.get("chat_template") is None:
        found = _tokenizer_has_chat_template(config or {})
        if found is not None and not found[1]:
            out.append(("chat_template", f"is not set and the tokenizer at {found[0]} has no chat template",
                        "set dataset.chat_template to a Jinja template (the text, or a path to a .jinja file), "
                        "or use a tokenizer that has one"))
    out += _column_problems(args, p, {"messages": "messages"})
    template = args.get("chat_template")
    if isinstance(template, str) and "{%" not in template and "{{" not in template and not Path(template).expanduser().is_file():
        out.append(("chat_template", f"{template!r} is neither a Jinja template nor an existing file", ""))
    record = _peek_record(p) if p is not None and not out else None
    col = args.get("messages", "messages")
    if isinstance(record, dict) and isinstance(col, str) and col in record:
        msgs = record[col]
        if not (isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)):
            out.append(("messages", f"column '{col}' of {args['path']} is not a list of {{role, content}} messages (first record)",
                        'expected e.g. [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]'))
    return out


chat.validate_args = _chat_validate  # type: ignore[attr-defined]
chat.path_args = ("path", "cache_dir")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# hellaswag: multiple choice, evaluated by accuracy
# --------------------------------------------------------------------------------------------------


class MultipleChoice:
    """Multiple-choice examples (a context and several endings, one correct).

    As a map-style dataset, item ``i`` is the context followed by the correct ending, loss on the ending
    (so it can also be trained on, or validated by mean token loss). :meth:`evaluate` scores every
    ending by the log-likelihood of its tokens given the context and reports accuracy.
    """

    def __init__(self, examples: list[tuple[list[int], list[list[int]], int]], max_length: int, batch_size: int):
        self.examples = examples  # (context ids incl. BOS, [ending ids], label)
        self.max_length = max_length
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.examples)

    def _sequence(self, context: list[int], ending: list[int]) -> tuple[list[int], int]:
        """Context + ending, the context cut from the left to fit ``max_length``; (ids, ending start)."""
        keep = max(1, self.max_length - len(ending))
        ctx_ids = context[-keep:]
        ids = (ctx_ids + ending)[: self.max_length]
        return ids, len(ctx_ids)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        context, endings, label = self.examples[i]
        ids, start = self._sequence(context, endings[label])
        return {"input_ids": ids, "labels": [-100] * start + ids[start:]}

    def _scores(self, model: Any, device: Any, examples: list[tuple[list[int], list[list[int]], int]]) -> tuple[Any, Any]:
        """(summed, mean) log-likelihood of every ending: two [examples, endings] tensors."""
        import torch

        seqs = [self._sequence(c, e) for c, endings, _ in examples for e in endings]
        n = max(len(s) for s, _ in seqs)
        ids = torch.zeros((len(seqs), n), dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        target = torch.zeros((len(seqs), n), dtype=torch.bool)  # positions whose next token is an ending token
        for i, (s, start) in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            target[i, start - 1 : len(s) - 1] = True
        ids, mask, target = ids.to(device), mask.to(device), target.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        logp = torch.where(target[:, :-1], logp, torch.zeros_like(logp))
        total = logp.sum(-1)
        mean = total / target[:, :-1].sum(-1).clamp(min=1)
        k = max(len(endings) for _, endings, _ in examples)  # examples with fewer endings: -inf for the rest
        out_total = torch.full((len(examples), k), float("-inf"), device=total.device)
        out_mean = out_total.clone()
        row = 0
        for i, (_, endings, _) in enumerate(examples):
            out_total[i, : len(endings)] = total[row : row + len(endings)]
            out_mean[i, : len(endings)] = mean[row : row + len(endings)]
            row += len(endings)
        return out_total, out_mean

    def evaluate(self, model: Any, ctx: Any) -> dict[str, Any]:
        """Accuracy over this rank's share of the examples (``ctx.dp_rank`` of ``ctx.dp_size``), summed over
        all ranks when ``torch.distributed`` is initialized. ``val_accuracy``: the ending with the highest
        summed log-likelihood is right; ``val_accuracy_norm``: the highest mean per-token log-likelihood."""
        import torch
        import torch.distributed as dist

        mine = self.examples[ctx.dp_rank :: ctx.dp_size]
        per_rank = -(-len(self.examples) // ctx.dp_size)  # every rank runs as many forwards (FSDP all-gathers)
        counts = torch.zeros(3, dtype=torch.float64)  # right by sum, right by mean, examples
        with torch.no_grad():
            for lo in range(0, per_rank, self.batch_size):
                chunk = mine[lo : lo + self.batch_size]
                real = len(chunk)
                if real == 0:
                    chunk = self.examples[:1]  # a forward whose result is discarded
                total, mean = self._scores(model, ctx.device, chunk)
                if real == 0:
                    continue
                labels = torch.tensor([ex[2] for ex in chunk], device=total.device)
                counts[0] += float((total.argmax(-1) == labels).sum())
                counts[1] += float((mean.argmax(-1) == labels).sum())
                counts[2] += real
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = ctx.device if dist.get_backend() == "nccl" else "cpu"
            reduced = counts.to(device)
            dist.all_reduce(reduced)
            counts = reduced.cpu() / (dist.get_world_size() // ctx.dp_size)  # tensor-parallel peers repeat the count
        n = max(float(counts[2]), 1.0)
        return {"val_accuracy": float(counts[0]) / n, "val_accuracy_norm": float(counts[1]) / n, "val_examples": int(round(float(counts[2])))}


def hellaswag(
    ctx: Any,
    tokenizer: Any,
    path: str,
    context: str = "ctx",
    endings: str = "endings",
    label: str = "label",
    split: str = "validation",
    max_length: int = 512,
    batch_size: int = 8,
    cache_dir: str | None = None,
    limit: int | None = None,
) -> MultipleChoice:
    """HellaSwag-style multiple choice: ``context`` (text), ``endings`` (list of texts), ``label`` (index of
    the right ending; int or numeric string). Each ending is scored after the context and a space
    (``" " + ending``). As ``validation_dataset`` it reports ``val_accuracy`` (summed log-likelihood),
    ``val_accuracy_norm`` (per-token mean) and ``val_examples``. ``batch_size``: examples per forward."""
    data = _load(path, split, False, cache_dir)
    _require_columns(data, path, {"context": context, "endings": endings, "label": label})
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    examples = []
    for i, row in enumerate(data):
        options = row[endings]
        try:
            answer = int(row[label])
        except (TypeError, ValueError):
            raise AutomodelError(f"dataset: example {i} of {path}: label {row[label]!r} is not an ending index") from None
        if not isinstance(options, list) or not options or not 0 <= answer < len(options):
            raise AutomodelError(f"dataset: example {i} of {path}: label {answer} does not index its {len(options) if isinstance(options, list) else 0} endings")
        ctx_ids = bos + tokenizer.encode(str(row[context]), add_special_tokens=False)
        examples.append((ctx_ids, [tokenizer.encode(" " + str(e).strip(), add_special_tokens=False) or [tokenizer.eos_token_id] for e in options], answer))
    ctx.print(f"dataset hellaswag: {len(examples)} multiple-choice examples from {path} "
              f"({sum(len(e[1]) for e in examples)} endings scored per evaluation)")
    return MultipleChoice(examples, max_length, batch_size)


def _hellaswag_validate(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out, p = _file_problems(args)
    if out:
        return out
    out = _column_problems(args, p, {"context": "ctx", "endings": "endings", "label": "label"})
    if isinstance(args.get("batch_size"), int) and args["batch_size"] < 1:
        out.append(("batch_size", f"must be at least 1, got {args['batch_size']}", ""))
    return out


hellaswag.validate_args = _hellaswag_validate  # type: ignore[attr-defined]
hellaswag.path_args = ("path", "cache_dir")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# mock
# --------------------------------------------------------------------------------------------------


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
