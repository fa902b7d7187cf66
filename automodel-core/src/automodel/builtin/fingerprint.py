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


def whole_model_shapes(model_sd: dict[str, Any]) -> dict[str, list[int]]:
    """Every parameter's name and shape over all ranks (collective when distributed): a pipeline stage
    (automodel-pp) holds only part of the model, and the identity is the whole model's."""
    from automodel import runtime

    shapes = {k: list(v.shape) for k, v in sorted(model_sd.items()) if hasattr(v, "shape")}
    if runtime.distributed():
        import torch.distributed as dist

        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, shapes)
        shapes = dict(sorted({k: v for part in parts for k, v in part.items()}.items()))
    return shapes


def model_identity(state: dict[str, Any], config: dict[str, Any], model_sd: dict[str, Any],
                   shapes: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """What must match to resume: the architecture config, the transforms' names, every parameter's name and
    shape (``shapes``: from :func:`whole_model_shapes`; default: this rank's ``model_sd``)."""
    hf_config = getattr(unwrap(state["model"]), "config", None)
    arch = hf_config.to_dict() if hasattr(hf_config, "to_dict") else {}
    arch = {k: v for k, v in sorted(arch.items()) if k not in _TRAINING_ONLY_KEYS and not k.startswith("_")}
    # the transforms by name (the plugin set that shapes the parameters); their settings may change on
    # resume (LoRA dropout, say) unless they change a parameter shape, which ``shapes`` catches
    transforms = [t.get("name", t.get("_target_")) for t in config.get("transforms") or []]
    if shapes is None:
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
    current = model_identity({"model": model}, config, model_sd, whole_model_shapes(model_sd))
    if meta.get("fingerprint") != fingerprint(current):
        lines = "\n".join(f"  - {d}" for d in _differences(meta.get("identity", {}), current))
        raise CheckpointError(f"{refusal}:\n{lines}" + (f"\n    -> {hint}" if hint else ""))
    return meta


# --------------------------------------------------------------------------------------------------
# The trajectory-defining config: what changed since a checkpoint, and whether resuming may apply it
# --------------------------------------------------------------------------------------------------

#: changes that make the saved state meaningless: never resumed over (the diff and how to proceed instead)
REFUSED = ("model.name", "model._target_", "model.config.", "transforms.", "optimizer.name", "optimizer._target_",
           "lr_scheduler.name", "lr_scheduler._target_")
#: changes that do not alter the training trajectory: printed and applied
FREE = ("output_dir", "device", "peak_tflops", "plugins", "launcher", "loggers", "checkpoint", "validation_dataset", "profile",
        "parallel", "step_scheduler.log_every_steps", "step_scheduler.val_every_steps", "step_scheduler.val_max_batches",
        "step_scheduler.ckpt_every_steps", "step_scheduler.local_batch_size", "dataset.num_proc", "dataset.cache_dir")
#: everything else (optimizer and schedule settings, lr, steps, batch size, seed, data, loss, clipping)
#: changes the trajectory: applied only with ``checkpoint.allow_config_change`` (``--allow-config-change``)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}} if prefix else out
    if isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
        out = {}
        for i, v in enumerate(node):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out or {prefix: []}
    return {prefix: node}


def change_kind(key: str) -> str:
    """``refused``, ``free`` or ``allowed`` (needs ``checkpoint.allow_config_change``) for a changed key."""
    def hit(prefixes: tuple[str, ...]) -> bool:
        return any(key == p.rstrip(".") or key.startswith(p if p.endswith(".") else p + ".") for p in prefixes)
    if hit(REFUSED) and not (key.startswith("transforms.") and key.rsplit(".", 1)[-1] not in ("name", "_target_")):
        return "refused"
    return "free" if hit(FREE) else "allowed"


def _file_digest(value: Any) -> str | None:
    """size + SHA-256 of the first 4 MiB of an existing file named by a config value (a data file)."""
    if not isinstance(value, str) or len(value) > 4096:
        return None
    path = Path(value).expanduser()
    try:
        if not path.is_file():
            return None
        with path.open("rb") as f:
            head = f.read(4 << 20)
        return f"{path.stat().st_size}:{hashlib.sha256(head).hexdigest()[:16]}"
    except OSError:
        return None


def config_record(config: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records of the config: the trajectory-defining values (credentials redacted),
    their fingerprint, and a digest of every data file they name (a moved file is not a change, an edited one is)."""
    from automodel.config import redacted

    flat = {k: v for k, v in _flatten(redacted(config)).items()
            if k not in ("checkpoint.allow_config_change", "checkpoint.resume")}  # how to resume, not what
    trajectory = {k: v for k, v in flat.items() if change_kind(k) != "free"}
    files = {k: d for k, v in trajectory.items() if (d := _file_digest(v))}
    digest = hashlib.sha256(json.dumps(trajectory, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"config_fingerprint": digest, "config": json.loads(json.dumps(flat, default=str)), "config_files": files}


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """(key, checkpoint value, this run's value, kind) for every key that differs; ``saved`` and
    ``current`` as :func:`config_record` returns them. A data file at a new path with the same content
    is no change; one with new content at the same path is."""
    old, new = saved.get("config") or {}, current.get("config") or {}
    old_files, new_files = saved.get("config_files") or {}, current.get("config_files") or {}
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b:
            if key in old_files and key in new_files and old_files[key] != new_files[key]:
                out.append((key, f"{a} (as saved)", f"{b} (its content changed)", change_kind(key)))
            continue
        if key in old_files and old_files.get(key) == new_files.get(key):
            continue  # the same data file, moved
        out.append((key, a, b, change_kind(key)))
    return out
