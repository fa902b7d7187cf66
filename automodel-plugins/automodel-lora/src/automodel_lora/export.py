"""Export of a LoRA run: the PEFT adapter directory and, optionally, the merged model.

Both work on any wrapping the loop may have put around the model (DDP, FSDP2, TP): sharded (DTensor)
parameters are gathered collectively on every rank and the files are written by rank 0 only.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from automodel.builtin.checkpoint_files import normal_permissions

PEFT_PREFIX = "base_model.model."  # PeftModel's state-dict prefix in front of the Hugging Face model's names


def trainable_state_dict(model: Any, ctx: Any) -> dict[str, Any]:
    """Full (unsharded) CPU copies of the trainable parameters of ``model``, named as in the Hugging Face
    model; complete on rank 0, empty elsewhere. Every rank must call it (DTensors gather collectively)."""
    from automodel.weights import unwrap
    from torch.distributed.tensor import DTensor

    out: dict[str, Any] = {}
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        full = p.full_tensor() if isinstance(p, DTensor) else p
        if ctx.is_main:
            out[name] = full.detach().to("cpu", copy=True)
    return out


def save_adapter(peft_model: Any, model: Any, tokenizer: Any, out: Path, ctx: Any) -> Path:
    """``out``: adapter_config.json + adapter_model.safetensors (+ tokenizer), as ``PeftModel.save_pretrained``
    writes them, from the gathered trainable weights."""
    state = trainable_state_dict(model, ctx)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(out), state_dict={PEFT_PREFIX + k: v for k, v in state.items()})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        normal_permissions(out)  # safetensors writes 0600 files whatever the umask
    return out


def loadable_base(name_or_path: str) -> str | None:
    """What an adapter's ``base_model_name_or_path`` should say for a base loaded from ``name_or_path``:
    the absolute path of a local directory (a relative one would only resolve from the training run's
    working directory), a hub id as is, or None when there is nothing to load (built from a config)."""
    if not name_or_path:
        return None
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path.resolve())
    return name_or_path


def save_merged(peft_model: Any, model: Any, tokenizer: Any, out: Path, ctx: Any, merge: bool = True) -> Path:
    """``out``: the base model with the adapters merged in (``merge_and_unload``), as consolidated
    safetensors + config (+ tokenizer) that ``AutoModelForCausalLM.from_pretrained`` loads as is;
    ``merge=False``: the base model alone, the adapters removed (``unload``)."""
    from automodel.weights import unwrap
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.is_main:
        merged = merge_state_dict(peft_model, full, merge=merge)
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(out))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        normal_permissions(out)
    return out


def save_base(peft_model: Any, model: Any, tokenizer: Any, out: Path, ctx: Any) -> Path:
    """``out``: the frozen base model (no adapters), for an adapter whose base was built from a config."""
    return save_merged(peft_model, model, tokenizer, out, ctx, merge=False)


def merge_state_dict(peft_model: Any, full: dict[str, Any], merge: bool = True) -> Any:
    """A fresh Hugging Face model holding ``full`` (the adapted model's complete state dict) with the
    adapters merged into the base weights (``merge=False``: dropped). Built on the meta device, so only
    ``full`` takes memory."""
    from accelerate import init_empty_weights
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(peft_model.peft_config["default"])
    config.inference_mode = False
    hf_config = copy.deepcopy(unwrap_config(peft_model))
    with init_empty_weights(include_buffers=False):
        base = AutoModelForCausalLM.from_config(hf_config)
    fresh = get_peft_model(base, config)
    missing, unexpected = fresh.base_model.model.load_state_dict(full, strict=False, assign=True)
    missing = [k for k in missing if not _is_tied(base, k)]
    if missing or unexpected:
        raise RuntimeError(f"merged export: state dict does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(base, "tie_weights"):
        base.tie_weights()
    return fresh.merge_and_unload() if merge else fresh.unload()


def unwrap_config(peft_model: Any) -> Any:
    return peft_model.base_model.model.config


def _is_tied(model: Any, key: str) -> bool:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return key in tied
