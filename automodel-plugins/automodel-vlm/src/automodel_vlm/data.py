"""The ``image_chat`` dataset: conversations with images, for ``hf_vlm`` models.

Records come from a local JSONL/JSON file (image paths relative to the file, or to ``image_root``) or
from a Hugging Face ``datasets`` dataset (a directory saved with ``save_to_disk``, a parquet file, or a
hub id) with an ``Image`` column. Every record is checked when the dataset is built (structure, image
files present and readable), so a bad record stops the run before the first step, naming the record and
the file. Images are decoded and run through the processor when an item is read.

Each item is rendered with the processor's chat template and processed by the processor itself (the
image placeholders expanded into the model's image tokens, ``pixel_values`` and any other tensors it
returns). Labels are the assistant turns' tokens only (``train_on: all``: every text token); image
placeholder tokens never carry a label. :meth:`ImageChatDataset.collate` batches items: pads the tokens,
shifts the labels, and concatenates the per-image tensors (``pixel_values``, ``image_sizes``,
``image_grid_thw``, ...).
"""

from __future__ import annotations

import bisect
import io
import json
from pathlib import Path
from typing import Any, Literal

from automodel.errors import AutomodelError

ROLES = ("system", "user", "assistant", "tool")
PLACEHOLDER = "<image>"  # in string content: one image (LLaMA-Factory / ShareGPT style)
REF_KEYS = ("image", "path", "url")  # an image part's inline reference


