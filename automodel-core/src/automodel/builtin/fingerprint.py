"""Fingerprint of a model: what must match to resume (or export) a checkpoint. Refusing to resume a
different model's checkpoint is a common failure elsewhere; here it is an error that lists the differences."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from automodel.builtin.checkpoint_files import CheckpointError, read_meta
from automodel.weights import unwrap

_TRAINING_ONLY_KEYS = {  # model config fields that do not change what the weights mean
    "name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "attn_implementation",
}


def model_identity(state: dict[str, Any], config: dict[str, Any], model_sd: dict[str, Any]) -> dict[str, Any]:
    """What must match to resume: the architecture config, the transforms' names, every parameter's name and shape."""
    hf_config = getattr(unwrap(state["model"]), "config", None)
    arch = hf_config.to_dict() if hasattr(hf_config, "to_dict") else {}
    arch = {k: v for k, v in sorted(arch.items()) if k not in _TRAINING_ONLY_KEYS and not k.startswith("_")}
    # the transforms by name (the plugin set that shapes the parameters); their settings may change on
    # resume (LoRA dropout, say) unless they change a parameter shape, which ``shapes`` catches
    transforms = [t.get("name", t.get("_target_")) for t in config.get("transforms") or []]
    shapes = {k: list(v.shape) for k, v in sorted(model_sd.items()) if hasattr(v, "shape")}
    return json.loads(json.dumps({"model": arch, "transforms": transforms, "shapes": shapes}, default=str))


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _differences(saved: dict[str, Any], current: dict[str, Any], limit: int = 8) -> list[str]:
    out = []
    if saved.get("transforms") != current.get("transforms"):
        out.append(f"transforms: checkpoint {saved.get('transforms')}, this run {current.get('transforms')}")
    for key, label in (("model", "model config"), ("shapes", "parameter")):
        a, b = saved.get(key, {}), current.get(key, {})
        for name in sorted(set(a) | set(b)):
            if a.get(name, "<absent>") != b.get(name, "<absent>"):
                out.append(f"{label} {name}: checkpoint {a.get(name, '<absent>')}, this run {b.get(name, '<absent>')}")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def check_identity(path: Path, model: Any, config: dict[str, Any], model_sd: dict[str, Any], refusal: str,
                   hint: str = "") -> dict[str, Any]:
    """The checkpoint's ``meta.json`` when the model matches the one that wrote it; else a
    :class:`CheckpointError` that starts with ``refusal``, lists the differences and ends with ``hint``."""
    meta = read_meta(path)
    current = model_identity({"model": model}, config, model_sd)
    if meta.get("fingerprint") != fingerprint(current):
        lines = "\n".join(f"  - {d}" for d in _differences(meta.get("identity", {}), current))
        raise CheckpointError(f"{refusal}:\n{lines}" + (f"\n    -> {hint}" if hint else ""))
    return meta
