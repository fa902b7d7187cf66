"""The one error family automodel raises for problems a user can fix.

The CLI prints these as a short message and exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class AutomodelError(Exception):
    """A problem the user can fix: the message says what and how."""

    exit_code = 2


@dataclass
class Problem:
    """One problem found in a config: where (``key``) and what (``message``), with an optional fix."""

    key: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{text}\n    -> {self.hint}" if self.hint else text


def as_problems(found: Iterable[Problem | tuple[str, ...]] | None, key: str = "") -> list[Problem]:
    """What a plugin's check returned, as :class:`Problem` objects under the config ``key``.

    The one shape of a reported problem is ``Problem(key, message, hint)``; a check may also return the
    tuples the contract allows: ``(sub_key, message, hint)`` from ``validate_args`` (``sub_key`` relative
    to the section, ``""`` for the section itself) and ``(message, hint)`` from ``validate_model``.
    Keys are joined to ``key`` (``"loss"`` + ``"gamma"`` -> ``"loss.gamma"``).
    """
    out = []
    for item in found or []:
        if isinstance(item, Problem):
            sub, message, hint = item.key, item.message, item.hint
        elif len(item) == 2:
            (message, hint), sub = item, ""
        else:
            sub, message, hint = item
        out.append(Problem(".".join(k for k in (key, sub) if k), message, hint or None))
    return out


class ConfigError(AutomodelError):
    """One or more problems in a config file, reported all at once."""

    def __init__(self, problems: Iterable[Problem] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        n = len(self.problems)
        if n == 1:  # one line that names the key (or the file) first, then the fix
            p = self.problems[0]
            head = f"{p.key}: {p.message}{where}" if p.key else (f"{source}: {p.message}" if source else p.message)
            super().__init__(head + (f"\n    -> {p.hint}" if p.hint else ""))
            return
        keys = [p.key for p in self.problems if p.key]
        named = f" ({', '.join(dict.fromkeys(keys))})" if keys else ""
        head = f"{n} problems{where}{named}:"
        super().__init__("\n".join([head] + [f"  - {p}" for p in self.problems]))


class UnknownComponentError(AutomodelError):
    """A config names a component no installed plugin registers."""


class PluginError(AutomodelError):
    """A plugin failed to import or broke the registration contract."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to ``word``, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None
