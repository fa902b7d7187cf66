"""Options that components add to ``automodel export``, declared by their factories.

The core's ``automodel export CKPT OUT`` has no option of its own beyond ``--plugin``. A model loader, a
transform or a checkpointer (the components an export builds) lists :class:`~automodel.contracts.ExportOption`
items in its factory's ``export_options``; ``automodel export`` reads the checkpoint's saved config,
collects the options of its components (:func:`export_options_of`), accepts them on the command line and
hands the given values to every component as ``ctx.export_options`` (by name). The LoRA transform
declares ``--merged/--adapter-only`` this way; the core knows no option by name.

No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from automodel.contracts import ExportOption, Factory, member
from automodel.errors import AutomodelError, PluginError

#: The sections whose components ``automodel export`` builds, with their kinds: only these factories'
#: ``export_options`` are collected (an export builds no loss, dataset or logger).
EXPORT_SECTIONS = (("model", "model_loaders"), ("transforms", "model_transforms"), ("checkpoint", "checkpointers"))

#: Flags ``automodel export`` has itself: no component may declare them.
RESERVED_FLAGS = ("help", "plugin")


@dataclass
class DeclaredOption:
    """An export option and the components that declare it (``transforms.0 (lora)``)."""

    option: ExportOption
    owners: list[str] = field(default_factory=list)


def _components(cfg: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(config key, kind, section)`` of every component an export of ``cfg`` builds."""
    out = []
    for key, kind in EXPORT_SECTIONS:
        value = cfg.get(key)
        items = [(f"{key}.{i}", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]
        out += [(k, kind, v) for k, v in items if isinstance(v, dict) and (v.get("name") or v.get("_target_"))]
    return out


def _factory(plugins: Any, kind: str, section: dict[str, Any]) -> Any:
    from automodel.registry import import_target

    target = section.get("_target_")
    return import_target(target) if target else plugins.registry.get(kind, section["name"]).resolve()


def _words(option: ExportOption) -> list[str]:
    """The flag words of an option: ``merged``, ``adapter-only``."""
    return [option.name.replace("_", "-"), *([option.off] if option.off else [])]


def declaration_problems(factory: Any) -> list[str]:
    """What is wrong with a factory's own ``export_options`` (and ``model_config`` / ``tokenizer_dir``) declaration: found when
    the factory is resolved (``automodel plugins --check``, the conformance kit, any run), so a plugin
    author sees it at once. Clashes between two components are :func:`export_options_of`'s."""
    out = []
    for name, returns in (("model_config", "dict"), ("tokenizer_dir", "str")):
        read = member(factory, Factory, name)
        if read is not None and not callable(read):
            out.append(f"{name} must be a function (args) -> {returns} | None, got {type(read).__name__}")
    options = member(factory, Factory, "export_options")
    if not isinstance(options, (list, tuple)):
        return [*out, f"export_options must be a tuple of automodel.contracts.ExportOption, got {type(options).__name__}"]
    flags: dict[str, str] = {}  # every flag word -> the option that uses it
    for option in options:
        if not isinstance(option, ExportOption):
            out.append(f"export_options holds {option!r}, not an automodel.contracts.ExportOption")
            continue
        problems = option.problems()
        problems += [f"--{w} is automodel export's own flag" for w in _words(option) if w in RESERVED_FLAGS]
        problems += [f"--{w} is already the flag of the option '{flags[w]}'" for w in _words(option) if w in flags]
        flags.update(dict.fromkeys(_words(option), option.name))
        out += [f"export option '{option.name}': {p}" for p in problems]
    return out


def export_options_of(cfg: dict[str, Any], plugins: Any) -> dict[str, DeclaredOption]:
    """The export options the model loader, transforms and checkpointer of ``cfg`` declare (their
    factories' ``export_options``), by name. A malformed declaration (:func:`declaration_problems`), or
    one name or flag used differently by two components, is a :class:`PluginError` naming them."""
    found: dict[str, DeclaredOption] = {}
    flags: dict[str, str] = {}  # every flag word -> the option that uses it
    for key, kind, section in _components(cfg):
        label = f"{key} ({section.get('name') or section.get('_target_')})"
        factory = _factory(plugins, kind, section)
        problems = declaration_problems(factory)
        if problems:
            raise PluginError(f"{label}: " + "; ".join(problems))
        for option in member(factory, Factory, "export_options"):
            seen = found.get(option.name)
            if seen is not None and (seen.option.type, seen.option.off) != (option.type, option.off):
                raise PluginError(f"{label} declares the export option {option.flag} ({option.type.__name__}), which "
                                  f"{', '.join(seen.owners)} declares as {seen.option.flag} ({seen.option.type.__name__}): "
                                  "one option, one meaning; rename one of them")
            clash = [w for w in _words(option) if flags.get(w, option.name) != option.name]
            if clash:
                raise PluginError(f"{label}: export option '{option.name}': --{clash[0]} is already the flag of the option "
                                  f"'{flags[clash[0]]}' of {', '.join(found[flags[clash[0]]].owners)}")
            flags.update(dict.fromkeys(_words(option), option.name))
            found.setdefault(option.name, DeclaredOption(option)).owners.append(label)
    return found


def describe_components(cfg: dict[str, Any]) -> str:
    """``model: hf, transforms: lora, checkpoint: dcp``: what an export of ``cfg`` builds."""
    parts: dict[str, list[str]] = {}
    for key, _, section in _components(cfg):
        parts.setdefault(key.split(".")[0], []).append(str(section.get("name") or section.get("_target_")))
    return ", ".join(f"{k}: {'+'.join(v)}" for k, v in parts.items())


def unknown_option_message(flag: str, cfg: dict[str, Any] | None, declared: dict[str, DeclaredOption],
                           why: str = "") -> str:
    """The error for an option that no component of the run declares."""
    if cfg is None:
        return (f"automodel export: no such option {flag}. Options beyond --plugin come from the components of the "
                f"checkpoint's run, which could not be read{f' ({why})' if why else ''}: give CKPT first, a checkpoint "
                "or run directory written by automodel run")
    have = ", ".join(d.option.flag for d in declared.values()) or "none"
    return (f"automodel export: {flag} is not an option of this run: its components ({describe_components(cfg)}) "
            f"declare {have}. Export options come from the components in the checkpoint's config.yaml (their "
            "factories' export_options); `automodel export CKPT --help` lists them")


def check_export_options(options: dict[str, Any], cfg: dict[str, Any], declared: dict[str, DeclaredOption]) -> None:
    """Every option in ``options`` is declared by a component of the run and has a value of its type."""
    for name, value in options.items():
        if name not in declared:
            raise AutomodelError(unknown_option_message("--" + name.replace("_", "-"), cfg, declared))
        want = declared[name].option.type
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise AutomodelError(f"automodel export: the option {declared[name].option.flag} takes a {want.__name__}, "
                                 f"got {value!r}")
