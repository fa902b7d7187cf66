"""Prompt -> response datasets: ``instruction`` (any columns, a prompt template, answer-only loss) and
``squad`` (context + question -> answer)."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from automodel.builtin.datasets.common import (
    Encode,
    Pipeline,
    Problems,
    bos_eos,
    column_problems,
    file_dataset,
    peek_columns,
    template_fields,
)


def pair_encoder(tokenizer: Any, make_prompt: Callable[[dict[str, Any]], str], make_response: Callable[[dict[str, Any]], str],
                 add_eos: bool, answer_only_loss: bool) -> Encode:
    """row -> BOS + prompt + response (+ EOS); labels on the response, or on everything after BOS."""
    bos, eos = bos_eos(tokenizer, add_eos)

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        p = bos + tokenizer.encode(make_prompt(row), add_special_tokens=False)
        r = tokenizer.encode(make_response(row), add_special_tokens=False) + eos
        labels = ([-100] * len(p) if answer_only_loss else [-100] * len(bos) + p[len(bos):]) + r
        return {"input_ids": p + r, "labels": labels}

    return encode


# --------------------------------------------------------------------------------------------------
# instruction
# --------------------------------------------------------------------------------------------------


def _instruction_checks(args: dict[str, Any], p: Path | None, config: dict[str, Any]) -> Problems:
    out = column_problems(args, p, {"prompt": "prompt", "response": "response"})
    columns = peek_columns(p) if p is not None else None
    template = args.get("prompt_template")
    if isinstance(template, str):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as e:
            return [*out, ("prompt_template", f"is not a valid format string: {e}", "write {prompt} or {column_name}; double braces {{ }} for literal ones")]
        if any(f == "" or f.isdigit() for f in fields):
            out.append(("prompt_template", "has a positional field {} ", "name the field: {prompt} or {column_name}"))
        elif columns is not None:
            unknown = [f for f in template_fields(template) if f != "prompt" and f not in columns]
            if unknown:
                out.append(("prompt_template", f"field(s) {', '.join('{' + f + '}' for f in unknown)} name no column of {args['path']}",
                            f"use {{prompt}} or one of: {', '.join(columns)}"))
    return out


@file_dataset(_instruction_checks)
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
    pipeline = Pipeline.of("instruction", locals())
    fields = [f for f in template_fields(prompt_template) if f != "prompt"]
    data = pipeline.load({"prompt": prompt, "response": response} | {f"prompt_template {{{f}}}": f for f in fields})

    def make_prompt(row: dict[str, Any]) -> str:
        return prompt_template.format_map({**row, "prompt": row[prompt]})

    encode = pair_encoder(tokenizer, make_prompt, lambda row: str(row[response]), add_eos, answer_only_loss)
    return pipeline.build(ctx, data, encode)


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


def _squad_checks(args: dict[str, Any], p: Path | None, config: dict[str, Any]) -> Problems:
    out = column_problems(args, p, {"context": "context", "question": "question", "answers": "answers"})
    template = args.get("prompt_template")
    if isinstance(template, str):
        unknown = [f for f in template_fields(template) if f not in ("context", "question")]
        if unknown:
            out.append(("prompt_template", f"unknown field(s) {', '.join('{' + f + '}' for f in unknown)}", "use {context} and {question}"))
    return out


@file_dataset(_squad_checks)
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
    pipeline = Pipeline.of("squad", locals())
    data = pipeline.load({"context": context, "question": question, "answers": answers})

    def make_prompt(row: dict[str, Any]) -> str:
        return prompt_template.format(context=row[context], question=row[question])

    def make_response(row: dict[str, Any]) -> str:
        return _answer_text(row[answers])

    bos, _ = bos_eos(tokenizer, add_eos)
    base = pair_encoder(tokenizer, make_prompt, make_response, add_eos, True)

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        if not make_response(row):  # nothing to answer: no label (dropped and counted)
            ids = bos + tokenizer.encode(make_prompt(row), add_special_tokens=False)
            return {"input_ids": ids, "labels": [-100] * len(ids)}
        return base(row)

    return pipeline.build(ctx, data, encode)
