"""Named factories per kind of component, filled by the plugins' registration hooks.

A target is a callable or a lazy ``"module:attr"`` string resolved on first use, so building the
registry never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from automodel.errors import PluginError, UnknownComponentError, did_you_mean

#: kind -> (registration hook, config section it serves, singular noun for messages)
KINDS: dict[str, tuple[str, str]] = {
    "model_loaders": ("register_model_loaders", "model loader"),
    "model_transforms": ("register_model_transforms", "model transform"),
    "parallelizers": ("register_parallelizers", "parallelizer"),
    "datasets": ("register_datasets", "dataset"),
    "losses": ("register_losses", "loss"),
    "optimizers": ("register_optimizers", "optimizer"),
    "lr_schedulers": ("register_lr_schedulers", "lr scheduler"),
    "checkpointers": ("register_checkpointers", "checkpointer"),
    "launchers": ("register_launchers", "launcher"),
    "loggers": ("register_loggers", "logger"),
}

#: First-party components and the package that provides them, for "pip install" hints.
FIRST_PARTY: dict[tuple[str, str], str] = {
    ("parallelizers", "fsdp2"): "automodel-fsdp2",
    ("parallelizers", "fsdp2_replicate"): "automodel-fsdp2",
    ("parallelizers", "tp"): "automodel-tp",
    ("model_transforms", "lora"): "automodel-lora",
    ("model_transforms", "fp8"): "automodel-fp8",
    ("losses", "triton_ce"): "automodel-triton-ce",
    ("losses", "chunked_ce"): "automodel-triton-ce",
    ("launchers", "slurm"): "automodel-slurm",
    ("loggers", "wandb"): "automodel-wandb",
}


@dataclass
class Entry:
    """One registered component."""

    kind: str
    name: str
    target: Any
    plugin: str
    dist: str | None = None
    version: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        if self.dist:
            return f"{self.dist} {self.version or ''}".strip()
        return self.plugin

    def resolve(self) -> Callable[..., Any]:
        """Import (once) and return the factory."""
        if isinstance(self.target, str):
            self.target = import_target(self.target, what=f"{self.kind[:-1]} '{self.name}'")
        return self.target


def import_target(path: str, what: str = "target") -> Any:
    """Import ``"pkg.module:attr"`` (or ``"pkg.module.attr"``) and return the attribute."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise PluginError(f"{what}: '{path}' is not an importable path like 'package.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(
            f"{what}: cannot import module '{module_name}' ({type(e).__name__}: {e}). "
            f"Are you sure the package that provides it is installed?"
        ) from e
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"{what}: module '{module_name}' has no attribute '{attr}'") from None
    return obj


class Registry:
    """All registered components, by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, entry: Entry) -> None:
        table = self._entries[entry.kind]
        if entry.name in table:
            other = table[entry.name]
            raise PluginError(
                f"two plugins register the {KINDS[entry.kind][1]} '{entry.name}': "
                f"'{other.plugin}' ({other.provider}) and '{entry.plugin}' ({entry.provider}). "
                f"Uninstall one, or limit loading with AUTOMODEL_LOAD_PLUGINS=..."
            )
        table[entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [kind] if kind else list(KINDS)
        return [e for k in kinds for e in self._entries[k].values()]

    def get(self, kind: str, name: str, key: str = "") -> Entry:
        """The entry for ``name`` or an :class:`UnknownComponentError` that says what to do."""
        try:
            return self._entries[kind][name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(kind, name, key)) from None

    def unknown_message(self, kind: str, name: str, key: str = "") -> str:
        noun = KINDS[kind][1]
        where = f"{key}: " if key else ""
        msg = f"{where}unknown {noun} '{name}'."
        package = FIRST_PARTY.get((kind, name))
        if package:
            return msg + f" It is provided by the plugin package '{package}': pip install {package}"
        close = did_you_mean(name, self.names(kind))
        if close:
            msg += f" Did you mean '{close}'?"
        installed = ", ".join(self.names(kind)) or "none"
        msg += f" Installed {kind.replace('_', ' ')}: {installed}."
        more: dict[str, list[str]] = {}
        for (k, n), package in FIRST_PARTY.items():
            if k == kind and n not in self._entries[kind]:
                more.setdefault(package, []).append(n)
        if more:
            msg += " More: " + "; ".join(f"{', '.join(ns)} (pip install {p})" for p, ns in sorted(more.items())) + "."
        return msg
