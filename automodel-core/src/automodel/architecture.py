"""The architecture fields of a run's model (``num_attention_heads``, ``num_local_experts``, ...), known
before launch: no torch, no weights, no network.

The model loader declares them: its factory's ``model_config(args) -> dict | None`` (see
:class:`automodel.contracts.Factory`) reads its own section (the builtin ``hf`` loader: the inline
``config`` mapping or ``<pretrained>/config.json``). :func:`model_architecture` asks the loader of a
``model:`` section; parallelizers receive the result in ``validate_model(model_cfg, architecture)``
(tp: heads divisible by the tp size; ep: experts divisible by the ep size), so no plugin reads another
plugin's config keys. :func:`config_json_fields` is the reader the Hugging Face loaders share.
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


def model_architecture(model_cfg: Any, plugins: Any) -> dict[str, Any] | None:
    """The architecture fields the loader of the ``model:`` section ``model_cfg`` declares (its factory's
    ``model_config``, given the section without ``name``/``_target_``); ``None`` when the loader
    declares nothing, cannot tell before loading, or the section does not name a loader that resolves
    (validation reports that itself)."""
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
    read = member(factory, Factory, "model_config")
    if read is None:
        return None
    found = read({k: v for k, v in model_cfg.items() if k not in ("name", "_target_")})
    return dict(found) if isinstance(found, dict) else None


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
