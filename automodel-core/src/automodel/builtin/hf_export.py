"""Consolidated Hugging Face export: safetensors (+ index) + config + tokenizer that
``from_pretrained`` (and vLLM) load as they are, from a plain or a DTensor-sharded model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from automodel.builtin.checkpoint_files import normal_permissions
from automodel.weights import unwrap


def export_hf(model: Any, tokenizer: Any, out_dir: str | Path, ctx: Any) -> Path:
    """Write ``out_dir`` (collective: every rank calls it).

    Sharded (DTensor) weights are written by every rank through DCP's Hugging Face storage writer
    and consolidated into full tensors file by file, without gathering the model on one rank.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from automodel import runtime

    out = Path(out_dir)
    sd = get_model_state_dict(model)
    sharded = any(type(v).__name__ == "DTensor" for v in sd.values())
    if runtime.distributed() and not sharded:  # pipeline stages (automodel-pp): each rank holds other weights
        import torch.distributed as dist

        keys: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(keys, sorted(sd))
        partial = any(k != keys[0] for k in keys)
        if partial and getattr(unwrap(model).config, "tie_word_embeddings", False):
            sd.pop("lm_head.weight", None)  # the same values as the first stage's embed_tokens: written once
        sharded = partial
    if sharded:
        # Tied weights (embed_tokens / lm_head) are one parameter under two names: write it once,
        # under its first name, as save_pretrained does; from_pretrained ties it again.
        seen: set[int] = set()
        for name, p in unwrap(model).named_parameters(remove_duplicate=False):
            if id(p) in seen:
                sd.pop(name, None)
            seen.add(id(p))
        export_sharded(sd, out, ctx)
        if ctx.is_main:
            unwrap(model).config.save_pretrained(out)
            _save_generation_config(unwrap(model), out, ctx)
            tokenizer.save_pretrained(out)
    elif ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        unwrap(model).save_pretrained(out, state_dict=sd, max_shard_size="2GB")
        tokenizer.save_pretrained(out)
        _ensure_index(out)
    if ctx.is_main:
        normal_permissions(out)  # safetensors writes 0600 files whatever the umask
    runtime.barrier()
    return out


def _ensure_index(out: Path) -> None:
    """``model.safetensors.index.json`` also for a single-file export (tools that expect an index find one)."""
    index, single = out / "model.safetensors.index.json", out / "model.safetensors"
    if index.exists() or not single.exists():
        return
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        names = list(f.keys())
    weight_map = {name: single.name for name in sorted(names)}
    index.write_text(json.dumps({"metadata": {"total_size": single.stat().st_size}, "weight_map": weight_map}, indent=2))


def _save_generation_config(model: Any, out: Path, ctx: Any) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(out)
        except ValueError as e:  # transformers refuses an inconsistent generation config: export the rest
            ctx.print(f"export: generation_config.json not written ({e})")


def export_sharded(sd: dict[str, Any], out: Path, ctx: Any, shard_bytes: int = 2 * 2**30) -> None:
    """DTensor state dict -> consolidated ``model-0000i-of-0000n.safetensors`` + index, via DCP."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from automodel import runtime

    entries = {name: t.numel() * t.element_size() for name, t in sd.items()}
    if runtime.distributed():  # one file layout on every rank, also when ranks hold other weights (pipeline stages)
        import torch.distributed as dist

        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, entries)
        entries = {name: nbytes for part in parts for name, nbytes in part.items()}
    mapping, index, size = {}, 1, 0
    for name, nbytes in entries.items():
        if size and size + nbytes > shard_bytes:
            index, size = index + 1, 0
        mapping[name], size = index, size + nbytes
    writer = HuggingFaceStorageWriter(path=str(out), fqn_to_index_mapping=mapping, save_distributed=True, enable_consolidation=True)
    dcp.save(sd, storage_writer=writer)
    if ctx.is_main:
        shutil.rmtree(out / "sharded", ignore_errors=True)
