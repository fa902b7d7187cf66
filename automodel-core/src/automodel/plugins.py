"""The plugin manager: builtins, installed entry points (group ``automodel``) and local modules.

Environment variables:

* ``AUTOMODEL_LOAD_PLUGINS=a,b``: load only these installed plugins (empty: none). Builtins always load.
* ``AUTOMODEL_TRACE_PLUGINS=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from automodel import hookspecs
from automodel.compat import warn_incompatible_plugins
from automodel.errors import PluginError
from automodel.hookspecs import PROJECT
from automodel.registry import KINDS, Entry, Registry

ENTRY_POINT_GROUP = "automodel"
DEFAULT_PLUGINS = ("automodel.builtin",)


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``automodel plugins`` shows it."""

    name: str
    module: str
    source: str  # "builtin", "entry point" or "local"
    dist: str | None = None
    version: str | None = None
    error: str | None = None
    registers: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)


@dataclass
class Plugins:
    """The loaded plugin manager, what every plugin registered, and the plugins that failed."""

    pm: pluggy.PluginManager
    registry: Registry
    infos: list[PluginInfo]

    @property
    def hook(self) -> Any:
        return self.pm.hook

    @property
    def failed(self) -> list[PluginInfo]:
        return [i for i in self.infos if i.error]

    def raise_on_failures(self) -> None:
        if self.failed:
            lines = [f"Error importing plugin '{i.name}' ({i.module}): {i.error}" for i in self.failed]
            lines.append(
                "Fix or reinstall the plugin, uninstall it, or skip it with AUTOMODEL_LOAD_PLUGINS=<the others>."
            )
            raise PluginError("\n".join(lines))

    def provider_of(self, kind: str, name: str) -> str:
        return self.registry.get(kind, name).provider


def _selected(name: str) -> bool:
    wanted = os.environ.get("AUTOMODEL_LOAD_PLUGINS")
    if wanted is None:
        return True
    return name in {n.strip() for n in wanted.split(",") if n.strip()}


def _short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def load_plugins(local_modules: Iterable[str] = (), entry_points: bool = True) -> Plugins:
    """Build the plugin manager and the registry.

    ``local_modules`` are importable module names (``plugins:`` in the config, ``--plugin`` on the CLI);
    the current directory is importable for them. Failures to import are collected, not raised:
    call :meth:`Plugins.raise_on_failures` where they must stop the run.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    if os.environ.get("AUTOMODEL_TRACE_PLUGINS"):

        def before(hook_name: str, impls: Any, kwargs: Any) -> None:
            names = [impl.plugin_name for impl in impls]
            print(f"[automodel trace] {hook_name}({', '.join(kwargs)}) -> {names}", file=sys.stderr)

        pm.add_hookcall_monitoring(before, lambda *a: None)

    infos: list[PluginInfo] = []

    def add(name: str, module_name: str, source: str, obj: Any = None, dist: Any = None) -> None:
        info = PluginInfo(name=name, module=module_name, source=source)
        if dist is not None:
            info.dist, info.version = dist.metadata["Name"], dist.version
        infos.append(info)
        try:
            if obj is None:
                obj = importlib.import_module(module_name)
            pm.register(obj, name=name)
        except Exception as e:  # a broken plugin must not take the CLI down with it
            info.error = _short_error(e)

    for module_name in DEFAULT_PLUGINS:
        add(module_name.rsplit(".", 1)[-1], module_name, "builtin")

    if entry_points:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if not _selected(ep.name) or pm.get_plugin(ep.name) is not None:
                continue
            try:
                obj = ep.load()
            except Exception as e:
                info = PluginInfo(name=ep.name, module=ep.value, source="entry point", error=_short_error(e))
                if ep.dist is not None:
                    info.dist, info.version = ep.dist.metadata["Name"], ep.dist.version
                infos.append(info)
                continue
            add(ep.name, ep.value, "entry point", obj=obj, dist=ep.dist)

    local = [m for m in dict.fromkeys(local_modules) if m]
    if local and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module_name in local:
        if pm.get_plugin(module_name) is None:
            add(module_name, module_name, "local")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"a plugin implements a hook that does not exist: {e}") from e

    registry = Registry()
    by_name = {i.name: i for i in infos}
    for kind, (hook_name, _) in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = by_name[impl.plugin_name]

            def register(name: str, target: Any, _info: PluginInfo = info, _kind: str = kind, **meta: Any) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin '{_info.name}' registered a {_kind[:-1]} without a name")
                registry.add(
                    Entry(_kind, name, target, _info.name, _info.dist, _info.version, dict(meta))
                )
                _info.registers.setdefault(_kind, []).append(name)

            impl.function(register=register)
    for info in infos:
        plugin = pm.get_plugin(info.name)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    warn_incompatible_plugins(infos)  # one stderr line per plugin that does not support this core
    return Plugins(pm, registry, infos)
