"""YAML config: load, override, interpolate, fill defaults and validate against factory signatures.

Everything here runs before any heavy import or process launch. Problems are collected and raised
together as one :class:`~automodel.errors.ConfigError` naming the file, the key path and the fix.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from automodel.architecture import call_validate_model
from automodel.contracts import Factory, Launcher, Parallelizer, member
from automodel.errors import AutomodelError, ConfigError, Problem, as_problems, did_you_mean
from automodel.kinds import KINDS as KIND_RECORDS
from automodel.mesh import Layout, plan_layout
from automodel.plan import Plan
from automodel.profiler import Profile
from automodel.registry import KINDS, import_target
from automodel.state import StepScheduler

if typing.TYPE_CHECKING:
    from automodel.plugins import Plugins


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

#: The layout of a multi-process run whose config names no parallelizer: plain data parallelism.
MULTI_PROCESS_PARALLEL = {"name": "ddp"}

#: Leading arguments the core passes itself to each kind's factory (never set from YAML), from the kinds.
SUPPLIED: dict[str, tuple[str, ...]] = {k.name: k.supplied for k in KIND_RECORDS if k.supplied}


# --------------------------------------------------------------------------------------------------
# Loading: YAML, overrides, interpolation
# --------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` as a string; every ML config means a float."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _duplicate_keys(node: Any, path: str = "") -> list[Problem]:
    """Keys given twice in one mapping (YAML keeps the last one silently), with both line numbers."""
    out: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            where = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key in seen:
                out.append(Problem(where, f"duplicate key (line {seen[key]} and line {line}); YAML would keep only the last",
                                   "remove one of them"))
            else:
                seen[key] = line
            out += _duplicate_keys(value_node, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, f"{path}.{i}" if path else str(i))
    return out


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a config file" if path.is_dir() else "not found"
        raise ConfigError(
            [Problem("", f"config file {what}: {path}", "check the path; example: examples/quickstart/config.yaml")]
        )
    raw_bytes = path.read_bytes()
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw_bytes[: e.start].count(b"\n") + 1
        raise ConfigError([Problem("", f"not UTF-8 text (byte 0x{raw_bytes[e.start]:02x} at line {line}, offset {e.start})",
                                   "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")], str(path)) from None
    try:
        duplicates = _duplicate_keys(yaml.compose(text, Loader=_Loader))  # noqa: S506 - a SafeLoader subclass
        if duplicates:
            raise ConfigError(duplicates, str(path))
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([Problem("", f"invalid YAML{where}: {getattr(e, 'problem', e)}")], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem("", f"the top level must be a mapping of sections, got {type(data).__name__}")], str(path))
    return data


def _walk_to(cfg: Any, parts: list[str], create: bool, full: str) -> tuple[Any, str | int]:
    node = cfg
    for i, part in enumerate(parts[:-1]):
        key = _index(node, part, full)
        if isinstance(node, dict) and key not in node:
            if not create:
                raise ConfigError([Problem(full, f"'{'.'.join(parts[: i + 1])}' does not exist")])
            if parts[i + 1].lstrip("-").isdigit():  # parallel.0.size=4 on a config without parallel:
                where = ".".join(parts[: i + 1])
                raise ConfigError([Problem(full, f"'{where}' is not set in the config, so it has no item {parts[i + 1]} to change",
                                           f"set the whole list instead, e.g. '{where}=[{{name: ..., {'.'.join(parts[i + 2:]) or 'key'}: ...}}]' "
                                           f"(quoted for the shell)")])
            node[key] = {}
        node = node[key]
    return node, _index(node, parts[-1], full)


def _index(node: Any, part: str, full: str) -> str | int:
    if isinstance(node, list):
        if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
            raise ConfigError([Problem(full, f"list index '{part}' is out of range (the list has {len(node)} items)")])
        return int(part)
    if isinstance(node, dict):
        return part
    raise ConfigError([Problem(full, f"cannot index into a {type(node).__name__} with '{part}'")])


def apply_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` (YAML-typed), ``list.0.key=value`` and ``~a.b`` (delete) overrides."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if item.startswith("~"):
            parts = item[1:].split(".")
            if not all(parts):
                raise ConfigError([Problem(item, f"malformed override {item!r}: an empty part in the key path",
                                           "e.g. ~loggers.1")])
            node, key = _walk_to(cfg, parts, create=False, full=item)
            if isinstance(node, dict) and key not in node:
                raise ConfigError([Problem(item, f"cannot delete '{item[1:]}': it is not set")])
            del node[key]
            continue
        if "=" not in item:
            raise ConfigError([Problem(item, "overrides look like key.path=value or ~key.path", f"did you mean {item}=...?")])
        path, _, raw = item.partition("=")
        if not path.strip():
            raise ConfigError([Problem(item, "an override needs a key before '='", "e.g. optimizer.lr=3e-4")])
        if any(not part.strip() or part != part.strip() for part in path.split(".")):
            raise ConfigError([Problem(path, f"malformed override {item!r}: every part of the key path between dots must be "
                                       "a non-empty name or list index", "e.g. optimizer.lr=3e-4 or parallel.0.size=2")])
        try:
            value = parse_yaml(raw) if raw else ""
        except yaml.YAMLError as e:
            # a mapping (or a list of them) that does not parse: say why. Other strings stay strings
            # (a regular expression such as [qv]_proj is not YAML either).
            if raw.lstrip().startswith(("[", "{")) and ": " in raw:
                reason = str(getattr(e, "problem", None) or e).strip()
                raise ConfigError([Problem(path, f"the value {raw!r} is not valid YAML ({reason})",
                                           "quote the whole override for the shell, e.g. 'parallel=[{name: fsdp2}]'")]) from None
            value = raw
        node, key = _walk_to(cfg, path.strip().split("."), create=True, full=path)
        node[key] = value
    return cfg


_INTERP = re.compile(r"\$\{(env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?|cfg_dir)\}")
_ANY_INTERP = re.compile(r"\$\{[^}]*\}?")


def interpolate(cfg: Any, cfg_dir: str, problems: list[Problem], key: str = "") -> Any:
    """Replace ``${env:VAR}``, ``${env:VAR,default}`` and ``${cfg_dir}`` in every string."""
    if isinstance(cfg, dict):
        return {k: interpolate(v, cfg_dir, problems, f"{key}.{k}" if key else str(k)) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [interpolate(v, cfg_dir, problems, f"{key}.{i}") for i, v in enumerate(cfg)]
    if not isinstance(cfg, str) or "${" not in cfg:
        return cfg

    def sub(m: re.Match[str]) -> str:
        if m.group(1) == "cfg_dir":
            return cfg_dir
        var, default = m.group(2), m.group(3)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        problems.append(Problem(key, f"environment variable {var} is not set", f"export {var}=... or write ${{env:{var},default}}"))
        return ""

    unknown = [m for m in _ANY_INTERP.findall(cfg) if not _INTERP.fullmatch(m)]
    if unknown:
        problems.append(Problem(key, f"unknown interpolation {unknown[0]}",
                                "supported: ${env:VAR}, ${env:VAR,default} and ${cfg_dir}"
                                + (f" (did you mean ${{env:{unknown[0][2:-1].partition(':')[2]}}}?)" if ":" in unknown[0] else "")))
        return cfg
    out = _INTERP.sub(sub, cfg)
    if _INTERP.fullmatch(cfg) and m_is_env(cfg):
        try:
            return parse_yaml(out) if out else out
        except yaml.YAMLError:
            return out
    return out


def m_is_env(text: str) -> bool:
    return text.startswith("${env:")


# --------------------------------------------------------------------------------------------------
# Type checking against annotations
# --------------------------------------------------------------------------------------------------

_NAMESPACE = {**vars(typing), "Path": Path, "NoneType": type(None)}


def _annotation(raw: Any, namespace: dict[str, Any] | None = None) -> Any:
    """An annotation as an object: a string one (``from __future__ import annotations``) is evaluated
    in the factory module's namespace (so aliases such as ``Mode = Literal[...]`` resolve); what does
    not evaluate accepts anything."""
    if isinstance(raw, str):
        try:
            return eval(raw, {**_NAMESPACE, **(namespace or {})})
        except Exception:  # noqa: BLE001 - e.g. a name only imported under TYPE_CHECKING
            return Any
    return raw


def _factory_namespace(factory: Any) -> dict[str, Any]:
    """The globals of the module that defines ``factory`` (a function, or a class's ``__init__``)."""
    function = factory if inspect.isfunction(factory) else getattr(factory, "__init__", None)
    return dict(getattr(function, "__globals__", None) or {})


def type_ok(value: Any, ann: Any) -> bool:
    """Whether a YAML value fits an annotation. Unknown annotations accept anything."""
    ann = _annotation(ann)
    if ann is Any or ann is inspect.Parameter.empty:
        return True
    if ann is None or ann is type(None):
        return value is None
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        return any(type_ok(value, a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return value in typing.get_args(ann)
    if origin in (list, Sequence, tuple, typing.Sequence) or ann in (list, tuple):
        if not isinstance(value, list):
            return False
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return len(args) != 1 or all(type_ok(v, args[0]) for v in value)
    if origin is dict or ann is dict:
        return isinstance(value, dict)
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str or ann is Path:
        return isinstance(value, str)
    return True


def describe(ann: Any) -> str:
    ann = _annotation(ann)
    if isinstance(ann, type):
        return ann.__name__
    if typing.get_origin(ann) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    return str(ann).replace("typing.", "")


def type_problem(key: str, value: Any, ann: Any) -> Problem:
    """The problem for a value that does not fit its annotation, with the closest allowed choice."""
    choices = [a for a in typing.get_args(_annotation(ann)) if isinstance(a, str)]
    # Short words are too alike to guess from (gpu is not cpu); the choices are listed anyway.
    close = did_you_mean(value, choices) if isinstance(value, str) and len(value) > 3 and choices else None
    return Problem(key, f"expected {describe(ann)}, got {type(value).__name__} {value!r}",
                   f"did you mean {close!r}?" if close else None)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def check_arguments(
    factory: Callable[..., Any], args: dict[str, Any], key: str, supplied: Sequence[str] = (),
    config: dict[str, Any] | None = None, custom: bool = True,
) -> list[Problem]:
    """Check YAML ``args`` against ``factory``'s signature: unknown keys, types, missing arguments; then
    (``custom``, and only if those passed) the factory's own ``validate_args`` (see
    :func:`custom_problems`), given ``config`` when it takes a second parameter."""
    sig = _signature(factory)
    if sig is None:
        return []
    params = dict(sig.parameters)
    # The core passes the leading arguments itself (ctx, tokenizer, params, ...).
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for p in positional[: len([s for s in supplied if s != "total_steps"])]:
        params.pop(p.name)
    for name in supplied:
        params.pop(name, None)
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    namespace = _factory_namespace(factory)
    named = {n: p.replace(annotation=_annotation(p.annotation, namespace))
             for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    problems = []
    for arg, value in args.items():
        param = named.get(arg)
        if param is None:
            if not accepts_any:
                close = did_you_mean(str(arg), named)
                hint = f"did you mean '{close}'?" if close else f"valid keys: {', '.join(sorted(named)) or 'none'}"
                problems.append(Problem(f"{key}.{arg}", "unknown key", hint))
            continue
        if not type_ok(value, param.annotation):
            problems.append(type_problem(f"{key}.{arg}", value, param.annotation))
    for name, param in named.items():
        if param.default is inspect.Parameter.empty and name not in args:
            kind = "value" if param.annotation is inspect.Parameter.empty else describe(param.annotation)
            problems.append(Problem(f"{key}.{name}", "missing required argument", f"add {name}: <{kind}>"))
    if custom and not problems:
        problems += custom_problems(factory, args, key, config)
    return problems


def custom_problems(factory: Callable[..., Any], args: dict[str, Any], key: str,
                    config: dict[str, Any] | None = None) -> list[Problem]:
    """A factory's ``validate_args(args)`` or ``validate_args(args, config)`` (the second parameter, when
    it has one, gets a copy of the whole resolved config), its keys prefixed with the section ``key``."""
    check = member(factory, Factory, "validate_args")
    if check is None:
        return []
    sig = _signature(check)
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)] if sig else []
    takes_config = sig is not None and (len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()))
    found = check(dict(args), copy.deepcopy(config or {})) if takes_config else check(dict(args))
    return as_problems(found, key)


def _component_factory(
    plugins: Plugins, kind: str, section: Any, key: str, problems: list[Problem]
) -> tuple[Callable[..., Any] | None, dict[str, Any]]:
    """Resolve a component section to (factory, args); record problems instead of raising."""
    if not isinstance(section, dict):
        problems.append(Problem(key, f"expected a mapping with 'name:' (a registered {KINDS[kind][1]}) or '_target_:', got {section!r}"))
        return None, {}
    args = {k: v for k, v in section.items() if k not in ("name", "_target_")}
    try:
        if "_target_" in section:
            if "name" in section:
                problems.append(Problem(key, "give either 'name' or '_target_', not both"))
                return None, args
            target = import_target(str(section["_target_"]), what=f"{key}._target_")
            if not callable(target):
                problems.append(Problem(f"{key}._target_", f"'{section['_target_']}' is a {type(target).__name__} "
                                        f"({target!r:.60}), not a callable", "name a class or function"))
                return None, args
            return target, args
        if "name" not in section:
            problems.append(Problem(key, f"missing 'name' (a registered {KINDS[kind][1]})", f"installed: {', '.join(plugins.registry.names(kind))}"))
            return None, args
        return plugins.registry.get(kind, str(section["name"]), key=f"{key}.name").resolve(), args
    except AutomodelError as e:
        problems.append(Problem("", str(e)))
        return None, args


@dataclass
class Validated:
    """A validated run: the resolved config, its launcher and its layout (parallelizers + mesh plan),
    built once by :func:`validate` and reused by the CLI and the loop."""

    config: dict[str, Any]
    launcher: Any
    layout: Layout


def resolve(
    raw: dict[str, Any], plugins: Plugins, source: str | None = None, world_size: int | None = None
) -> dict[str, Any]:
    """Fill defaults and validate every section: the resolved config, or a ConfigError."""
    return validate(raw, plugins, source, world_size).config


def validate(
    raw: dict[str, Any], plugins: Plugins, source: str | None = None, world_size: int | None = None,
    run_targets: bool = False,
) -> Validated:
    """Fill defaults and validate every section; raise ConfigError with every problem found.

    ``world_size`` is the number of processes when known (inside a launched worker); otherwise the
    launcher's ``world_size`` (None when it cannot know before launch).

    A ``_target_`` callable named by the config is only imported and its signature checked: it is
    called (a ``_target_`` launcher or parallelizer built to plan the layout) only with ``run_targets``,
    which ``automodel run`` sets and ``automodel validate`` / ``--dry-run`` never do. Then
    ``Validated.launcher`` is None for a ``_target_`` launcher, and the layout is planned without it.
    """
    problems: list[Problem] = []
    cfg: dict[str, Any] = {}
    built: list[tuple[dict[str, Any], Callable[..., Any]]] = []  # component sections and their factories
    custom: list[tuple[Callable[..., Any], dict[str, Any], str]] = []  # validate_args to run once cfg is complete
    for key in raw:
        if key not in SECTIONS:
            close = did_you_mean(str(key), SECTIONS)
            hint = f"did you mean '{close}'?" if close else f"valid sections: {', '.join(SECTIONS)}"
            problems.append(Problem(str(key), "unknown section", hint))

    for key, spec in SECTIONS.items():
        value = copy.deepcopy(raw.get(key))
        if isinstance(spec, Scalar):
            value = copy.deepcopy(spec.default) if key not in raw else value
            if not type_ok(value, spec.type):
                problems.append(type_problem(key, value, spec.type))
            cfg[key] = value
        elif isinstance(spec, Component):
            if value is None:
                if spec.default is None and not spec.optional:
                    problems.append(Problem(key, "missing required section", f"add a '{key}:' section with 'name:'"))
                    continue
                value = copy.deepcopy(spec.default)
            elif isinstance(value, dict) and "name" not in value and "_target_" not in value and spec.default:
                value = {"name": spec.default["name"], **value}
            cfg[key] = value
            if value is not None:
                factory, args = _component_factory(plugins, spec.kind, value, key, problems)
                if factory is not None:
                    found = check_arguments(factory, args, key, SUPPLIED.get(spec.kind, ()), custom=False)
                    problems += found
                    built.append((value, factory))
                    if not found:
                        custom.append((factory, args, key))
        elif isinstance(spec, ComponentList):
            if value is None:
                value = [copy.deepcopy(v) for v in spec.default]
            if not isinstance(value, list):
                problems.append(Problem(key, f"expected a list of {KINDS[spec.kind][1]}s, got {type(value).__name__}"))
                continue
            cfg[key] = value
            for i, item in enumerate(value):
                factory, args = _component_factory(plugins, spec.kind, item, f"{key}.{i}", problems)
                if factory is not None:
                    found = check_arguments(factory, args, f"{key}.{i}", SUPPLIED.get(spec.kind, ()), custom=False)
                    problems += found
                    built.append((item, factory))
                    if not found:
                        custom.append((factory, args, f"{key}.{i}"))
        else:  # a dataclass section
            value = {} if value is None else value
            if not isinstance(value, dict):
                problems.append(Problem(key, f"expected a mapping, got {type(value).__name__}"))
                continue
            problems += check_arguments(spec, value, key)
            cfg[key] = value

    for factory, args, key in custom:  # after every section is filled: validate_args(args, config) sees them all
        problems += custom_problems(factory, args, key, cfg)

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
    launcher = layout = None
    if not problems:
        if run_targets or "_target_" not in cfg["launcher"]:
            launcher = build_component(plugins, "launchers", cfg["launcher"])
        if world_size is None and launcher is not None:
            world_size = member(launcher, Launcher, "world_size")
        if run_targets or not any("_target_" in item for item in cfg["parallel"]):
            layout, layout_problems = _check_layout(cfg, plugins, world_size)
            problems += layout_problems
    if problems:
        raise ConfigError(problems, source)
    for section, factory in built:
        _absolute_paths(section, factory)
    return Validated(cfg, launcher, layout)


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


def _check_layout(cfg: dict[str, Any], plugins: Plugins, world_size: int | None) -> tuple[Layout, list[Problem]]:
    """Cross-section checks: the parallel layout (rules in :func:`automodel.mesh.plan_layout`), the model
    against it, batch sizes against data parallelism."""
    if world_size and world_size > 1 and not cfg["parallel"]:
        cfg["parallel"] = [dict(MULTI_PROCESS_PARALLEL)]  # several processes and no choice made: data parallel
    parallelizers = [build_component(plugins, "parallelizers", item) for item in cfg["parallel"]]
    names = [str(item.get("name") or item.get("_target_")) for item in cfg["parallel"]]
    layout, found = plan_layout(parallelizers, world_size, names)
    problems = as_problems(found)
    if problems:
        return layout, problems
    for i, p in enumerate(parallelizers):
        check = member(p, Parallelizer, "validate_model")
        if check is not None:
            problems += as_problems(call_validate_model(check, cfg["model"], plugins), f"parallel.{i}")
    sched = StepScheduler(**cfg["step_scheduler"])
    dp_size = layout.plan.dp_size if layout.plan else None
    problems += [Problem(f"step_scheduler.{key}", message, hint or None) for key, message, hint in sched.problems(dp_size)]
    return layout, problems


def build_component(plugins: Plugins, kind: str, section: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """Instantiate a validated component section: ``factory(*args, **section_args, **kwargs)``."""
    section = dict(section)
    target = section.pop("_target_", None)
    name = section.pop("name", None)
    factory = import_target(target) if target else plugins.registry.get(kind, name).resolve()
    return factory(*args, **section, **kwargs)


def load(
    path: str | os.PathLike[str], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Read a config file, apply overrides and interpolation (no validation yet)."""
    raw = apply_overrides(load_yaml(path), overrides)
    problems: list[Problem] = []
    raw = interpolate(raw, str(Path(path).resolve().parent), problems)
    if problems:
        raise ConfigError(problems, str(path))
    return raw


# --------------------------------------------------------------------------------------------------
# Secrets: never written resolved to a file or a logger
# --------------------------------------------------------------------------------------------------

_SECRET_KEY = re.compile(
    r"secret|password|passwd|credential|(?:^|_)(?:api|access|private|auth)_?key$|^apikey$"
    r"|^(?:[a-z]+_)?(?:hf|hub|auth|access|api|bearer|refresh|id|wandb|github|gh)_token$|^token$",
    re.IGNORECASE,
)
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE)
#: prefix of the environment variables that carry a masked literal secret to the processes a run starts
SECRET_ENV_PREFIX = "AUTOMODEL_SECRET_"
MASK = "***"


def is_secret_key(name: str) -> bool:
    """Whether a config key names a credential (``token``, ``hf_token``, ``api_key``, ``password``,
    ``*secret*``...). Special-token keys such as ``pad_token`` are not secrets."""
    return bool(_SECRET_KEY.search(str(name).replace("-", "_")))


def redacted(cfg: Any) -> Any:
    """A copy of ``cfg`` that is safe to write or log: no credential in it.

    * A string that contains the value of an environment variable whose name names a secret
      (``HF_TOKEN``, ``WANDB_API_KEY``, ``*_PASSWORD``...; what ``${env:HF_TOKEN}`` resolved to) gets
      the interpolation back: ``${env:HF_TOKEN}``.
    * A literal string under a key that names a secret (:func:`is_secret_key`) becomes
      ``${env:AUTOMODEL_SECRET_<KEY_PATH>,***}`` and the value goes into this process's environment under
      that name: the processes a run starts (torchrun workers, a Slurm job) inherit it and resolve the
      saved config to the real value; anywhere else it reads as ``***``.
    """
    env = sorted(((k, v) for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6
                  and not k.startswith(SECRET_ENV_PREFIX)), key=lambda kv: -len(kv[1]))

    def walk(node: Any, path: str, key: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k), str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}", key) for i, v in enumerate(node)]
        if not isinstance(node, str) or not node:
            return node
        for name, value in env:
            if value in node:
                node = node.replace(value, f"${{env:{name}}}")
        if is_secret_key(key) and "${env:" not in node:
            name = SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", path).upper()
            os.environ[name] = node
            node = f"${{env:{name},{MASK}}}"
        return node

    return walk(copy.deepcopy(cfg), "", "")


def dump(cfg: dict[str, Any], redact: bool = True) -> str:
    """The config as YAML, with credentials kept out (:func:`redacted`) unless ``redact`` is False."""
    return yaml.safe_dump(redacted(cfg) if redact else cfg, sort_keys=False, default_flow_style=None)


def component_providers(cfg: dict[str, Any], plugins: Plugins) -> list[str]:
    """``section=name (provider)`` for every component of a resolved config: which plugin (and
    version) provides each one, as a run logs at start-up."""
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
