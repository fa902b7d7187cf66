"""The ``hf`` model loader: any ``transformers`` causal LM, from a local path, a hub id or a config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from automodel.errors import AutomodelError

DTYPES = ("float32", "bfloat16", "float16")


def _looks_local(path: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (./x, /x, a/b/c, ~) is a local path."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)


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
    ``seed``) together with ``tokenizer`` (path or hub id). ``dtype`` is the parameter dtype.
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
    if not ctx.meta_init:
        model.to(ctx.device)
    return model, tok


def _hf_validate(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    pretrained, config = args.get("pretrained"), args.get("config")
    if bool(pretrained) == bool(config):
        out.append(("", "give exactly one of 'pretrained' (path or hub id) or 'config' (a dict with model_type)", "e.g. pretrained: ./my-model"))
    if config and "model_type" not in config:
        out.append(("config.model_type", "missing", "e.g. model_type: llama"))
    if config and not args.get("tokenizer"):
        out.append(("tokenizer", "a model built from 'config' needs a tokenizer path or hub id", "e.g. tokenizer: ./tokenizer"))
    for key in ("pretrained", "tokenizer"):
        value = args.get(key)
        if isinstance(value, str) and _looks_local(value) and not Path(value).expanduser().exists():
            out.append((key, f"local path not found: {value} (resolved: {Path(value).expanduser().resolve()})",
                        "relative paths are relative to the current directory; write ${cfg_dir}/... for paths next to the config"))
    return out


hf.validate_args = _hf_validate  # type: ignore[attr-defined]


def materialize(model: Any, ctx: Any) -> None:
    """Give meta-device parameters real storage on ``ctx.device`` and load the weights named by
    ``model.config.name_or_path`` (or initialize them) — after the parallelizers have sharded them."""
    import torch

    if not any(p.is_meta for p in model.parameters()):
        return
    buffers = {name: b.detach().clone() for name, b in model.named_buffers() if not b.is_meta}
    model.to_empty(device=ctx.device)
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    base = unwrap(model)
    if hasattr(base, "tie_weights"):
        base.tie_weights()
    source = getattr(base.config, "name_or_path", "")
    files = sorted(Path(source).glob("*.safetensors")) if source and Path(source).is_dir() else []
    if files:
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full: dict[str, Any] = {}
        for f in files:
            full.update(load_file(str(f)))
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        torch.manual_seed(ctx.config.get("seed", 0))
        with torch.no_grad():
            base.apply(base._init_weights)


def unwrap(model: Any) -> Any:
    """The Hugging Face model inside wrappers such as DistributedDataParallel."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model
