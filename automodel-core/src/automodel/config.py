"""The config's sections and their validation: :func:`validate` fills defaults, checks every section and
returns the bound run (:class:`automodel.bound.RunPlan`) that the CLI, the launcher and the loop use.

Everything here runs before any heavy import or process launch. Problems are collected and raised
together as one :class:`~automodel.errors.ConfigError` naming the file, the key path and the fix.
Reading the file (YAML, overrides, interpolation) is :mod:`automodel.loading`; checking one section's
arguments against its factory is :mod:`automodel.arguments`; redacting credentials is
:mod:`automodel.redaction`. Their public names are re-exported here (``automodel.config.load``,
``automodel.config.redacted``, ...), as plugins and scripts use them.
"""

from __future__ import annotations

import copy
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automodel.arguments import check_arguments, custom_problems, describe, type_ok, type_problem
from automodel.bound import MULTI_PROCESS_PARALLEL, Bound, RunPlan, bind, build_component, iter_bound, plan_run_layout
from automodel.contracts import Factory, Launcher, member
from automodel.errors import ConfigError, Problem, did_you_mean
from automodel.kinds import BY_NAME
from automodel.kinds import KINDS as KIND_RECORDS
from automodel.loading import apply_overrides, dump, interpolate, load, load_yaml, parse_yaml
from automodel.plan import Plan
from automodel.profiler import Profile
from automodel.redaction import MASK, SECRET_ENV_PREFIX, is_secret_key, redacted
from automodel.state import StepScheduler

if typing.TYPE_CHECKING:
    from automodel.plugins import Plugins

__all__ = [  # the names plugins, scripts and tests import from automodel.config
    "MASK", "MULTI_PROCESS_PARALLEL", "SECRET_ENV_PREFIX", "SECTIONS", "SUPPLIED", "Bound", "Component", "ComponentList",
    "ConfigError", "RunPlan", "Scalar", "apply_overrides", "bind", "build_component", "check_arguments",
    "component_providers", "custom_problems", "describe", "dump", "interpolate", "is_secret_key", "load", "load_yaml",
    "parse_yaml", "redacted", "type_ok", "type_problem", "validate",
]


@dataclass(frozen=True)
class Component:
    """A section naming one registered component (``name:``) or a ``_target_``."""

    kind: str
    default: dict[str, Any] | None = None  # None: required
    optional: bool = False


@dataclass(frozen=True)
class ComponentList:
    kind: str
    default: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Scalar:
    type: Any
    default: Any


#: Top-level sections: the scalars, every kind's component sections (from :data:`automodel.kinds.KINDS`, in
#: its order), then the dataclass sections. Keep docs/config.md in step with this table.
SECTIONS: dict[str, Any] = {
    "seed": Scalar(int, 1234),
    "output_dir": Scalar(str, "runs/default"),
    "device": Scalar(typing.Literal["auto", "cpu", "cuda"], "auto"),
    "clip_grad_norm": Scalar(float | None, 1.0),
    "peak_tflops": Scalar(float | None, None),
    "plugins": Scalar(list[str], []),
    **{s.key: ComponentList(k.name, tuple(s.default or ())) if s.many else Component(k.name, s.default, s.optional)
       for k in KIND_RECORDS for s in k.sections},
    "step_scheduler": StepScheduler,
    "profile": Profile,
    "plan": Plan,
}


#: Leading arguments the core passes itself to each kind's factory (never set from YAML), from the kinds.
SUPPLIED: dict[str, tuple[str, ...]] = {k.name: k.supplied for k in KIND_RECORDS if k.supplied}


def validate(
    raw: dict[str, Any], plugins: Plugins, source: str | None = None, world_size: int | None = None,
    run_targets: bool = False,
) -> RunPlan:
    """Fill defaults, validate every section and bind every component; raise ConfigError with every
    problem found. Call it once per process: the :class:`~automodel.bound.RunPlan` it returns is what
    the CLI launches and the loop builds from.

    ``world_size`` is the number of processes when known (inside a launched worker); otherwise the
    launcher's ``world_size`` (None when it cannot know before launch).

    A ``_target_`` callable named by the config is only imported and its signature checked: it is
    called (a ``_target_`` launcher or parallelizer built to plan the layout) only with ``run_targets``,
    which ``automodel run`` sets and ``automodel validate`` / ``--dry-run`` never do. Then
    ``RunPlan.launcher`` is None for a ``_target_`` launcher, and the layout is planned without it.
    """
    problems = _unknown_sections(raw)
    cfg: dict[str, Any] = {}
    components: dict[str, Bound | list[Bound] | None] = {}
    for key, spec in SECTIONS.items():
        value = copy.deepcopy(raw.get(key))
        if isinstance(spec, Scalar):
            value = copy.deepcopy(spec.default) if key not in raw else value
            if not type_ok(value, spec.type):
                problems.append(type_problem(key, value, spec.type))
            cfg[key] = value
        elif isinstance(spec, Component):
            _component_section(plugins, key, spec, value, cfg, components, problems)
        elif isinstance(spec, ComponentList):
            _component_list(plugins, key, spec, value, cfg, components, problems)
        else:  # a dataclass section
            value = {} if value is None else value
            if not isinstance(value, dict):
                problems.append(Problem(key, f"expected a mapping, got {type(value).__name__}"))
                continue
            problems += check_arguments(spec, value, key)
            cfg[key] = value
    for bound in iter_bound(components):  # after every section is filled: validate_args(args, config) sees them all
        problems += custom_problems(bound.factory, bound.args, bound.key, cfg)
    problems += _cross_section_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    plan = RunPlan(cfg, plugins, StepScheduler(**cfg["step_scheduler"]), components, source=source)  # the one StepScheduler
    problems += _plan_launch(plan, world_size, run_targets)
    if problems:
        raise ConfigError(problems, source)
    for bound in plan.bound():
        _absolute_paths(bound.section, bound.factory)
    return plan


