"""Write docs/config-reference.md: every first-party component's config keys, from its factory.

    python docs/gen_config_reference.py          # rewrite docs/config-reference.md
    python docs/gen_config_reference.py --check  # exit 1 if it is stale (CI)

The components are those of the builtins and of the plugin packages requirements-dev.txt installs
(the first-party plugins CI tests), so the page is the same wherever CI's environment is installed.
Keys come from each factory's signature (less what the core passes itself, config.SUPPLIED), the
text from its docstring and its registered description.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from automodel.config import SUPPLIED
from automodel.plugins import load_plugins
from automodel.registry import KINDS

ROOT = Path(__file__).resolve().parents[1]
TARGET = Path(__file__).with_name("config-reference.md")

#: config section per kind
SECTION = {
    "model_loaders": "model", "model_transforms": "transforms", "parallelizers": "parallel", "datasets": "dataset",
    "losses": "loss", "optimizers": "optimizer", "lr_schedulers": "lr_scheduler", "checkpointers": "checkpoint",
    "launchers": "launcher", "loggers": "loggers",
}


def first_party_distributions() -> set[str]:
    lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    return {m.group(1) for line in lines if (m := re.match(r"-e \./automodel-plugins/([\w-]+)", line.strip()))}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _keys(kind: str, factory: object) -> list[tuple[str, str, str]]:
    sig = inspect.signature(factory)
    P = inspect.Parameter
    supplied = SUPPLIED.get(kind, ())
    lead = len([s for s in supplied if s != "total_steps"])
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    skip = {p.name for p in positional[:lead]} | set(supplied)
    rows = []
    for p in params:
        if p.name in skip:
            continue
        if p.kind == P.VAR_KEYWORD:
            rows.append((f"**{p.name}", "any", "passed on unchecked"))
            continue
        if p.kind == P.VAR_POSITIONAL:
            continue
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
        ann = "" if p.annotation is P.empty else ann
        default = "**required**" if p.default is P.empty else f"`{p.default!r}`"
        rows.append((p.name, f"`{ann}`" if ann else "", default))
    return rows


def _doc(factory: object) -> str:
    doc = inspect.getdoc(factory) or ""
    if inspect.isclass(factory) and not doc:
        doc = inspect.getdoc(factory.__init__) or ""
    return doc.strip()


def render() -> str:
    wanted = first_party_distributions()
    plugins = load_plugins()
    plugins.raise_on_failures()
    installed = {i.dist for i in plugins.infos if i.dist}
    missing = sorted(wanted - installed)
    if missing:
        sys.exit(f"gen_config_reference: install {', '.join(missing)} first (pip install -r requirements-dev.txt)")
    keep = {i.name for i in plugins.infos if i.source == "builtin" or i.dist in wanted}
    out = [
        "# Config reference\n\n",
        "Generated from the factories' signatures and docstrings by `python docs/gen_config_reference.py`;\n"
        "do not edit by hand. Every component section takes `name:` plus the keys below; the core passes\n"
        "the leading arguments itself (`ctx`, `tokenizer`, `params`, ...). Top-level sections and\n"
        "`step_scheduler` are in [config.md](config.md); how each kind is called is in\n"
        "[writing-plugins.md](writing-plugins.md).\n",
    ]
    for kind, (_, noun) in KINDS.items():
        entries = sorted((e for e in plugins.registry.entries(kind) if e.plugin in keep), key=lambda e: e.name)
        if not entries:
            continue
        out.append(f"\n## {noun[0].upper() + noun[1:]}s (`{SECTION[kind]}:`)\n")
        for entry in entries:
            factory = entry.resolve()
            out.append(f"\n### `{entry.name}`\n\n")
            source = entry.dist or "automodel-core (builtin)"
            out.append(f"Provided by `{source}`"
                       + (f": {entry.meta['description']}." if entry.meta.get("description") else ".") + "\n")
            doc = _doc(factory)
            if doc:
                out.append("\n```text\n" + doc + "\n```\n")
            rows = _keys(kind, factory)
            if rows:
                out.append("\n| key | type | default |\n|---|---|---|\n")
                out += [f"| `{k}` | {_cell(t)} | {_cell(d)} |\n" for k, t, d in rows]
            else:
                out.append("\nNo keys besides `name`.\n")
    return "".join(out)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            sys.exit("docs/config-reference.md is stale: run python docs/gen_config_reference.py")
    else:
        TARGET.write_text(text)