class ImageChatDataset:
    """A map-style dataset of image conversations (see the module docstring). ``records[i]`` is
    ``(messages, image_refs)``: messages with list content (text and image parts), and one reference
    per image part, in order (a path, a PIL image, or ``{"bytes", "path"}`` from a ``datasets`` column)."""

    def __init__(self, records: list[tuple[list[dict[str, Any]], list[Any]]], processor: Any, source: str, *,
                 chat_template: str | None, train_on: str, max_length: int, where: list[str]):
        self.records = records
        self.processor = processor
        self.source = source
        self.where = where  # how to name record i in errors ("record 3 (line 4) of data.jsonl")
        self.chat_template = chat_template
        self.train_on = train_on
        self.max_length = max_length
        tok = processor.tokenizer if hasattr(processor, "tokenizer") else processor
        self.tokenizer = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        from automodel_vlm.model import image_token_id

        self.image_token_id = image_token_id(processor)
        self.offsets = True  # the processor reports placeholder replacements; else token-prefix fallback

    def __len__(self) -> int:
        return len(self.records)

    # -- one item ---------------------------------------------------------------------------------

    def __getitem__(self, i: int) -> dict[str, Any]:
        messages, refs = self.records[i]
        images = [load_image(ref, self.where[i]) for ref in refs]
        text = self.render(messages)
        spans = self.assistant_spans(messages, text) if self.train_on == "assistant" else [(0, len(text))]
        out = self._process(text, images, i, offsets=self.offsets)
        if self.offsets and ("offset_mapping" not in out or "text_replacement_offsets" not in out):
            self.offsets = False  # this processor cannot report them: compare token prefixes instead
        if self.offsets:
            mask, placeholder = _char_mask(out, spans)
        else:
            mask, placeholder = self._prefix_mask(messages, images, out, i)
        ids = out["input_ids"][0].tolist()
        labels = [t if m and not p and t != self.image_token_id else -100 for t, m, p in zip(ids, mask, placeholder)]
        n = len(ids)
        extras: dict[str, Any] = {}
        for key, value in out.items():
            if key in ("input_ids", "attention_mask", "offset_mapping", "text_replacement_offsets") or not hasattr(value, "shape"):
                continue
            if value.dim() == 2 and value.shape == (1, n):  # per token (token_type_ids, mm_token_type_ids)
                extras[key] = value[0]
            else:  # per image (pixel_values, image_sizes, image_grid_thw, ...)
                extras[key] = value
        if n > self.max_length:
            if any(placeholder[self.max_length:]) or self.image_token_id in ids[self.max_length:]:
                raise AutomodelError(
                    f"dataset: {self.where[i]} is {n} tokens with its images expanded, and cutting it at "
                    f"max_length={self.max_length} would cut image tokens; raise dataset.max_length (at least {n})"
                )
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            extras = {k: (v[: self.max_length] if v.dim() == 1 and v.shape[0] == n else v) for k, v in extras.items()}
        if not any(x != -100 for x in labels[1:]):
            raise AutomodelError(f"dataset: {self.where[i]} has no assistant token to learn from after truncation to "
                                 f"max_length={self.max_length}; raise dataset.max_length")
        return {"input_ids": ids, "labels": labels, **extras}

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        if not messages:
            return ""
        return self.processor.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def assistant_spans(self, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
        """Character spans of ``text`` (the whole conversation rendered) that the assistant turns add:
        from the end of the conversation rendered up to the turn with the generation prompt, to the end
        of it rendered through the turn (its end-of-turn tokens included)."""
        spans = []
        for j, m in enumerate(messages):
            if m["role"] == "assistant":
                start = _common_prefix(self.render(messages[:j], True), text)
                end = _common_prefix(self.render(messages[: j + 1]), text)
                if end > start:
                    spans.append((start, end))
        return spans

    def _process(self, text: str, images: list[Any], i: int, offsets: bool) -> Any:
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            kwargs["add_special_tokens"] = False  # the template wrote BOS already
        if offsets:
            kwargs.update(return_offsets_mapping=True, return_text_replacement_offsets=True)
        try:
            return self.processor(text=[text], images=[images] if images else None, **kwargs)
        except (ValueError, TypeError, RuntimeError) as e:
            raise AutomodelError(f"dataset: the processor rejected {self.where[i]}: {str(e).splitlines()[0]}") from e

    def _prefix_mask(self, messages: list[dict[str, Any]], images: list[Any], out: Any, i: int) -> tuple[list[int], list[int]]:
        """Assistant mask by processing each assistant turn's prefixes (images included) and comparing
        token ids: for processors that report no placeholder offsets."""
        ids = out["input_ids"][0].tolist()
        mask = [0] * len(ids) if self.train_on == "assistant" else [1] * len(ids)
        if self.train_on == "assistant":
            for j, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                bounds = []
                for prefix, gen in ((messages[:j], True), (messages[: j + 1], False)):
                    k = sum(1 for msg in prefix for part in msg["content"] if part.get("type") == "image")
                    pre = self._process(self.render(prefix, gen), images[:k], i, offsets=False)["input_ids"][0].tolist() if prefix else []
                    bounds.append(_common_prefix(pre, ids))
                for t in range(bounds[0], bounds[1]):
                    mask[t] = 1
        return mask, [0] * len(ids)

    # -- batching ---------------------------------------------------------------------------------

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad ``input_ids`` (and per-token extras) to the longest, shift ``labels`` by one (``-100``
        ignored), add ``attention_mask`` when there is padding, and concatenate each per-image tensor
        over the examples that have one (padding its trailing dimensions to the largest if they differ)."""
        import torch

        n = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), n), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[i, :k] = torch.as_tensor(e["input_ids"])
            labels[i, : k - 1] = torch.as_tensor(e["labels"][1:k])
            mask[i, :k] = 1
        batch: dict[str, Any] = {"input_ids": ids, "labels": labels}
        if not bool(mask.all()):
            batch["attention_mask"] = mask
        keys = dict.fromkeys(k for e in examples for k in e if k not in ("input_ids", "labels"))
        for key in keys:
            values = [(e[key], len(e["input_ids"])) for e in examples if key in e]
            if all(v.dim() == 1 and v.shape[0] == k for v, k in values) and len(values) == len(examples):
                out = torch.zeros((len(examples), n), dtype=values[0][0].dtype)
                for i, (v, k) in enumerate(values):
                    out[i, :k] = v
                batch[key] = out
            else:
                batch[key] = _cat_padded([v for v, _ in values])
        return batch


def _cat_padded(tensors: list[Any]) -> Any:
    import torch

    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        dims = [max(s[d] for s in shapes) for d in range(len(next(iter(shapes))))]
        padded = []
        for t in tensors:
            p = t.new_zeros((t.shape[0], *dims))
            p[(slice(None), *(slice(0, s) for s in t.shape[1:]))] = t
            padded.append(p)
        tensors = padded
    return torch.cat(tensors, dim=0)


def _common_prefix(a: Any, b: Any) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _char_mask(out: Any, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(assistant mask, placeholder mask) per token, from the processor's character offsets: ``spans``
    are in the text before placeholders were expanded, shifted past the expansions before them."""
    offsets = out["offset_mapping"][0].tolist()
    replacements = out["text_replacement_offsets"][0] if out["text_replacement_offsets"] else []
    ends = [r["span"][1] for r in replacements]
    gained = [0]
    for r in replacements:
        gained.append(r["new_span"][1] - r["span"][1])

    def shift(c: int) -> int:
        return c + gained[bisect.bisect_right(ends, c)]

    shifted = [(shift(a), shift(b)) for a, b in spans]
    new_spans = [tuple(r["new_span"]) for r in replacements]
    mask, placeholder = [], []
    for s, e in offsets:
        mask.append(int(any(s < b and e > a for a, b in shifted)))
        placeholder.append(int(any(s < b and e > a for a, b in new_spans)))
    return mask, placeholder


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def load_image(ref: Any, where: str) -> Any:
    """A PIL RGB image from a path, bytes (``{"bytes": ..., "path": ...}``) or a PIL image."""
    from PIL import Image, UnidentifiedImageError

    if hasattr(ref, "convert"):
        return ref.convert("RGB")
    try:
        if isinstance(ref, dict) and ref.get("bytes"):
            image = Image.open(io.BytesIO(ref["bytes"]))
            name = ref.get("path") or "image bytes"
        else:
            name = ref["path"] if isinstance(ref, dict) else ref
            image = Image.open(name)
        image.load()
        return image.convert("RGB")
    except FileNotFoundError as e:
        raise AutomodelError(f"dataset: {where}: image not found: {name}\n    -> fix the path (relative paths are "
                             "relative to the data file, or to dataset.image_root)") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise AutomodelError(f"dataset: {where}: cannot read image {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             "\n    -> replace or remove the file (a truncated download or not an image)") from e


def check_image(ref: Any, where: str) -> None:
    """The image exists and its header is readable (cheap: the pixels are decoded when the item is read)."""
    from PIL import Image, UnidentifiedImageError

    if hasattr(ref, "convert"):
        return
    if isinstance(ref, dict) and ref.get("bytes"):
        source: Any = io.BytesIO(ref["bytes"])
        name = ref.get("path") or "image bytes"
    else:
        name = ref["path"] if isinstance(ref, dict) else ref
        source = name
        if not Path(name).is_file():
            raise AutomodelError(f"dataset: {where}: image not found: {name}\n    -> fix the path (relative paths "
                                 "are relative to the data file, or to dataset.image_root)")
    try:
        with Image.open(source) as im:
            im.size  # noqa: B018
    except (UnidentifiedImageError, OSError) as e:
        raise AutomodelError(f"dataset: {where}: cannot read image {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             "\n    -> replace or remove the file (a truncated download or not an image)") from e


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def normalize(row_messages: Any, row_images: Any, base: Path | None, where: str,
              system_prompt: str | None = None) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages with list content (``{"type": "text", "text"}`` / ``{"type": "image"}`` parts) and the
    image references in order. An image part may name its image inline (``image`` / ``path`` / ``url``
    key; ``image_url`` parts too); parts that do not, and ``<image>`` in string content, take the
    record's ``images`` list in order. Relative paths are resolved against ``base``."""
    if not isinstance(row_messages, list) or not row_messages:
        raise AutomodelError(f"dataset: {where}: messages must be a non-empty list of {{role, content}}, "
                             f"got {str(row_messages)[:80]!r}")
    pool = list(row_images) if row_images is not None else []
    if not isinstance(pool, list):
        pool = [pool]
    messages, refs, from_pool = [], [], 0
    for m in row_messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise AutomodelError(f"dataset: {where}: a message must have 'role' and 'content', got {str(m)[:80]!r}")
        if m["role"] not in ROLES:
            raise AutomodelError(f"dataset: {where}: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        content = m["content"]
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            pieces = content.split(PLACEHOLDER)
            for k, piece in enumerate(pieces):
                if k:
                    parts.append({"type": "image"})
                    refs.append(None)
                if piece:
                    parts.append({"type": "text", "text": piece})
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                elif kind in ("image", "image_url"):
                    ref = next((part[k] for k in REF_KEYS if part.get(k) is not None), None)
                    if kind == "image_url":
                        url = part.get("image_url")
                        ref = url.get("url") if isinstance(url, dict) else url
                    parts.append({"type": "image"})
                    refs.append(ref)
                else:
                    raise AutomodelError(f"dataset: {where}: unsupported content part {str(part)[:80]!r} "
                                         "(expected {\"type\": \"text\", \"text\": ...} or {\"type\": \"image\"}; video and audio "
                                         "are not supported yet)")
        else:
            raise AutomodelError(f"dataset: {where}: message content must be a string or a list of parts, got {type(content).__name__}")
        messages.append({"role": m["role"], "content": parts})
    if not any(m["role"] == "assistant" for m in messages):
        raise AutomodelError(f"dataset: {where} has no assistant message: there is nothing to learn from it\n"
                             "    -> every record needs at least one {\"role\": \"assistant\", ...} turn")
    n_placeholders = sum(r is None for r in refs)
    for k, ref in enumerate(refs):
        if ref is None:
            if from_pool >= len(pool):
                raise AutomodelError(
                    f"dataset: {where} has {n_placeholders} image placeholder(s) without an inline image but "
                    f"{len(pool)} image(s) in its images list\n    -> give one image per placeholder "
                    f"({PLACEHOLDER!r} in text or an {{\"type\": \"image\"}} part)")
            refs[k] = pool[from_pool]
            from_pool += 1
    if from_pool < len(pool):
        raise AutomodelError(f"dataset: {where} lists {len(pool)} image(s) but its messages place only {from_pool}\n"
                             f"    -> add a {PLACEHOLDER!r} (or an {{\"type\": \"image\"}} part) where each image goes")
    refs = [_resolve(r, base, where) for r in refs]
    if system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return messages, refs


def _resolve(ref: Any, base: Path | None, where: str) -> Any:
    if isinstance(ref, str):
        if ref.startswith(("http://", "https://")):
            raise AutomodelError(f"dataset: {where}: image {ref} is a URL; automodel reads local images only "
                                 "(download them first and give paths)")
        p = Path(ref).expanduser()
        return str(p if p.is_absolute() or base is None else base / p)
    if isinstance(ref, dict) and not ref.get("bytes") and ref.get("path"):
        return _resolve(ref["path"], base, where)
    if ref is None or not (isinstance(ref, dict) or hasattr(ref, "convert")):
        raise AutomodelError(f"dataset: {where}: image reference {str(ref)[:80]!r} is not a path, an image or image bytes")
    return ref


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    rows, where = [], []
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise AutomodelError(f"dataset: {path} must hold a JSON list of records")
        return data, [f"record {i} of {path}" for i in range(len(data))]
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise AutomodelError(f"dataset: line {n} of {path} is not valid JSON: {e.msg}") from e
        where.append(f"record {len(rows) - 1} (line {n}) of {path}")
    return rows, where


def _hf_records(path: str, split: str, messages: str, images: str) -> tuple[Any, str, Path | None]:
    import datasets

    p = Path(path).expanduser()
    try:
        if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_dict.json").exists()):
            data = datasets.load_from_disk(str(p))
            if isinstance(data, datasets.DatasetDict):
                data = data[split]
        elif p.is_file():
            data = datasets.load_dataset(p.suffix.lstrip("."), data_files=str(p), split="train")
        else:
            data = datasets.load_dataset(str(p) if p.exists() else path, split=split)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise AutomodelError(f"dataset: cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if messages not in data.column_names:
        raise AutomodelError(f"dataset: column {messages!r} not found in {path}; its columns are {data.column_names}; "
                             "set dataset.messages")
    if images in data.column_names:
        feature = data.features[images]
        inner = getattr(feature, "feature", None) or (feature[0] if isinstance(feature, list) else None)
        if isinstance(feature, datasets.Image):
            data = data.cast_column(images, datasets.Image(decode=False))
        elif isinstance(inner, datasets.Image):
            data = data.cast_column(images, datasets.Sequence(datasets.Image(decode=False)) if not isinstance(feature, list)
                                    else [datasets.Image(decode=False)])
    return data, path, p.parent if p.is_file() else (p if p.is_dir() else None)


# --------------------------------------------------------------------------------------------------
# The factory
# --------------------------------------------------------------------------------------------------


def image_chat(
    ctx: Any,
    tokenizer: Any,
    path: str,
    messages: str = "messages",
    images: str = "images",
    image_root: str | None = None,
    chat_template: str | None = None,
    system_prompt: str | None = None,
    train_on: Literal["assistant", "all"] = "assistant",
    split: str = "train",
    max_length: int = 2048,
    check_images: bool = True,
    limit: int | None = None,
) -> ImageChatDataset:
    """Image + text conversations for a ``hf_vlm`` model (``tokenizer`` is its processor).

    ``path``: a ``.jsonl`` / ``.json`` file (records with a ``messages`` list and optionally an
    ``images`` list; image paths relative to the file, or to ``image_root``), or a ``datasets`` source
    (a ``save_to_disk`` directory, a parquet file, a hub id with ``split``) whose ``images`` column is
    an ``Image`` (or a list of them). ``chat_template``: Jinja text overriding the processor's.
    ``max_length``: longer items are cut at the end (never inside the image tokens: that is an error).
    ``check_images``: open every image's header when the dataset is built (missing or unreadable
    files stop the run before training).
    """
    import time

    start = time.perf_counter()
    p = Path(path).expanduser()
    if p.suffix in (".jsonl", ".json") and p.is_file():
        rows, where = _read_jsonl(p)
        base = Path(image_root).expanduser() if image_root else p.parent
        pairs = ((r.get(messages) if isinstance(r, dict) else None, r.get(images) if isinstance(r, dict) else None) for r in rows)
        if rows and isinstance(rows[0], dict) and messages not in rows[0]:
            raise AutomodelError(f"dataset: {where[0]} has no {messages!r} key (keys: {sorted(rows[0])}); set dataset.messages")
        source = str(p)
        n = len(rows)
    else:
        data, source, base = _hf_records(path, split, messages, images)
        if image_root:
            base = Path(image_root).expanduser()
        msgs_col = data[messages]
        imgs_col = data[images] if images in data.column_names else [None] * len(data)
        pairs = zip(msgs_col, imgs_col)
        n = len(data)
        where = [f"record {i} of {source}" for i in range(n)]
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise AutomodelError(f"dataset: {source} has no records")
    records = []
    for i, (row_messages, row_images) in zip(range(n), pairs):
        records.append(normalize(row_messages, row_images, base, where[i], system_prompt))
    where = where[:n]
    with_images = [i for i, (_, refs) in enumerate(records) if refs]
    if with_images and getattr(tokenizer, "image_processor", None) is None:
        raise AutomodelError(
            f"dataset: {where[with_images[0]]} has an image, but the model's {type(tokenizer).__name__} is a text-only "
            "tokenizer (no image processor)\n    -> use model.name: hf_vlm with a vision-language model and its processor"
        )
    if check_images:
        for i in with_images:
            for ref in records[i][1]:
                check_image(ref, where[i])
    if not hasattr(tokenizer, "apply_chat_template") or not (chat_template or getattr(tokenizer, "chat_template", None)):
        raise AutomodelError("dataset: the processor has no chat template; set dataset.chat_template to a Jinja template")
    n_images = sum(len(refs) for _, refs in records)
    ctx.print(f"dataset image_chat: {n} conversations from {source}, {n_images} images"
              f"{' (checked)' if check_images else ''}, {time.perf_counter() - start:.1f} s")
    return ImageChatDataset(records, tokenizer, source, chat_template=_template(chat_template), train_on=train_on,
                            max_length=max_length, where=where)


def _template(chat_template: str | None) -> str | None:
    if chat_template is None or "{%" in chat_template or "{{" in chat_template:
        return chat_template
    p = Path(chat_template).expanduser()
    if not p.is_file():
        raise AutomodelError(f"dataset.chat_template: {chat_template!r} is neither a Jinja template nor a file")
    return p.read_text()


def _peek(path: Path, messages: str, images: str) -> dict[str, Any] | None:
    """The first record of a local JSONL/JSON file (for checks before launch), or None."""
    try:
        with path.open(encoding="utf-8") as f:
            if path.suffix == ".jsonl":
                line = next((x for x in f if x.strip()), None)
                return json.loads(line) if line else None
            data = json.load(f)
            return data[0] if isinstance(data, list) and data else None
    except (OSError, ValueError):
        return None


def _has_images(record: dict[str, Any], messages: str, images: str) -> bool:
    if record.get(images):
        return True
    for m in record.get(messages) or []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str) and PLACEHOLDER in content:
            return True
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in ("image", "image_url") for p in content):
            return True
    return False


def _validate(args: dict[str, Any], config: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    path = args.get("path")
    if not isinstance(path, str):
        return out
    p = Path(path).expanduser()
    if p.suffix in (".jsonl", ".json") and not p.is_file():
        out.append(("path", f"file not found: {path} (resolved: {p.resolve()})",
                    "relative paths are relative to the current directory; write ${cfg_dir}/... for files next to the config"))
        return out
    root = args.get("image_root")
    if isinstance(root, str) and not Path(root).expanduser().is_dir():
        out.append(("image_root", f"not a directory: {root}", ""))
    if isinstance(args.get("max_length"), int) and args["max_length"] < 2:
        out.append(("max_length", f"must be >= 2, got {args['max_length']}", ""))
    record = _peek(p, args.get("messages", "messages"), args.get("images", "images")) if p.is_file() else None
    model = (config or {}).get("model") or {}
    if (isinstance(record, dict) and _has_images(record, args.get("messages", "messages"), args.get("images", "images"))
            and model.get("name") == "hf"):
        out.append(("path", f"the records of {path} have images, but model.name is 'hf' (text-only AutoModelForCausalLM "
                            "and a tokenizer without an image processor)",
                    "use model: {name: hf_vlm, pretrained: <a vision-language model>} (pip install automodel-vlm)"))
    return out


image_chat.validate_args = _validate  # type: ignore[attr-defined]
image_chat.path_args = ("path", "image_root")  # type: ignore[attr-defined]
