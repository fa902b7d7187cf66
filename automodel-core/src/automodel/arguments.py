"""Checking a section's YAML arguments against its factory: unknown keys, types from the signature's
annotations, missing arguments, then the factory's own ``validate_args``. Imports nothing heavy."""

from __future__ import annotations

import copy
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from automodel.contracts import Factory, member
from automodel.errors import Problem, as_problems, did_you_mean

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
