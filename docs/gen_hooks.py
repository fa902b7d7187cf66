"""Write docs/hooks.md from automodel/hookspecs.py (the docstrings are the reference).

    python docs/gen_hooks.py          # rewrite docs/hooks.md
    python docs/gen_hooks.py --check  # exit 1 if docs/hooks.md is stale (nox -s docs)
"""

import inspect
import re
import sys
from pathlib import Path

from automodel import hookspecs

EXAMPLES = Path(__file__).with_name("hook_examples.py")  # a working plugin, checked by tests/core/test_hook_examples.py

HEADER = """# Hook reference

Generated from `automodel-core/src/automodel/hookspecs.py` by `python docs/gen_hooks.py`; do not edit by hand.
Implement a hook in your plugin module with `@automodel.hookimpl`, accepting any subset of its arguments.
See [writing-plugins.md](writing-plugins.md) for a complete plugin.

"""


def specs() -> list[tuple[str, object]]:
    """Every hookspec, in the order hookspecs.py declares them."""
    return [(n, f) for n, f in vars(hookspecs).items() if inspect.isfunction(f) and getattr(f, "automodel_spec", None)]


def examples() -> dict[str, str]:
    """Each hook's example from hook_examples.py: its ``# --- <hook>`` section (the hookimpl and what it
    registers), or the hookimpl function alone."""
    source = EXAMPLES.read_text()
    found = {m.group(1): m.group(2).strip() for m in re.finditer(r"^# --- (\w+) -+\n(.*?)(?=^# --- |\Z)", source, re.S | re.M)}
    for m in re.finditer(r"^@hookimpl\ndef (\w+)\(.*?(?=^\S|\Z)", source, re.S | re.M):
        found.setdefault(m.group(1), m.group(0).strip())
    return found


def render() -> str:
    parts = [HEADER, inspect.cleandoc(hookspecs.__doc__ or ""), "\n"]
    shown = examples()
    for name, fn in specs():
        args = ", ".join(inspect.signature(fn).parameters)
        parts.append(f"\n## `{name}({args})`\n\n{inspect.cleandoc(fn.__doc__ or '')}\n")
        if name in shown:
            parts.append(f"\nExample (from `docs/hook_examples.py`, a plugin the tests load):\n\n```python\n{shown[name]}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    target = Path(__file__).with_name("hooks.md")
    text = render()
    if "--check" in sys.argv:
        if not target.exists() or target.read_text() != text:
            sys.exit("docs/hooks.md is stale: run python docs/gen_hooks.py")
    else:
        target.write_text(text)
