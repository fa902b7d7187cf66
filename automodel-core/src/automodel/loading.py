"""Reading a config: YAML (floats such as ``3e-4``, duplicate keys refused), ``a.b=value`` overrides,
``${env:VAR}`` / ``${cfg_dir}`` interpolation, and writing it back (:func:`dump`, credentials redacted).

Nothing here knows what the sections mean: :mod:`automodel.config` validates what :func:`load` returns.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from automodel.errors import ConfigError, Problem
from automodel.redaction import redacted


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


def dump(cfg: dict[str, Any], redact: bool = True) -> str:
    """The config as YAML, with credentials kept out (:func:`redacted`) unless ``redact`` is False."""
    return yaml.safe_dump(redacted(cfg) if redact else cfg, sort_keys=False, default_flow_style=None)

