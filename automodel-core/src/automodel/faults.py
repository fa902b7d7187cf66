"""Faults in plugin code during a run, named on one screen.

When a component (a loss, a dataset, a logger, a checkpointer, ...) or a lifecycle hook raises during a
run, the loop raises a :class:`ComponentFault` instead: its first line names the kind, the name, the
config key, the plugin that provides it and the step; the next lines show where in the plugin's code
it happened and what to do. The original exception is its ``__cause__``, so ``--debug`` prints the
plugin's own traceback first. The CLI exits with code 2 (see docs/writing-plugins.md, "Exit codes").

Policy (documented in docs/writing-plugins.md):

* a loss, dataset, collate, checkpointer, model or lifecycle hook that raises stops the run;
* a logger that raises is disabled with a warning and the run goes on (its records stop there); the
  end of the run repeats the warning, and the exit code stays 0 if training finished;
* a hook that raises after the work is saved (``on_checkpoint_saved``, ``on_train_end``) says that the
  checkpoint (or the finished run) is complete, so a non-zero exit is never a silent loss of work.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from automodel.errors import AutomodelError
from automodel.registry import KINDS


@dataclass(frozen=True)
class Origin:
    """Where a component comes from: its kind, name, config key and providing plugin."""

    kind: str  # a registry kind ("losses"), or "hook"
    name: str  # the registered name, the _target_, or the hook name
    key: str  # the config key ("loss", "loggers.1"), or the hook's plugin
    plugin: str  # the providing plugin, with its distribution and version when installed
    module: str | None = None  # the top-level module of its code (to find its frame in a traceback)

    @property
    def label(self) -> str:
        if self.kind == "hook":
            return f"hook {self.name}() of plugin {self.plugin}"
        noun = KINDS[self.kind][1] if self.kind in KINDS else self.kind
        return f"{noun} '{self.name}' ({self.key}, plugin {self.plugin})"


def origin_of(plugins: Any, kind: str, section: dict[str, Any], key: str) -> Origin:
    """The :class:`Origin` of the component a config section names."""
    if "_target_" in section:
        target = str(section["_target_"])
        return Origin(kind, target, key, "_target_", target.replace(":", ".").split(".")[0])
    name = str(section.get("name"))
    try:
        entry = plugins.registry.get(kind, name)
    except AutomodelError:
        return Origin(kind, name, key, "unknown")
    target = entry.target
    module = target if isinstance(target, str) else getattr(target, "__module__", None)
    plugin = entry.plugin if not entry.dist else f"{entry.plugin} ({entry.provider})"
    return Origin(kind, name, key, plugin, module.replace(":", ".").split(".")[0] if module else None)


def plugin_frame(exc: BaseException, module: str | None) -> str | None:
    """``file:line in function`` of the innermost frame of ``exc``'s traceback in ``module`` (the
    plugin's code), else of the innermost frame outside torch and the standard library."""
    frames = []
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames:
        return None

    def mod(f: Any) -> str:
        return str(f.f_globals.get("__name__", ""))

    chosen = None
    if module:
        chosen = next((f for f in reversed(frames) if mod(f) == module or mod(f).startswith(module + ".")), None)
    if chosen is None:
        chosen = next((f for f in reversed(frames) if not mod(f).startswith(("torch", "automodel.", "transformers"))
                       and "site-packages/torch" not in f.f_code.co_filename), frames[-1])
    line = getattr(chosen, "f_lineno", None)
    for f, ln in _tb_lines(exc):
        if f is chosen:
            line = ln
    return f"{chosen.f_code.co_filename}:{line} in {chosen.f_code.co_name}"


def _tb_lines(exc: BaseException) -> list[tuple[Any, int]]:
    out = []
    tb = exc.__traceback__
    while tb is not None:
        out.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    return out


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ComponentFault(AutomodelError):
    """A component or hook raised (or returned something wrong) during a run; exit code 2."""

    def __init__(self, origin: Origin, doing: str, *, step: int | None = None, exc: BaseException | None = None,
                 problem: str | None = None, hint: str | None = None, after: str | None = None):
        self.origin, self.step = origin, step
        when = f" at step {step}" if step is not None else ""
        what = problem or (_describe(exc) if exc is not None else "failed")
        lines = [f"{origin.label} failed{when} ({doing}): {what}"]
        where = plugin_frame(exc, origin.module) if exc is not None else None
        if where:
            lines.append(f"    at {where}")
        if hint:
            lines.append(f"    -> {hint}")
        if after:
            lines.append(f"    {after}")
        super().__init__("\n".join(lines))


def hook_origin(plugins: Any, hook_name: str, exc: BaseException) -> Origin:
    """The plugin whose implementation of ``hook_name`` raised ``exc`` (found in its traceback)."""
    impls = {impl.function.__code__: impl for impl in getattr(plugins.hook, hook_name).get_hookimpls()}
    tb = exc.__traceback__
    while tb is not None:
        impl = impls.get(tb.tb_frame.f_code)
        if impl is not None:
            info = next((i for i in plugins.infos if i.name == impl.plugin_name), None)
            plugin = impl.plugin_name + (f" ({info.label})" if info is not None and info.dist else "")
            return Origin("hook", hook_name, impl.plugin_name, plugin, impl.function.__module__.split(".")[0])
        tb = tb.tb_next
    return Origin("hook", hook_name, "?", "unknown")


def call_hook(plugins: Any, hook_name: str, *, at_step: int | None = None, after: str | None = None, **kwargs: Any) -> None:
    """Call a lifecycle hook with ``kwargs``; an implementation that raises becomes a
    :class:`ComponentFault` naming its plugin and the step (``at_step``, else the hook's ``step``),
    with ``after`` (what is safe already) as its last line."""
    try:
        getattr(plugins.hook, hook_name)(**kwargs)
    except AutomodelError:
        raise
    except Exception as e:
        step = at_step if at_step is not None else kwargs.get("step")
        raise ComponentFault(hook_origin(plugins, hook_name, e), "in the hook", step=step, exc=e, after=after) from e


def warn(message: str, exc: BaseException | None = None) -> None:
    """One warning on stderr; with ``--debug`` (``AUTOMODEL_DEBUG``) the traceback of ``exc`` after it."""
    import os

    print(f"warning: {message}", file=sys.stderr, flush=True)
    if exc is not None and os.environ.get("AUTOMODEL_DEBUG"):
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)

