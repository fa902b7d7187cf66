"""The bound run: what :func:`automodel.config.validate` returns and the training loop builds from.

Validation resolves every component section of the config once, to a :class:`Bound` component: its
:class:`~automodel.kinds.Kind`, the factory the section names (a registered name or a ``_target_``), the
checked arguments, the config key and where it comes from (:class:`~automodel.faults.Origin`, for
messages). A :class:`RunPlan` holds them with the rest of what validation worked out: the
:class:`~automodel.state.StepScheduler`, the launcher and the :class:`~automodel.mesh.Layout`.

The loop builds a component with :meth:`Bound.build`, passing by name exactly the arguments its kind
declares (``Kind.supplied``): ``plan.one("loss").build()``, ``plan.one("dataset").build(ctx=ctx,
tokenizer=tokenizer)``. Passing more, fewer or other arguments than the kind declares is a ``TypeError``
(a core bug, not a plugin's), so the loop and the kind table cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from automodel.architecture import call_validate_model
from automodel.arguments import check_arguments
from automodel.contracts import Parallelizer, member
from automodel.errors import AutomodelError, ConfigError, Problem, as_problems
from automodel.faults import Origin, origin_of
from automodel.kinds import BY_NAME, Kind
from automodel.mesh import Layout, plan_layout
from automodel.registry import import_target
from automodel.state import StepScheduler

if typing.TYPE_CHECKING:
    from automodel.plugins import Plugins

#: The layout of a multi-process run whose config names no parallelizer: plain data parallelism.
MULTI_PROCESS_PARALLEL = {"name": "ddp"}


@dataclass(frozen=True)
class Bound:
    """One component section of a validated config, bound to its factory."""

    kind: Kind
    key: str  # the config key: "loss", "loggers.1"
    factory: Callable[..., Any]
    section: dict[str, Any]  # the section in the resolved config (``name:``/``_target_:`` and the arguments)
    origin: Origin  # kind, name, key and providing plugin, for messages

    @property
    def name(self) -> str:
        """The registered name, or the ``_target_`` path."""
        return self.origin.name

    @property
    def args(self) -> dict[str, Any]:
        """The checked config arguments (the section without ``name``/``_target_``)."""
        return {k: v for k, v in self.section.items() if k not in ("name", "_target_")}

    def build(self, **supplied: Any) -> Any:
        """``factory(<supplied, in the kind's order>, **args)``; ``total_steps`` goes by keyword.

        ``supplied`` must name exactly the kind's ``supplied`` arguments, else ``TypeError``.
        """
        declared = self.kind.supplied
        if set(supplied) != set(declared):
            raise TypeError(f"{self.key}: the core passes {sorted(supplied) or 'nothing'} to a {self.kind.noun} but the "
                            f"kind declares {list(declared) or 'nothing'} (automodel.kinds); the loop and the kind disagree")
        lead = [supplied[name] for name in declared if name != "total_steps"]
        extra = {"total_steps": supplied["total_steps"]} if "total_steps" in declared else {}
        return self.factory(*lead, **self.args, **extra)


def bind(plugins: Plugins, kind: str, section: Any, key: str, problems: list[Problem],
         config: dict[str, Any] | None = None, custom: bool = False) -> Bound | None:
    """Bind a component section to its factory and check its arguments against the factory's signature
    (and, with ``custom``, its ``validate_args``, given ``config``). Problems are appended to
    ``problems``; None when the section cannot be bound or its arguments do not fit."""
    factory = _factory(plugins, kind, section, key, problems)
    if factory is None:
        return None
    found = check_arguments(factory, {k: v for k, v in section.items() if k not in ("name", "_target_")}, key,
                            BY_NAME[kind].supplied, config, custom=custom)
    problems += found
    return None if found else Bound(BY_NAME[kind], key, factory, section, origin_of(plugins, kind, section, key))


def bind_validated(plugins: Plugins, kind: str, section: Any, key: str) -> Bound:
    """:func:`bind` for a section of a config validated before (a run's saved config): ConfigError if it
    does not bind any more (a plugin uninstalled, a factory changed)."""
    problems: list[Problem] = []
    bound = bind(plugins, kind, section, key, problems)
    if bound is None:
        raise ConfigError(problems)
    return bound


def _factory(plugins: Plugins, kind: str, section: Any, key: str, problems: list[Problem]) -> Callable[..., Any] | None:
    """The factory a component section names; record problems instead of raising."""
    noun = BY_NAME[kind].noun
    if not isinstance(section, dict):
        problems.append(Problem(key, f"expected a mapping with 'name:' (a registered {noun}) or '_target_:', got {section!r}"))
        return None
    try:
        if "_target_" in section:
            if "name" in section:
                problems.append(Problem(key, "give either 'name' or '_target_', not both"))
                return None
            target = import_target(str(section["_target_"]), what=f"{key}._target_")
            if not callable(target):
                problems.append(Problem(f"{key}._target_", f"'{section['_target_']}' is a {type(target).__name__} "
                                        f"({target!r:.60}), not a callable", "name a class or function"))
                return None
            return target
        if "name" not in section:
            problems.append(Problem(key, f"missing 'name' (a registered {noun})", f"installed: {', '.join(plugins.registry.names(kind))}"))
            return None
        return plugins.registry.get(kind, str(section["name"]), key=f"{key}.name").resolve()
    except AutomodelError as e:
        problems.append(Problem("", str(e)))
        return None


def build_component(plugins: Plugins, kind: str, section: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """Build one component straight from a section of an already validated config:
    ``factory(*args, **section_args, **kwargs)``. For code outside the loop that has a config dict and no
    :class:`RunPlan` (``automodel plan``, a KD teacher); the loop builds through :meth:`Bound.build`."""
    section = dict(section)
    target = section.pop("_target_", None)
    name = section.pop("name", None)
    factory = import_target(target) if target else plugins.registry.get(kind, name).resolve()
    return factory(*args, **section, **kwargs)


@dataclass
class RunPlan:
    """A validated run, bound: built once by :func:`automodel.config.validate`, reused by the CLI, the
    launcher and the loop (never validated again in the same process).

    ``components`` maps every component section of the config to its :class:`Bound` (a list for the
    list sections ``transforms``, ``parallel``, ``loggers``; None for an absent optional section).
    ``layout`` is None when the layout could not be planned before launch (a ``_target_`` parallelizer
    under ``automodel validate``); ``layout.plan`` is None while the world size is unknown. ``launcher``
    is the built launcher (None for a ``_target_`` one that validation was not allowed to call).
    """

    config: dict[str, Any]
    plugins: Any
    sched: StepScheduler
    components: dict[str, Bound | list[Bound] | None]
    launcher: Any = None
    layout: Layout | None = None
    source: str | None = None

    def one(self, key: str) -> Bound | None:
        """The bound component of a one-component section (None: an optional section left out)."""
        value = self.components[key]
        if isinstance(value, list):
            raise TypeError(f"'{key}' is a list section; use many('{key}')")
        return value

    def many(self, key: str) -> list[Bound]:
        """The bound components of a list section, in config order."""
        value = self.components[key]
        if not isinstance(value, list):
            raise TypeError(f"'{key}' is not a list section; use one('{key}')")
        return value

    def bound(self) -> Iterator[Bound]:
        """Every bound component, in section order."""
        return iter_bound(self.components)

    def providers(self) -> list[str]:
        """``section=name (provider)`` for every component, as a run logs at start-up."""
        rows = []
        for b in self.bound():
            section = b.key.partition(".")[0]
            provider = "_target_" if "_target_" in b.section else self.plugins.provider_of(b.kind.name, b.name)
            rows.append(f"{section}={b.name} ({provider})")
        return rows

    def for_world_size(self, world_size: int) -> RunPlan:
        """This plan, with its layout planned for ``world_size`` processes: itself when it already is
        (the usual case), else a copy with the layout re-planned (a worker whose launcher could not
        know its size). Only the layout is planned again: the rest was validated once."""
        if self.layout is not None and self.layout.plan is not None and self.layout.plan.world_size == world_size:
            return self
        plan = dataclasses.replace(self, components=dict(self.components))
        problems = plan_run_layout(plan, world_size)
        if problems:
            raise ConfigError(problems, self.source)
        return plan


def iter_bound(components: dict[str, Bound | list[Bound] | None]) -> Iterator[Bound]:
    """Every :class:`Bound` of a ``RunPlan.components`` mapping, in section order."""
    for value in components.values():
        yield from value if isinstance(value, list) else ([value] if value is not None else [])


def plan_run_layout(plan: RunPlan, world_size: int | None) -> list[Problem]:
    """Plan ``plan.layout`` over ``world_size`` processes (None: unknown yet) and run the checks that need
    it: the layout rules (:func:`automodel.mesh.plan_layout`), each parallelizer's ``validate_model``,
    the batch sizes against the data-parallel size. Parallelizers are built afresh (planning sets their
    open sizes)."""
    cfg = plan.config
    if world_size and world_size > 1 and not cfg["parallel"]:
        cfg["parallel"] = [dict(MULTI_PROCESS_PARALLEL)]  # several processes and no choice made: data parallel
        problems: list[Problem] = []
        plan.components["parallel"] = [b for b in [bind(plan.plugins, "parallelizers", cfg["parallel"][0], "parallel.0", problems)] if b]
        if problems:
            return problems
    bounds = plan.many("parallel")
    layout, found = plan_layout([b.build() for b in bounds], world_size, [b.name for b in bounds])
    plan.layout = layout
    problems = as_problems(found)
    if problems:
        return problems
    for b, p in zip(bounds, layout.parallelizers):
        check = member(p, Parallelizer, "validate_model")
        if check is not None:
            problems += as_problems(call_validate_model(check, cfg["model"], plan.plugins), b.key)
    dp_size = layout.plan.dp_size if layout.plan else None
    problems += [Problem(f"step_scheduler.{key}", message, hint or None) for key, message, hint in plan.sched.problems(dp_size)]
    return problems
