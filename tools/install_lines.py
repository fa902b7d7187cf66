#!/usr/bin/env python3
"""The ``pip install`` lines of the documentation, and what each one installs.

Every fenced code block of README.md, docs/*.md and the packages' and examples' READMEs is read; each
``pip install ...`` command in it (also inside ``a && b`` chains) becomes an :class:`InstallLine`:

* an **index** line names first-party distributions only (``pip install automodel-core automodel-fsdp2``);
* a **checkout** line installs from the repository (``pip install -e ./automodel-core ...`` or
  ``-r requirements-dev.txt``), run at the repository root;
* a **wheels** line installs from the wheels built into ``dist/`` (``pip install --find-links dist ...``).

:func:`problems` checks them without building anything (names, extras, paths; and that a block with an
index line also shows the checkout and the wheels way for the same packages); ``tools/check_wheels.py``
resolves every index and wheels line against the wheels it built (``pip install --dry-run --no-index
--find-links dist``). ``tests/packaging/test_install_lines.py`` runs :func:`problems`.

    python tools/install_lines.py          # list the lines and their problems (exit 1 if any)
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
KINDS = ("index", "checkout", "wheels")


def doc_files(root: Path = ROOT) -> list[Path]:
    """Where install lines are documented."""
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "automodel-core" / "README.md",
             *sorted((root / "automodel-plugins").glob("*/README.md")), *sorted((root / "examples").glob("*/README.md")),
             root / "docker" / "README.md"]
    return [f for f in files if f.is_file()]


def projects(root: Path = ROOT) -> dict[str, tuple[Path, set[str]]]:
    """Distribution name -> (directory, extras) of every package in the repository (examples included)."""
    out = {}
    for pyproject in [root / "automodel-core" / "pyproject.toml", *sorted(root.glob("automodel-plugins/*/pyproject.toml")),
                      *sorted(root.glob("examples/*/pyproject.toml"))]:
        project = tomllib.loads(pyproject.read_text())["project"]
        out[project["name"].lower()] = (pyproject.parent, set(project.get("optional-dependencies") or {}))
    return out


@dataclass
class InstallLine:
    file: Path
    line: int
    text: str  # the pip command as written
    block: int  # index of its code block in the file
    requirements: list[str] = field(default_factory=list)  # as written: name[extras]
    editable: list[str] = field(default_factory=list)  # -e paths as written
    find_links: list[str] = field(default_factory=list)
    req_files: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str | None:
        if self.editable or self.req_files:
            return "checkout"
        if self.find_links:
            return "wheels"
        if self.requirements and all(_name(r).startswith("automodel-") for r in self.requirements):
            return "index"
        return None  # e.g. pip install build, pip install torch==...

    def where(self, root: Path = ROOT) -> str:
        return f"{self.file.relative_to(root)}:{self.line}: {self.text}"


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _extras(req: str) -> set[str]:
    m = re.search(r"\[([^\]]*)\]", req)
    return {e.strip() for e in m.group(1).split(",")} if m else set()


def parse(text: str, file: Path) -> list[InstallLine]:
    out = []
    for b, m in enumerate(FENCE.finditer(text)):
        first = text[: m.start(1)].count("\n") + 1
        for i, raw in enumerate(m.group(1).splitlines()):
            try:
                tokens = shlex.split(raw, comments=True)
            except ValueError:
                continue
            for cmd in _commands(tokens):
                out.append(_line(cmd, file, first + i, b))
    return out


def _commands(tokens: list[str]) -> list[list[str]]:
    cmds, cur = [], []
    for t in tokens + ["&&"]:
        if t in ("&&", "||", ";", "|"):
            for start in range(len(cur)):
                if cur[start:start + 2] == ["pip", "install"] or cur[start:start + 4] == ["python", "-m", "pip", "install"] \
                        or cur[start:start + 4] == ["python3", "-m", "pip", "install"]:
                    cmds.append(cur[start + (2 if cur[start] == "pip" else 4):])
                    break
            cur = []
        else:
            cur.append(t)
    return cmds


def _line(args: list[str], file: Path, lineno: int, block: int) -> InstallLine:
    line = InstallLine(file, lineno, "pip install " + " ".join(shlex.quote(a) for a in args), block)
    it = iter(args)
    for a in it:
        if a in ("-e", "--editable"):
            line.editable.append(next(it, ""))
        elif a.startswith("--editable="):
            line.editable.append(a.split("=", 1)[1])
        elif a in ("-f", "--find-links"):
            line.find_links.append(next(it, ""))
        elif a.startswith("--find-links="):
            line.find_links.append(a.split("=", 1)[1])
        elif a in ("-r", "--requirement"):
            line.req_files.append(next(it, ""))
        elif a.startswith("-"):
            continue
        else:
            line.requirements.append(a)
    return line


def all_lines(root: Path = ROOT) -> list[InstallLine]:
    return [line for f in doc_files(root) for line in parse(f.read_text(), f)]


def _editable_target(path: str, root: Path, known: dict[str, tuple[Path, set[str]]]) -> tuple[str | None, str | None]:
    """(distribution, problem) of ``-e PATH[extras]``, PATH relative to the repository root."""
    bare = re.sub(r"\[.*\]$", "", path)
    directory = (root / bare).resolve()
    for name, (d, extras) in known.items():
        if d.resolve() == directory:
            missing = _extras(path) - extras
            return name, (f"{name} has no extra {sorted(missing)} (it has {sorted(extras)})" if missing else None)
    if not bare.removeprefix("./").startswith(("automodel-core", "automodel-plugins/", "examples/")):
        return None, None  # a directory the reader makes (automodel new-plugin): not ours to check
    return None, f"-e {path}: no package of this repository at {directory}"


def covered(line: InstallLine, root: Path = ROOT, known: dict | None = None) -> set[str]:
    """The first-party distributions ``line`` installs (without following dependencies)."""
    known = known or projects(root)
    if line.kind == "checkout":
        names = {n for p in line.editable if (n := _editable_target(p, root, known)[0])}
        for req_file in line.req_files:
            f = root / req_file
            if f.is_file():
                for entry in f.read_text().splitlines():
                    entry = entry.split("#", 1)[0].strip()
                    if entry.startswith("-e "):
                        if n := _editable_target(entry[3:].strip(), root, known)[0]:
                            names.add(n)
        return names
    return {_name(r) for r in line.requirements if _name(r) in known}


def problems(root: Path = ROOT) -> list[str]:
    """Everything wrong with the documented install lines, statically (no build, no pip)."""
    known = projects(root)
    lines = all_lines(root)
    out = []
    for line in lines:
        for req in line.requirements:
            name = _name(req)
            if name.startswith("automodel-") and name not in known:
                out.append(f"{line.where(root)}\n    {name} is not a package of this repository")
            elif name in known and (missing := _extras(req) - known[name][1]):
                out.append(f"{line.where(root)}\n    {name} has no extra {sorted(missing)} (it has {sorted(known[name][1])})")
        for path in line.editable:
            _, problem = _editable_target(path, root, known)
            if problem:
                out.append(f"{line.where(root)}\n    {problem}")
        for req_file in line.req_files:
            if not (root / req_file).is_file():
                out.append(f"{line.where(root)}\n    -r {req_file}: no such file at the repository root")
        for link in line.find_links:
            if link.rstrip("/") != "dist":
                out.append(f"{line.where(root)}\n    --find-links {link}: the wheels are built into dist/")
    # a block that shows the index line also shows the checkout and the wheels line for the same packages
    blocks: dict[tuple[Path, int], list[InstallLine]] = {}
    for line in lines:
        blocks.setdefault((line.file, line.block), []).append(line)
    for block in blocks.values():
        for line in (x for x in block if x.kind == "index"):
            for kind in ("checkout", "wheels"):
                have = set().union(*[covered(x, root, known) for x in block if x.kind == kind])
                missing = covered(line, root, known) - have
                if missing:
                    out.append(f"{line.where(root)}\n    the block has no {kind} line for {', '.join(sorted(missing))} "
                               f"(README.md shows the three forms)")
    # every first-party plugin README shows all three for its own package
    for name, (directory, _) in known.items():
        readme = directory / "README.md"
        if directory.parent.name != "automodel-plugins" or not readme.is_file():
            continue
        for kind in KINDS:
            if not any(name in covered(x, root, known) for x in lines if x.file == readme and x.kind == kind):
                out.append(f"{readme.relative_to(root)}: no {kind} install line for {name}")
    return out


if __name__ == "__main__":
    for line in all_lines():
        print(f"{line.kind or '-':8} {line.where()}")
    found = problems()
    print("\n".join(found) if found else "no problems")
    sys.exit(1 if found else 0)
