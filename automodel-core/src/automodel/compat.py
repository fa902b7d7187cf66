"""Plugin / core version compatibility.

Every plugin distribution declares the ``automodel-core`` versions it supports as an ordinary
requirement (``dependencies = ["automodel-core>=0.1,<0.2"]``, see docs/packaging.md). pip refuses to
install an incompatible pair, but ``pip install --no-deps``, ``pip install -U automodel-core`` with a
plugin left behind, or a copied site-packages can still produce one. :func:`warn_incompatible_plugins`
(called at the end of :func:`automodel.plugins.load_plugins`) then prints one line per such plugin on
stderr; ``automodel plugins --check`` reports the same as a problem (exit code 2).

Importing this module does not import torch.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from importlib import metadata
from typing import Any, TextIO

from automodel import __version__

CORE_DISTRIBUTION = "automodel-core"

_warned: set[str] = set()


def incompatible_plugins(infos: Iterable[Any], core_version: str = __version__) -> list[tuple[Any, str]]:
    """``(plugin info, specifier)`` for each installed plugin whose distribution requires an
    ``automodel-core`` range that ``core_version`` is not in. Builtins and local modules are skipped."""
    out = []
    for info in infos:
        if not getattr(info, "dist", None) or info.source == "builtin":
            continue
        try:
            requires = metadata.requires(info.dist) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            if not _CORE_NAME.match(line):
                continue  # another requirement: not parsed at all
            simple = _simple_contains(line, core_version)
            if simple is not None:  # the usual "automodel-core>=0.1,<0.2": no packaging import (~0.1 s)
                if not simple[0]:
                    out.append((info, simple[1]))
                continue
            from packaging.requirements import InvalidRequirement, Requirement

            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # only in an extra (or for another platform): not a requirement of this install
            if req.name.lower().replace("_", "-") != CORE_DISTRIBUTION or not req.specifier:
                continue
            if not req.specifier.contains(core_version, prereleases=True):
                out.append((info, str(req.specifier)))
    return out


_CORE_NAME = re.compile(r"^\s*automodel[-_.]core\b", re.IGNORECASE)
_SIMPLE_REQ = re.compile(r"^\s*automodel[-_.]core\s*\(?\s*((?:(?:>=|<=|==|!=|~=|<|>)\s*\d+(?:\.\d+)*\s*,?\s*)*)\)?\s*$",
                         re.IGNORECASE)
_CLAUSE = re.compile(r"(>=|<=|==|!=|~=|<|>)\s*(\d+(?:\.\d+)*)")


def _simple_contains(line: str, version: str) -> tuple[bool, str] | None:
    """``(version satisfies the requirement, its specifier)`` for a plain numeric requirement line
    (``automodel-core>=0.1,<0.2``); None for anything else (markers, extras, wildcards, pre-releases),
    which :mod:`packaging` then reads."""
    m = _SIMPLE_REQ.match(line)
    if m is None or not re.fullmatch(r"\d+(\.\d+)*", version):
        return None
    clauses = _CLAUSE.findall(m.group(1))
    if not clauses:
        return True, ""

    def key(v: str, n: int) -> tuple[int, ...]:
        parts = [int(x) for x in v.split(".")]
        return tuple(parts + [0] * (n - len(parts)))

    ok = True
    for op, bound in clauses:
        n = max(len(version.split(".")), len(bound.split(".")))
        v, b = key(version, n), key(bound, n)
        if op == "~=":
            prefix = bound.split(".")[:-1] or bound.split(".")
            ok &= v >= b and version.split(".")[: len(prefix)] == prefix
        else:
            ok &= {">=": v >= b, "<=": v <= b, "==": v == b, "!=": v != b, "<": v < b, ">": v > b}[op]
    return ok, ",".join(sorted(f"{op}{bound}" for op, bound in clauses))  # as packaging writes a SpecifierSet


def core_version_problems(infos: Iterable[Any], core_version: str = __version__) -> list[str]:
    """One line per plugin that does not support this core (``automodel plugins --check``)."""
    return [
        f"{info.name}: {info.dist} {info.version} requires {CORE_DISTRIBUTION}{spec}, this is {core_version}; "
        f"{_fix(info.dist, spec)}"
        for info, spec in incompatible_plugins(infos, core_version)
    ]


def warn_incompatible_plugins(infos: Iterable[Any], file: TextIO | None = None) -> list[str]:
    """Print one warning line on stderr per installed plugin that declares a core range this core is
    not in; each line names the plugin, its range, this core's version and the fix. A line is printed
    once per process, and not in launched workers (the launching process has printed it).
    Returns the lines printed."""
    from automodel.launch import in_worker

    if in_worker():
        return []
    lines = []
    for info, spec in incompatible_plugins(infos):
        line = (
            f"warning: plugin '{info.name}' ({info.dist} {info.version}) supports {CORE_DISTRIBUTION}{spec}, "
            f"but {CORE_DISTRIBUTION} {__version__} is installed; it may fail. Fix: {_fix(info.dist, spec)}"
        )
        if line in _warned:
            continue
        _warned.add(line)
        lines.append(line)
        print(line, file=file or sys.stderr)
    return lines


def _fix(dist: str, spec: str) -> str:
    return f"pip install -U {dist} (a release for this core), or pip install '{CORE_DISTRIBUTION}{spec}'"
