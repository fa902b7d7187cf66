"""The ``hf`` model loader: any ``transformers`` causal LM, from a local path, a hub id or a config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from automodel.architecture import hf_tokenizer_dir
from automodel.errors import AutomodelError, did_you_mean
from automodel.weights import init_weights

DTYPES = ("float32", "bfloat16", "float16")


def _looks_local(path: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (./x, /x, a/b/c, ~) is a local path."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)


def missing_local_paths(args: dict[str, Any], keys: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """``validate_args`` problems for the ``keys`` of ``args`` that name a local path (not a hub id) that
    does not exist. Shared by the model loaders (``hf`` here, ``hf_vlm`` in automodel-vlm)."""
    out = []
    for key in keys:
        value = args.get(key)
        if isinstance(value, str) and _looks_local(value) and not Path(value).expanduser().exists():
            out.append((key, f"local path not found: {value} (resolved: {Path(value).expanduser().resolve()})",
                        "relative paths are relative to the current directory; write ${cfg_dir}/... for paths next to the config"))
    return out


def hf(
    ctx: Any,
    pretrained: str | None = None,
    config: dict | None = None,
    tokenizer: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``AutoModelForCausalLM`` and its tokenizer.

    Give either ``pretrained`` (a local directory or a hub id) or ``config`` (a dict with
    ``model_type`` and the architecture's fields, for a randomly initialized model, seeded by
    ``seed``: the same weights whether or not a parallelizer shards it) together with ``tokenizer``
    (path or hub id). ``dtype`` is the parameter dtype.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if pretrained:
        model_config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        model_config.name_or_path = pretrained
    else:
        spec = dict(config or {})
        model_type = spec.pop("model_type")
        _check_model_config(model_type, spec)
        model_config = AutoConfig.for_model(model_type, **spec)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation

    tok = AutoTokenizer.from_pretrained(tokenizer or pretrained, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if len(tok) > model_config.vocab_size:
        raise AutomodelError(
            f"model: the tokenizer has {len(tok)} tokens but the model's vocab_size is {model_config.vocab_size}; "
            "use a matching tokenizer or raise model.config.vocab_size"
        )

    if ctx.meta_init:
        # Parameters on meta (sharded later, then materialized); buffers such as rotary frequencies
        # stay real because they are computed, not loaded.
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(model_config, dtype=torch_dtype, **kwargs)
        model.config.name_or_path = pretrained or ""
    elif pretrained:
        model = AutoModelForCausalLM.from_pretrained(pretrained, config=model_config, dtype=torch_dtype, **kwargs)
    else:
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch_dtype, **kwargs)
        # The initialization a model built on meta gets after sharding (materialize): a from-scratch
        # run starts from the same weights with any parallelizer and any number of processes.
        init_weights(model, ctx.config.get("seed", 0))
    if not ctx.meta_init:
        model.to(ctx.device)
    return model, tok


def _check_model_config(model_type: str, spec: dict[str, Any]) -> None:
    """``model.config``: a known ``model_type`` and only keys its config class has (transformers would
    keep a misspelled key as an unused attribute and build the model with the default instead)."""
    import inspect

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        close = did_you_mean(model_type, CONFIG_MAPPING.keys())
        raise AutomodelError(f"model.config.model_type: unknown model type {model_type!r}"
                             + (f"; did you mean {close!r}?" if close else " (see transformers' CONFIG_MAPPING)"))
    cls = CONFIG_MAPPING[model_type]
    known = set(cls().to_dict()) | set(getattr(cls, "attribute_map", {})) | set(inspect.signature(cls.__init__).parameters)
    unknown = [k for k in spec if k not in known]
    if unknown:
        hints = [f"{k} (did you mean {c!r}?)" if (c := did_you_mean(k, known)) else k for k in unknown]
        raise AutomodelError(f"model.config: {cls.__name__} has no {', '.join(hints)}; "
                             "misspelled keys would be ignored and the default used")


def _hf_validate(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    if args.get("dtype") == "float16":
        out.append(("dtype", "float16 weights overflow in training without loss scaling, which automodel does not do",
                    "use bfloat16 (or float32)"))
    pretrained, config = args.get("pretrained"), args.get("config")
    if bool(pretrained) == bool(config):
        out.append(("", "give exactly one of 'pretrained' (path or hub id) or 'config' (a dict with model_type)", "e.g. pretrained: ./my-model"))
    if config and "model_type" not in config:
        out.append(("config.model_type", "missing", "e.g. model_type: llama"))
    if isinstance(config, dict):
        out += _shape_problems(config, "config.")
    elif isinstance(pretrained, str) and (Path(pretrained).expanduser() / "config.json").is_file():
        try:
            import json

            spec = json.loads((Path(pretrained).expanduser() / "config.json").read_text())
        except (OSError, ValueError) as e:
            out.append(("pretrained", f"{pretrained}/config.json is not readable JSON: {e}", ""))
        else:
            out += [("pretrained", f"{pretrained}/config.json: {message}", hint) for _, message, hint in _shape_problems(spec, "")]
    if config and not args.get("tokenizer"):
        out.append(("tokenizer", "a model built from 'config' needs a tokenizer path or hub id", "e.g. tokenizer: ./tokenizer"))
    out += missing_local_paths(args, ("pretrained", "tokenizer"))
    return out


def _shape_problems(spec: dict[str, Any], prefix: str) -> list[tuple[str, str, str]]:
    """Attention head counts that cannot split the hidden size (transformers would fail deep in a reshape)."""
    hidden, heads, kv = spec.get("hidden_size"), spec.get("num_attention_heads"), spec.get("num_key_value_heads")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (hidden, heads))
    if not ints:
        return []
    if heads < 1:
        return [(f"{prefix}num_attention_heads", f"must be >= 1, got {heads}", "")]
    if spec.get("head_dim") is None and hidden % heads:
        divisors = [d for d in range(1, min(hidden, 128) + 1) if hidden % d == 0][-4:]
        return [(f"{prefix}num_attention_heads", f"{heads} does not divide hidden_size {hidden}",
                 f"use a divisor of {hidden}, e.g. {', '.join(map(str, divisors))}")]
    if isinstance(kv, int) and not isinstance(kv, bool) and (kv < 1 or heads % kv):
        return [(f"{prefix}num_key_value_heads", f"{kv} does not divide num_attention_heads {heads}",
                 "grouped-query attention needs num_attention_heads to be a multiple of num_key_value_heads")]
    return []


def _hf_model_config(args: dict[str, Any]) -> dict[str, Any] | None:
    """The architecture fields before launch: ``config``, or a local ``pretrained`` directory's config.json."""
    from automodel.architecture import config_json_fields

    return config_json_fields(args.get("config"), args.get("pretrained"))


hf.validate_args = _hf_validate  # type: ignore[attr-defined]
hf.path_args = ("pretrained", "tokenizer")  # type: ignore[attr-defined]
hf.model_config = _hf_model_config  # type: ignore[attr-defined]
hf.tokenizer_dir = hf_tokenizer_dir  # type: ignore[attr-defined]