def _unknown_sections(raw: dict[str, Any]) -> list[Problem]:
    problems = []
    for key in raw:
        if key not in SECTIONS:
            close = did_you_mean(str(key), SECTIONS)
            hint = f"did you mean '{close}'?" if close else f"valid sections: {', '.join(SECTIONS)}"
            problems.append(Problem(str(key), "unknown section", hint))
    return problems


def _component_section(plugins: Plugins, key: str, spec: Component, value: Any, cfg: dict[str, Any],
                       components: dict[str, Any], problems: list[Problem]) -> None:
    """Fill (default, or the default's ``name`` when only arguments are given) and bind a one-component section."""
    if value is None:
        if spec.default is None and not spec.optional:
            problems.append(Problem(key, "missing required section", f"add a '{key}:' section with 'name:'"))
            return
        value = copy.deepcopy(spec.default)
    elif isinstance(value, dict) and "name" not in value and "_target_" not in value and spec.default:
        value = {"name": spec.default["name"], **value}
    cfg[key] = value
    components[key] = None if value is None else bind(plugins, spec.kind, value, key, problems)


def _component_list(plugins: Plugins, key: str, spec: ComponentList, value: Any, cfg: dict[str, Any],
                    components: dict[str, Any], problems: list[Problem]) -> None:
    """Fill (the default list) and bind every item of a list section."""
    if value is None:
        value = [copy.deepcopy(v) for v in spec.default]
    if not isinstance(value, list):
        problems.append(Problem(key, f"expected a list of {BY_NAME[spec.kind].noun}s, got {type(value).__name__}"))
        return
    cfg[key] = value
    bound = [bind(plugins, spec.kind, item, f"{key}.{i}", problems) for i, item in enumerate(value)]
    components[key] = [b for b in bound if b is not None]


def _cross_section_problems(cfg: dict[str, Any]) -> list[Problem]:
    """Checks that read more than one section (the layout's are in :func:`automodel.bound.plan_run_layout`)."""
    problems = []
    sched_cfg = cfg.get("step_scheduler") or {}
    if sched_cfg.get("val_every_steps") and cfg.get("validation_dataset") is None:
        problems.append(Problem("step_scheduler.val_every_steps", "is set but there is no validation_dataset to evaluate",
                                "add a validation_dataset: section, or remove val_every_steps"))
    out_dir = cfg.get("output_dir")
    if isinstance(out_dir, str):
        problems += _output_dir_problems(out_dir)
    clip = cfg.get("clip_grad_norm")
    if isinstance(clip, (int, float)) and clip <= 0:
        problems.append(Problem("clip_grad_norm", f"must be > 0 or null (no clipping), got {clip}", "e.g. 1.0"))
    return problems


def _plan_launch(plan: RunPlan, world_size: int | None, run_targets: bool) -> list[Problem]:
    """Build the launcher and plan the layout (see :func:`validate` for ``run_targets``)."""
    cfg = plan.config
    if run_targets or "_target_" not in cfg["launcher"]:
        plan.launcher = plan.one("launcher").build()  # type: ignore[union-attr] - launcher has a default
    if world_size is None and plan.launcher is not None:
        world_size = member(plan.launcher, Launcher, "world_size")
    if run_targets or not any("_target_" in item for item in cfg["parallel"]):
        return plan_run_layout(plan, world_size)
    return []


def _output_dir_problems(out_dir: str) -> list[Problem]:
    """``output_dir`` must be (or become) a directory: not a file, not under a file, writable."""
    if not out_dir.strip():
        return [Problem("output_dir", "is empty", "e.g. output_dir: runs/my-run")]
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        return [Problem("output_dir", f"{out_dir} exists and is not a directory", "choose another output_dir")]
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return [Problem("output_dir", f"{out_dir} is under {parent}, which is a file, not a directory",
                                "choose another output_dir")]
            if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
                return [Problem("output_dir", f"cannot create {out_dir}: {parent} is not writable", "choose another output_dir")]
            break
    return []


def _absolute_paths(section: dict[str, Any], factory: Callable[..., Any]) -> None:
    """Arguments a factory lists in ``path_args`` that name an existing local path become absolute, so
    the saved config means the same from any directory (``automodel export`` elsewhere, a Slurm job)."""
    for name in member(factory, Factory, "path_args"):
        value = section.get(name)
        if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(os.path.expanduser(value)):
            section[name] = str(Path(value).expanduser().resolve())


def component_providers(cfg: dict[str, Any], plugins: Plugins) -> list[str]:
    """``section=name (provider)`` for every component of a resolved config dict (for plugins that hold
    only ``ctx.config``; the loop has :meth:`automodel.bound.RunPlan.providers`)."""
    rows = []
    for key, spec in SECTIONS.items():
        if not isinstance(spec, (Component, ComponentList)) or not cfg.get(key):
            continue
        for item in cfg[key] if isinstance(spec, ComponentList) else [cfg[key]]:
            if "_target_" in item:
                rows.append(f"{key}={item['_target_']} (_target_)")
            else:
                rows.append(f"{key}={item['name']} ({plugins.provider_of(spec.kind, item['name'])})")
    return rows
