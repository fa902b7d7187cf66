"""The architecture fields of a run's model (``num_attention_heads``, ``num_local_experts``, ...), known
before launch: no torch, no weights, no network.

The model loader declares them: its factory's ``model_config(args) -> dict | None`` (see
:class:`automodel.contracts.Factory`) reads its own section (the builtin ``hf`` loader: the inline
``config`` mapping or ``<pretrained>/config.json``). :func:`model_architecture` asks the loader of a
``model:`` section; parallelizers receive the result in ``validate_model(model_cfg, architecture)``
(tp: heads divisible by the tp size; ep: experts divisible by the ep size), so no plugin reads another
plugin's config keys. :func:`config_json_fields` is the reader the Hugging Face loaders share.

Likewise the loader declares where its tokenizer files are (``tokenizer_dir(args)``), for checks that read
them before launch: :func:`model_tokenizer_dir`.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any


def config_json_fields(config: dict[str, Any] | None = None, directory: str | None = None) -> dict[str, Any] | None:
    """The fields of a Hugging Face model config: the ``config`` mapping if given, else
    ``<directory>/config.json`` of a local directory; a vision-language model's ``text_config``.
    ``None`` when neither is readable (a hub id). For model loaders' ``model_config``."""
    if isinstance(config, dict):
        data = dict(config)
    else:
        if not isinstance(directory, str):
            return None
        file = Path(directory).expanduser() / "config.json"
        if not file.is_file():
            return None
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            return None
    if not isinstance(data, dict):
        return None
    text = data.get("text_config")
    return dict(text) if isinstance(text, dict) else data


def _declared(model_cfg: Any, plugins: Any, what: str) -> Any:
    """What the loader of the ``model:`` section ``model_cfg`` declares through its factory's member
    ``what`` (called with the section without ``name``/``_target_``); ``None`` when it declares
    nothing or the section does not name a loader that resolves (validation reports that itself)."""
    from automodel.contracts import Factory, member
    from automodel.errors import AutomodelError
    from automodel.registry import import_target

    if not isinstance(model_cfg, dict):
        return None
    target, name = model_cfg.get("_target_"), model_cfg.get("name")
    try:
        factory = import_target(target) if target else plugins.registry.get("model_loaders", name).resolve()
    except AutomodelError:
        return None
    read = member(factory, Factory, what)
    if read is None:
        return None
    return read({k: v for k, v in model_cfg.items() if k not in ("name", "_target_")})


def model_architecture(model_cfg: Any, plugins: Any) -> dict[str, Any] | None:
    """The architecture fields the loader of the ``model:`` section ``model_cfg`` declares (its factory's
    ``model_config``); ``None`` when the loader declares nothing, cannot tell before loading, or the
    section does not name a loader that resolves."""
    found = _declared(model_cfg, plugins, "model_config")
    return dict(found) if isinstance(found, dict) else None


def model_tokenizer_dir(model_cfg: Any, plugins: Any) -> Path | None:
    """The local tokenizer directory the loader of the ``model:`` section ``model_cfg`` declares (its
    factory's ``tokenizer_dir``); ``None`` when the loader declares none, or it is not an existing
    directory (a hub id)."""
    found = _declared(model_cfg, plugins, "tokenizer_dir")
    if not isinstance(found, (str, Path)) or not str(found):
        return None
    path = Path(found).expanduser()
    return path if path.is_dir() else None


def local_dir(value: Any) -> str | None:
    """``value`` if it is an existing local directory (not a hub id), else None; for model loaders'
    ``tokenizer_dir``."""
    return value if isinstance(value, str) and value and Path(value).expanduser().is_dir() else None


def hf_tokenizer_dir(args: dict[str, Any]) -> str | None:
    """``tokenizer_dir`` of the Hugging Face loaders that load ``AutoTokenizer.from_pretrained(tokenizer or
    pretrained)`` (``hf``, ``hf_quantized``): that source, when it is a local directory."""
    return local_dir(args.get("tokenizer") or args.get("pretrained"))


def call_validate_model(check: Any, model_cfg: dict[str, Any], plugins: Any) -> Any:
    """A parallelizer's ``validate_model``: ``check(model_cfg, architecture)`` when it takes a second
    parameter (``architecture`` from :func:`model_architecture`), else ``check(model_cfg)``."""
    try:
        params = [p for p in inspect.signature(check).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params):
        return check(model_cfg, model_architecture(model_cfg, plugins))
    return check(model_cfg)
