"""The plugin manager: builtins, installed entry points (group ``automodel``) and local modules.

Environment variables:

* ``AUTOMODEL_LOAD_PLUGINS=a,b``: load only these installed plugins (empty: none). Builtins always load.
* ``AUTOMODEL_TRACE_PLUGINS=1``: print every hook call (registration hooks included) to stderr.

A plugin that cannot be used is collected, not raised (``automodel plugins`` still lists it): it failed
to import, its entry point names a missing module, it implements a hook that does not exist, or its
hook takes an argument the hook does not pass. :meth:`Plugins.raise_on_failures` turns those into one
:class:`~automodel.errors.PluginError` chained to the plugin's own exception (``--debug`` shows its
traceback).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypeVar

import pluggy

from automodel import hookspecs
from automodel.compat import warn_incompatible_plugins
from automodel.errors import AutomodelError, PluginError, did_you_mean
from automodel.hookspecs import PROJECT
from automodel.registry import KINDS, Entry, Registry

ENTRY_POINT_GROUP = "automodel"
T = TypeVar("T")
DEFAULT_PLUGINS = ("automodel.builtin",)
_IMPL_MARKER = f"{PROJECT}_impl"  # the attribute @hookimpl sets on a function

#: Every hook name with its argument names.
HOOKS: dict[str, tuple[str, ...]] = {
    name: tuple(inspect.signature(fn).parameters)
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and getattr(fn, f"{PROJECT}_spec", None) is not None
}


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
    exception: BaseException | None = field(default=None, repr=False)  # the original error (for --debug)
    descriptions: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> name -> description

    @property
    def label(self) -> str:
        return f"{self.dist} {self.version}" if self.dist else self.source

    def fail(self, exc: BaseException, message: str | None = None) -> None:
        self.exception = exc
        self.error = message or (str(exc) if isinstance(exc, PluginError) else _short_error(exc))

    @property
    def failure(self) -> str:
        """The one-line report of the failure, naming the plugin."""
        if isinstance(self.exception, PluginError):
            return self.error or ""
        return f"Error importing plugin '{self.name}' ({self.module}): {self.error}"


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

    def info(self, name: str) -> PluginInfo:
        for i in self.infos:
            if name in (i.name, i.dist, i.module):
                return i
        raise PluginError(f"no plugin '{name}' is loaded; loaded: {', '.join(i.name for i in self.infos)}")

    def raise_on_failures(self) -> None:
        if self.failed:
            lines = [i.failure for i in self.failed]
            lines.append(
                "Fix or reinstall the plugin, uninstall it, or skip it with AUTOMODEL_LOAD_PLUGINS=<the others>."
            )
            raise PluginError("\n".join(lines)) from self.failed[0].exception

    def validate_with(self, validate: Callable[[], T]) -> T:
        """Run ``validate`` (a config's validation) with the plugins that loaded.

        A plugin the user named (``--plugin``, ``plugins:``) that failed stops here. An installed plugin
        that failed blocks only if the config does not validate without it (then its failure comes
        first, the config's problems after); otherwise it is one warning per plugin on stderr, and the
        run goes on without it."""
        named = [i for i in self.failed if i.source == "local"]
        if named:
            self._raise(named)
        if not self.failed:
            return validate()
        try:
            result = validate()
        except AutomodelError as e:
            self._raise(self.failed, f"The config cannot be used without {'it' if len(self.failed) == 1 else 'them'}:\n{e}")
        from automodel.launch import in_worker

        if not in_worker():
            for info in self.failed:
                print(f"warning: {info.failure.splitlines()[0]}\n    this config does not use it, so the run goes on "
                      "without it; fix or uninstall the plugin (or AUTOMODEL_LOAD_PLUGINS=<the others>)", file=sys.stderr)
        return result

    def _raise(self, failed: list[PluginInfo], more: str | None = None) -> None:
        lines = [i.failure for i in failed]
        lines.append("Fix or reinstall the plugin, uninstall it, or skip it with AUTOMODEL_LOAD_PLUGINS=<the others>.")
        if more:
            lines.append(more)
        raise PluginError("\n".join(lines)) from failed[0].exception

    def provider_of(self, kind: str, name: str) -> str:
        return self.registry.get(kind, name).provider


def _selected(name: str) -> bool:
    wanted = os.environ.get("AUTOMODEL_LOAD_PLUGINS")
    if wanted is None:
        return True
    return name in {n.strip() for n in wanted.split(",") if n.strip()}


def _short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def hook_problems(plugin: Any, name: str) -> list[str]:
    """What is wrong with the ``@hookimpl`` functions of ``plugin``: hooks that do not exist (with a
    did-you-mean) and arguments a hook does not pass (with the valid ones)."""
    problems = []
    for attr in dir(plugin):
        fn = getattr(plugin, attr, None)
        opts = getattr(fn, _IMPL_MARKER, None)
        if not isinstance(opts, dict):
            continue
        hook = opts.get("specname") or attr
        if hook not in HOOKS:
            if opts.get("optionalhook"):
                continue
            close = did_you_mean(hook, HOOKS)
            hint = f"did you mean '{close}'?" if close else "see docs/hooks.md for the hooks"
            problems.append(f"plugin '{name}': {hook}() is not an automodel hook; {hint}")
            continue
        args = [p for p in inspect.signature(fn).parameters if p != "self"]
        for arg in args:
            if arg not in HOOKS[hook]:
                problems.append(f"plugin '{name}': hook {hook}({', '.join(args)}) takes no argument '{arg}'; "
                                f"valid arguments: {', '.join(HOOKS[hook])}")
    return problems


def unmarked_hooks(plugin: Any) -> list[str]:
    """Functions of a plugin module that look like hooks but lack ``@hookimpl`` (pluggy ignores them)."""
    found = []
    module_name = getattr(plugin, "__name__", None)
    for attr, fn in sorted(vars(plugin).items()) if hasattr(plugin, "__dict__") else []:
        if not inspect.isfunction(fn) or fn.__module__ != module_name or hasattr(fn, _IMPL_MARKER):
            continue
        if attr in HOOKS:
            found.append(f"{attr}() looks like a hook but has no @hookimpl, so it is never called: "
                         "decorate it with @automodel.hookimpl")
        elif attr.startswith(("register_", "on_")):
            close = did_you_mean(attr, HOOKS)
            if close:
                found.append(f"{attr}() has no @hookimpl and is not a hook name: did you mean "
                             f"@automodel.hookimpl def {close}(...)?")
    return found


def _entry_point_error(ep: Any, dist: str, e: BaseException) -> str:
    where = f"entry point '{ep.name} = {ep.value}' ({dist})"
    module = ep.value.partition(":")[0].strip()
    if isinstance(e, ModuleNotFoundError) and e.name and (module == e.name or module.startswith(e.name + ".")):
        fix = dist.split(" ")[0]
        return f"{where}: module '{module}' not found; reinstall {fix} or uninstall it (pip uninstall {fix})"
    if isinstance(e, AttributeError) and ":" in ep.value:
        return f"{where}: module '{module}' has no attribute '{ep.value.partition(':')[2].strip()}'"
    return f"{where}: failed to import: {_short_error(e)}"


def _tracer(hook_name: str, impls: Any, kwargs: Any) -> None:
    names = [impl.plugin_name for impl in impls]
    print(f"[automodel trace] {hook_name}({', '.join(kwargs)}) -> {names}", file=sys.stderr)


def load_plugins(local_modules: Iterable[str] = (), entry_points: bool = True) -> Plugins:
    """Build the plugin manager and the registry.

    ``local_modules`` are importable module names (``plugins:`` in the config, ``--plugin`` on the CLI);
    the current directory is importable for them. Failures to import are collected, not raised:
    call :meth:`Plugins.raise_on_failures` where they must stop the run.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    if os.environ.get("AUTOMODEL_TRACE_PLUGINS"):
        pm.add_hookcall_monitoring(_tracer, lambda *a: None)

    infos: list[PluginInfo] = []
    for module_name in DEFAULT_PLUGINS:
        _add(pm, infos, PluginInfo(module_name.rsplit(".", 1)[-1], module_name, "builtin"))
    if entry_points:
        _add_entry_points(pm, infos)
    local = [m for m in dict.fromkeys(local_modules) if m]
    if local and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module_name in local:
        if not any(i.name == module_name for i in infos):
            _add(pm, infos, PluginInfo(module_name, module_name, "local"))

    registry = Registry()
    _register_all(pm, registry, {i.name: i for i in infos})
    for info in infos:
        plugin = pm.get_plugin(info.name)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    warn_incompatible_plugins(infos)  # one stderr line per plugin that does not support this core
    return Plugins(pm, registry, infos)


def _add(pm: pluggy.PluginManager, infos: list[PluginInfo], info: PluginInfo, obj: Any = None) -> None:
    """Import (unless ``obj`` is given), check and register one plugin; a failure is recorded on ``info``."""
    infos.append(info)
    try:
        if obj is None:
            obj = importlib.import_module(info.module)
    except Exception as e:  # a broken plugin must not take the CLI down with it
        info.fail(e)
        return
    problems = hook_problems(obj, info.name)
    if problems:
        info.fail(PluginError("\n".join(problems)))
        return
    try:
        pm.register(obj, name=info.name)
    except pluggy.PluginValidationError as e:  # what hook_problems did not foresee
        info.fail(PluginError(f"plugin '{info.name}': {e}"))
        info.exception.__cause__ = e  # type: ignore[union-attr]


def _add_entry_points(pm: pluggy.PluginManager, infos: list[PluginInfo]) -> None:
    """Every installed plugin (entry point group ``automodel``) selected by ``AUTOMODEL_PLUGINS``, by name."""
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if not _selected(ep.name) or any(i.name == ep.name for i in infos):
            continue
        info = PluginInfo(name=ep.name, module=ep.value, source="entry point")
        if ep.dist is not None:
            info.dist, info.version = ep.dist.metadata["Name"], ep.dist.version
        try:
            obj = ep.load()
        except Exception as e:
            infos.append(info)
            info.fail(PluginError(_entry_point_error(ep, info.label, e)))
            info.exception.__cause__ = e  # type: ignore[union-attr]
            continue
        _add(pm, infos, info, obj)


def _register_all(pm: pluggy.PluginManager, registry: Registry, by_name: dict[str, PluginInfo]) -> None:
    """Call every registration hook through pluggy (so tracing shows it), one plugin at a time, with a
    ``register`` callback that knows which plugin registers."""
    plugins = dict(pm.list_name_plugin())
    for kind, (hook_name, _) in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = by_name[impl.plugin_name]

            def register(name: str, target: Any, _info: PluginInfo = info, _kind: str = kind, **meta: Any) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin '{_info.name}' registered a {KINDS[_kind][1]} without a name")
                if not (callable(target) or (isinstance(target, str) and target)):
                    raise PluginError(f"plugin '{_info.name}' registered the {KINDS[_kind][1]} '{name}' with target "
                                      f"{target!r}: give a callable or a 'package.module:attr' string")
                registry.add(Entry(_kind, name, target, _info.name, _info.dist, _info.version, dict(meta)))
                _info.registers.setdefault(_kind, []).append(name)
                if meta.get("description"):
                    _info.descriptions.setdefault(_kind, {})[name] = str(meta["description"])

            if info.error:  # failed in an earlier registration hook
                continue
            others = [p for n, p in plugins.items() if n != impl.plugin_name]
            try:
                pm.subset_hook_caller(hook_name, others)(register=register)
            except PluginError:  # a bad register() call or two plugins claiming one name: fix before any run
                raise
            except Exception as e:  # this plugin cannot be used; the others can (see Plugins.validate_with)
                info.fail(PluginError(f"plugin '{info.name}': {hook_name}() raised {_short_error(e)}"))
                info.exception.__cause__ = e  # type: ignore[union-attr]
                registry.remove_plugin(info.name)
                info.registers.clear()
                pm.unregister(name=info.name)
