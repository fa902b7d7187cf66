"""Write docs/hooks.md from automodel/hookspecs.py (the docstrings are the reference).

    python docs/gen_hooks.py          # rewrite docs/hooks.md
    python docs/gen_hooks.py --check  # exit 1 if docs/hooks.md is stale (nox -s docs)
"""

import inspect
import sys
from pathlib import Path

from automodel import hookspecs

HEADER = """# Hook reference

Generated from `automodel-core/src/automodel/hookspecs.py` by `python docs/gen_hooks.py`; do not edit by hand.
Implement a hook in your plugin module with `@automodel.hookimpl`, accepting any subset of its arguments.
See [writing-plugins.md](writing-plugins.md) for a complete plugin.

"""


def render() -> str:
    parts = [HEADER, inspect.cleandoc(hookspecs.__doc__ or ""), "\n"]
    specs = [(n, f) for n, f in vars(hookspecs).items() if inspect.isfunction(f) and getattr(f, "automodel_spec", None)]
    for name, fn in specs:
        args = ", ".join(inspect.signature(fn).parameters)
        parts.append(f"\n## `{name}({args})`\n\n{inspect.cleandoc(fn.__doc__ or '')}\n")
    return "".join(parts)


if __name__ == "__main__":
    target = Path(__file__).with_name("hooks.md")
    text = render()
    if "--check" in sys.argv:
        if not target.exists() or target.read_text() != text:
            sys.exit("docs/hooks.md is stale: run python docs/gen_hooks.py")
    else:
        target.write_text(text)
