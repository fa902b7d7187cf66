"""Named factories per kind of component, filled by the plugins' registration hooks.

A target is a callable or a lazy ``"module:attr"`` string resolved on first use, so building the
registry never imports torch.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from automodel.errors import PluginError, UnknownComponentError, did_you_mean
from automodel.kinds import KINDS as _KIND_RECORDS

#: kind -> (registration hook, singular noun for messages), derived from :data:`automodel.kinds.KINDS`.
KINDS: dict[str, tuple[str, str]] = {k.name: (k.hook, k.noun) for k in _KIND_RECORDS}

#: First-party components and the package that provides them, for "pip install" hints (from the kinds).
FIRST_PARTY: dict[tuple[str, str], str] = {(k.name, n): package for k in _KIND_RECORDS for n, package in k.first_party.items()}


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
    checked: bool = field(default=False, repr=False)

    @property
    def provider(self) -> str:
        if self.dist:
            return f"{self.dist} {self.version or ''}".strip()
        return self.plugin

    def resolve(self) -> Callable[..., Any]:
        """Import (once) and return the factory; a factory whose signature does not fit its kind (see
        :func:`signature_problems`) is a :class:`PluginError` here, before anything is built."""
        if isinstance(self.target, str):
            self.target = import_target(self.target, what=f"{KINDS[self.kind][1]} '{self.name}'")
        if not self.checked:
            problems, _ = signature_problems(self.kind, self.target)
            if problems:
                where = f"{self.provider}: {KINDS[self.kind][1]} '{self.name}': "
                raise PluginError(where + "\n    ".join(problems))
            self.checked = True
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


def duplicate_message(first: Entry, second: Entry) -> str:
    """Why ``second`` cannot register its name, and what its author should do."""
    noun, name = KINDS[second.kind][1], second.name
    who = f"plugin '{second.plugin}'" + (f" ({second.provider})" if second.dist else "")
    if first.plugin == second.plugin:
        return (f"{who} registers the {noun} '{name}' twice "
                f"({first.target!r} and {second.target!r}): remove one register() call or rename one")
    if first.plugin == "builtin":
        return (f"{who} registers the {noun} '{name}', a name the builtins "
                f"already use: rename the plugin's {noun} (e.g. '{second.plugin}_{name}')")
    return (f"two plugins register the {noun} '{name}': '{first.plugin}' ({first.provider}) and "
            f"'{second.plugin}' ({second.provider}). Uninstall one, rename one of the {noun}s, or limit "
            f"loading with AUTOMODEL_LOAD_PLUGINS=...")


class Registry:
    """All registered components, by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, entry: Entry) -> None:
        table = self._entries[entry.kind]
        if entry.name in table:
            raise PluginError(duplicate_message(table[entry.name], entry))
        table[entry.name] = entry

    def remove_plugin(self, plugin: str) -> None:
        """Forget everything ``plugin`` registered (it failed while registering)."""
        for table in self._entries.values():
            for name in [n for n, e in table.items() if e.plugin == plugin]:
                del table[name]

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


def _defines(cls: type, name: str) -> bool:
    return any(name in vars(k) for k in cls.__mro__[:-1])


def signature_problems(kind: str, factory: Any) -> tuple[list[str], list[str]]:
    """``(problems, warnings)``: how ``factory``'s signature fits the way the core calls a ``kind``
    (``supplied`` of its :class:`automodel.kinds.Kind`), and, for a class, whether it has the methods of the kind's
    contract (:data:`automodel.contracts.CONTRACTS`). Used by ``automodel plugins --check`` and
    :func:`automodel.testing.check_plugin`; imports nothing heavy."""
    from automodel.contracts import CONTRACTS, missing_members
    from automodel.kinds import BY_NAME

    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return [], []
    noun = KINDS[kind][1]
    supplied = BY_NAME[kind].supplied
    lead = [s for s in supplied if s != "total_steps"]
    call = BY_NAME[kind].call
    what = f"{getattr(factory, '__qualname__', repr(factory))}{sig}"
    params = list(sig.parameters.values())
    P = inspect.Parameter
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    var_kw = next((p for p in params if p.kind == P.VAR_KEYWORD), None)
    problems: list[str] = []
    for i, arg in enumerate(lead):
        if i >= len(positional):
            if not any(p.kind == P.VAR_POSITIONAL for p in params):
                problems.append(f"{what}: the core calls it as {call}, so it must take '{arg}' as positional "
                                f"argument {i + 1}; add the parameter '{arg}'")
            break
        p = positional[i]
        if p.default is not P.empty and p.name != arg:
            problems.append(f"{what}: the core calls it as {call}; '{p.name}' (a config key with a default) would "
                            f"receive {arg}. Add a parameter '{arg}' before it")
    if "total_steps" in supplied and "total_steps" not in sig.parameters and var_kw is None:
        problems.append(f"{what}: the core calls it as {call}; add a keyword parameter 'total_steps'")
    for p in positional[len(lead):]:
        if p.kind == P.POSITIONAL_ONLY:
            problems.append(f"{what}: '{p.name}' is positional-only, but config arguments are passed by keyword")
    if "ctx" not in supplied and "ctx" in sig.parameters and sig.parameters["ctx"].default is P.empty:
        problems.append(f"{what}: the core calls it as {call} and passes no ctx, so 'ctx' would be a required "
                        f"config key; remove it (the {noun}'s methods receive ctx where they need it)")
    contract = CONTRACTS.get(kind)
    if contract is not None and inspect.isclass(factory):
        missing = [m for m in missing_members(factory, contract) if callable(getattr(contract, m, None))]
        dunders = {"losses": ["__call__"], "datasets": [] if _defines(factory, "__iter__") else ["__len__", "__getitem__"]}
        missing += [m for m in dunders.get(kind, []) if not _defines(factory, m)]
        if missing:
            problems.append(f"{what}: a {noun} must have {', '.join(missing)} "
                            f"(see automodel.contracts.{contract.__name__})")
    from automodel.export_options import declaration_problems

    problems += [f"{what}: {p}" for p in declaration_problems(factory)]
    warnings = []
    if var_kw is not None:
        warnings.append(f"{what} takes **{var_kw.name}: `automodel validate` cannot check this {noun}'s keys "
                        f"(a misspelled key is passed on silently); list the arguments it accepts instead")
    return problems, warnings
