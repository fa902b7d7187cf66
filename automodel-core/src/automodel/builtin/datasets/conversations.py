"""``chat``: conversations (a ``messages`` list per example) rendered with a chat template, loss on the
assistant turns."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from automodel.builtin.datasets.common import Pipeline, Problems, column_problems, file_dataset, peek_record
from automodel.errors import AutomodelError

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


def _tokenizer_has_chat_template(config: dict[str, Any]) -> tuple[str, bool] | None:
    """(tokenizer directory, whether it has a chat template) for the local tokenizer the model loader
    declares (its ``tokenizer_dir``), read from its files without loading it; None when that cannot be
    known cheaply (a hub id, a loader that declares no tokenizer directory)."""
    from automodel.architecture import model_tokenizer_dir
    from automodel.plugins import load_plugins

    plugins = load_plugins([m for m in config.get("plugins") or [] if isinstance(m, str)])
    d = model_tokenizer_dir(config.get("model"), plugins)
    if d is None or not (d / "tokenizer_config.json").is_file():
        return None
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return str(d), True
    try:
        return str(d), bool(json.loads((d / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return None


def _chat_checks(args: dict[str, Any], p: Path | None, config: dict[str, Any]) -> Problems:
    out: Problems = []
    if args.get("chat_template") is None:
        found = _tokenizer_has_chat_template(config or {})
        if found is not None and not found[1]:
            out.append(("chat_template", f"is not set and the tokenizer at {found[0]} has no chat template",
                        "set dataset.chat_template to a Jinja template (the text, or a path to a .jinja file), "
                        "or use a tokenizer that has one"))
    out += column_problems(args, p, {"messages": "messages"})
    template = args.get("chat_template")
    if isinstance(template, str) and "{%" not in template and "{{" not in template and not Path(template).expanduser().is_file():
        out.append(("chat_template", f"{template!r} is neither a Jinja template nor an existing file", ""))
    record = peek_record(p) if p is not None and not out else None
    col = args.get("messages", "messages")
    if isinstance(record, dict) and isinstance(col, str) and col in record:
        msgs = record[col]
        if not (isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)):
            out.append(("messages", f"column '{col}' of {args['path']} is not a list of {{role, content}} messages (first record)",
                        'expected e.g. [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]'))
    return out


@file_dataset(_chat_checks)
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
    pipeline = Pipeline.of("chat", locals())
    data = pipeline.load({"messages": messages})
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

    return pipeline.build(ctx, data, encode)

