"""The teacher's vocabulary against the student's, from files only (config.json, tokenizer files).

Distillation compares two distributions over token ids, id by id: both models must have the same
``vocab_size`` and their tokenizers must map every id to the same token. This runs in ``automodel
validate`` / before launch, so it reads JSON and never loads a model or imports torch/transformers.
What cannot be read locally (a hub id not in the local files) is not checked here; the loss's
``setup`` still compares the two lm_heads once both models are loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

HINT = ("distillation compares the two models' distributions token id by token id, so the teacher must use the "
        "student's tokenizer and vocab_size: pick a teacher of the student's family, or build the student with the "
        "teacher's tokenizer (model.tokenizer) and vocab_size")


def model_vocab_size(section: dict[str, Any], plugins: Any) -> int | None:
    """The ``vocab_size`` of a model section, as its loader declares the architecture before launch
    (the loader factory's ``model_config``: :func:`automodel.architecture.model_architecture`); None
    when it cannot tell (a hub id, a loader that declares nothing)."""
    from automodel.architecture import model_architecture

    size = (model_architecture(section, plugins) or {}).get("vocab_size")
    return int(size) if isinstance(size, int) and not isinstance(size, bool) else None


def tokenizer_vocab(directory: Path) -> dict[int, str] | str | None:
    """id -> token of the tokenizer in ``directory`` (tokenizer.json, or vocab.json + added_tokens.json);
    a content hash for a sentencepiece ``tokenizer.model``; None when there is nothing to read."""
    fast = directory / "tokenizer.json"
    if fast.is_file():
        data = json.loads(fast.read_text(encoding="utf-8"))
        vocab = (data.get("model") or {}).get("vocab")
        out: dict[int, str] = {}
        if isinstance(vocab, dict):
            out = {int(i): str(t) for t, i in vocab.items()}
        elif isinstance(vocab, list):  # Unigram: [[token, score], ...]
            out = {i: str(entry[0]) for i, entry in enumerate(vocab)}
        for added in data.get("added_tokens") or []:
            out[int(added["id"])] = str(added["content"])
        return out
    slow = directory / "vocab.json"
    if slow.is_file():
        out = {int(i): str(t) for t, i in json.loads(slow.read_text(encoding="utf-8")).items()}
        added = directory / "added_tokens.json"
        if added.is_file():
            out.update({int(i): str(t) for t, i in json.loads(added.read_text(encoding="utf-8")).items()})
        return out
    sp = directory / "tokenizer.model"
    if sp.is_file():
        return "sha256:" + hashlib.sha256(sp.read_bytes()).hexdigest()
    return None


def _compare(student: dict[int, str], teacher: dict[int, str]) -> str | None:
    differ = sorted(i for i in student.keys() & teacher.keys() if student[i] != teacher[i])
    only_s = sorted(student.keys() - teacher.keys())
    only_t = sorted(teacher.keys() - student.keys())
    if not (differ or only_s or only_t):
        return None
    parts = [f"the student's tokenizer has {len(student)} tokens, the teacher's {len(teacher)}"]
    if differ:
        examples = ", ".join(f"id {i}: {student[i]!r} (student) vs {teacher[i]!r} (teacher)" for i in differ[:3])
        parts.append(f"{len(differ)} ids map to different tokens (e.g. {examples})")
    for who, ids in (("student", only_s), ("teacher", only_t)):
        if ids:
            parts.append(f"{len(ids)} ids exist only in the {who}'s ({_ranges(ids)})")
    return "; ".join(parts)


def _ranges(ids: list[int], limit: int = 3) -> str:
    spans: list[tuple[int, int]] = []
    for i in ids:
        if spans and i == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], i)
        else:
            spans.append((i, i))
    text = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in spans[:limit])
    return text + (", ..." if len(spans) > limit else "")


def vocabulary_problems(student: dict[str, Any], teacher: dict[str, Any], plugins: Any) -> list[tuple[str, str]]:
    """(message, hint) for each way the teacher's vocabulary differs from the student's."""
    out = []
    s_size, t_size = model_vocab_size(student, plugins), model_vocab_size(teacher, plugins)
    if s_size is not None and t_size is not None and s_size != t_size:
        out.append((f"vocab_size differs: student {s_size} vs teacher {t_size} (the model configs their loaders declare)", HINT))
    from automodel.architecture import model_tokenizer_dir

    s_dir, t_dir = model_tokenizer_dir(student, plugins), model_tokenizer_dir(teacher, plugins)
    if s_dir is not None and t_dir is not None and s_dir.resolve() != t_dir.resolve():
        s_vocab, t_vocab = tokenizer_vocab(s_dir), tokenizer_vocab(t_dir)
        if s_vocab is not None and t_vocab is not None:
            if isinstance(s_vocab, dict) and isinstance(t_vocab, dict):
                diff = _compare(s_vocab, t_vocab)
            else:
                diff = None if s_vocab == t_vocab else "the two tokenizers' files differ"
            if diff:
                out.append((f"the tokenizers differ ({s_dir} for the student, {t_dir} for the teacher): {diff}", HINT))
    return out
