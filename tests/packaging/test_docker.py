"""docker/Dockerfile, checked without a daemon: what it copies exists and reaches the build context,
stage 1 runs the real wheel-build script, the image runs `automodel` as a non-root user.
(CI also lints it with hadolint; the image itself is not built here.)"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def in_context(rel: str) -> bool:
    """Whether .dockerignore lets ``rel`` into the build context (last matching pattern wins)."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    parts = rel.split("/")
    included = True
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[: i + 1]), pat) for i in range(len(parts))):
            included = negate
    return included


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    copies = [args.split() for word, args in instructions() if word == "COPY" and "--from" not in args]
    sources = [src for *srcs, _dest in copies for src in srcs]
    assert {"VERSION", "tools", "automodel-core", "automodel-plugins"} <= set(sources)
    needed = ["VERSION", "tools/check_wheels.py", "tools/versions.py"]
    for pkg in ["automodel-core", *(p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("automodel-plugins/*/pyproject.toml"))]:
        needed += [f"{pkg}/pyproject.toml", f"{pkg}/README.md"]
        needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / pkg / "src").rglob("*.py")][:3]
    for rel in needed:
        assert (ROOT / rel).exists(), f"{rel} is missing (python -m build needs it; see docs/packaging.md)"
        assert any(rel == s or rel.startswith(s + "/") for s in sources), f"{rel} is not copied"
        assert in_context(rel), f".dockerignore keeps {rel} out of the build context"
    assert not in_context(".venv/bin/python") and not in_context("dist/x.whl") and not in_context(".git/HEAD")
    assert not in_context("automodel-core/src/automodel/__pycache__/cli.cpython-311.pyc")


def test_stages_user_and_entrypoint() -> None:
    steps = instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS wheels")
    stage1 = steps[: [w for w, _ in steps].index("FROM", [w for w, _ in steps].index("FROM") + 1)]
    assert any(w == "RUN" and "tools/check_wheels.py --build-only --outdir /wheels" in a for w, a in stage1)
    runtime = steps[len(stage1):]
    assert ("COPY", "--from=wheels /wheels /opt/automodel/wheels") in runtime
    assert any(w == "RUN" and "/opt/automodel/wheels/*.whl" in a and "automodel plugins --check" in a for w, a in runtime)
    user = [a for w, a in runtime if w == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert [json.loads(a) for w, a in runtime if w == "ENTRYPOINT"] == [["automodel"]]
    help_text = subprocess.run([sys.executable, ROOT / "tools" / "check_wheels.py", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--build-only" in help_text and "--outdir" in help_text
