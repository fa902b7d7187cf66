#!/usr/bin/env python3
"""One version for every package: the repository's VERSION file (see docs/packaging.md).

Each package keeps a static ``version`` in its pyproject.toml and a ``__version__`` in its
``__init__.py`` (static values build the same from a checkout, an sdist or a wheel); this script
checks that they all equal VERSION, and rewrites them for a release:

    python tools/versions.py            # check (exit 1 with one line per mismatch)
    python tools/versions.py --set 0.2.0

Checked, for automodel-core and every directory under automodel-plugins/ with a pyproject.toml:

* ``[project] version`` and ``__version__`` (every ``src/*/__init__.py`` that defines one) == VERSION;
* each plugin depends on ``automodel-core`` with a range that contains VERSION (``--set`` writes the
  series range ``>=X.Y,<X.Y+1``);
* automodel-core's ``[all]`` extra names every first-party plugin, each with a range containing VERSION.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CORE = "automodel-core"

_VERSION_LINE = re.compile(r'^(version\s*=\s*")([^"]*)(")', re.M)
_DUNDER = re.compile(r'^(__version__\s*=\s*["\'])([^"\']*)(["\'])', re.M)


def package_dirs(root: Path = ROOT) -> list[Path]:
    """automodel-core, then every automodel-plugins/<dir> that has a pyproject.toml (sorted)."""
    plugins = sorted(p.parent for p in (root / "automodel-plugins").glob("*/pyproject.toml"))
    return [root / "automodel-core", *plugins]


def read_version(root: Path = ROOT) -> str:
    text = (root / "VERSION").read_text().strip()
    Version(text)  # raises InvalidVersion on nonsense
    return text


def series_range(version: str) -> str:
    """``0.1.3`` -> ``>=0.1,<0.2``: the range a release of one package declares for the others."""
    v = Version(version)
    return f">={v.major}.{v.minor},<{v.major}.{v.minor + 1}"


def project_table(pkg: Path) -> dict:
    """The ``[project]`` table of ``pkg``/pyproject.toml."""
    return tomllib.loads((pkg / "pyproject.toml").read_text())["project"]


def _init_files(pkg: Path) -> list[Path]:
    return sorted(p for p in (pkg / "src").glob("*/__init__.py") if _DUNDER.search(p.read_text()))


def check(root: Path = ROOT) -> list[str]:
    """Every disagreement with VERSION, one line each (empty: all agree)."""
    version = read_version(root)
    problems: list[str] = []
    plugin_names = []
    for pkg in package_dirs(root):
        rel = pkg.relative_to(root)
        project = project_table(pkg)
        name = project.get("name", "?")
        if "version" in project.get("dynamic", []):
            problems.append(f"{rel}/pyproject.toml: dynamic version; use a static one (see docs/packaging.md)")
        elif project.get("version") != version:
            problems.append(f"{rel}/pyproject.toml: version {project.get('version')!r}, VERSION says {version!r}")
        for init in _init_files(pkg):
            found = _DUNDER.search(init.read_text()).group(2)
            if found != version:
                problems.append(f"{init.relative_to(root)}: __version__ {found!r}, VERSION says {version!r}")
        if name == CORE:
            continue
        plugin_names.append(name)
        core_reqs = [Requirement(r) for r in project.get("dependencies", []) if Requirement(r).name == CORE]
        if not core_reqs or not core_reqs[0].specifier:
            problems.append(f"{rel}/pyproject.toml: no '{CORE}{series_range(version)}' in dependencies "
                            "(every plugin declares the core versions it supports)")
        elif not core_reqs[0].specifier.contains(version, prereleases=True):
            problems.append(f"{rel}/pyproject.toml: requires {CORE}{core_reqs[0].specifier}, "
                            f"which excludes {version}; use {CORE}{series_range(version)}")
    extras = project_table(root / "automodel-core").get("optional-dependencies", {})
    all_reqs = {Requirement(r).name: Requirement(r) for r in extras.get("all", [])}
    for name in plugin_names:
        if name not in all_reqs:
            problems.append(f"automodel-core/pyproject.toml: the [all] extra lacks {name}{series_range(version)}")
    for req in all_reqs.values():
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"automodel-core/pyproject.toml: [all] has {req}, which excludes {version}")
    return problems


def set_version(new: str, root: Path = ROOT) -> list[Path]:
    """Write ``new`` to VERSION, every pyproject version, every ``__version__`` and every range."""
    Version(new)
    rng = series_range(new)
    changed = []
    (root / "VERSION").write_text(new + "\n")
    for pkg in package_dirs(root):
        py = pkg / "pyproject.toml"
        text = _VERSION_LINE.sub(lambda m: m.group(1) + new + m.group(3), py.read_text(), count=1)
        # "automodel-core>=0.1,<0.2" and, in the core's [all] extra, "automodel-<plugin>>=0.1,<0.2"
        text = re.sub(r'"(automodel-[a-z0-9-]+)\s*[<>=!~][^";\[]*', lambda m: f'"{m.group(1)}{rng}', text)
        py.write_text(text)
        changed.append(py)
        for init in _init_files(pkg):
            init.write_text(_DUNDER.sub(lambda m: m.group(1) + new + m.group(3), init.read_text(), count=1))
            changed.append(init)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", metavar="VERSION", help="rewrite every package to this version")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.set:
        for path in set_version(args.set, args.root):
            print(f"wrote {path.relative_to(args.root)}")
    problems = check(args.root)
    for p in problems:
        print(f"version mismatch: {p}", file=sys.stderr)
    if not problems:
        print(f"all {len(package_dirs(args.root))} packages are at {read_version(args.root)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
