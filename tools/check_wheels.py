#!/usr/bin/env python3
"""Build every package and prove the install-from-an-index path works (``nox -s wheels``, CI).

1. ``python -m build`` an sdist and a wheel (built from the sdist) of automodel-core and of every
   automodel-plugins/<dir> with a pyproject.toml, into dist/; ``twine check --strict dist/*``;
   every artifact carries VERSION, every plugin wheel requires an automodel-core range containing it.
2. A fresh venv (outside the repository): ``torch==2.13.0`` from the registry, then
   ``pip install --find-links dist automodel-core==V automodel-fsdp2==V``; the installed files must be
   the ones in our wheels (RECORD hashes), not an editable install, not a copy from an index.
3. From a temporary directory (the repository is not on sys.path, PYTHONPATH unset): ``automodel
   plugins`` lists exactly builtin + fsdp2, ``--check`` passes, and a 2-process FSDP2 run of the
   quickstart (a copy of examples/quickstart) exits 0, its loss falls and it exports a HF model.
4. Every package-index and built-wheels ``pip install`` line of the docs (tools/install_lines.py) resolves
   against dist/ in that venv: ``pip install --dry-run --no-index --find-links dist --no-deps``, each
   distribution at VERSION, its extras declared by our wheel, the first-party packages they pull in built.

    python tools/check_wheels.py                # all of it (needs `build` and `twine` installed)
    python tools/check_wheels.py --build-only --outdir /wheels   # what docker/Dockerfile runs

Exit 1 with ``FAILED: ...`` on the first failed check.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.parser import Parser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from install_lines import all_lines  # noqa: E402
from versions import CORE, ROOT, check, package_dirs, project_table, read_version  # noqa: E402

TORCH = "torch==2.13.0"  # the CPU wheel on our CI machines; any torch>=2.6 works for the packages
INSTALLED = ("automodel-core", "automodel-fsdp2")
MAX_STEPS = 20


class CheckFailed(Exception):
    pass


def log(msg: str) -> None:
    print(f"[check_wheels {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], **kw)


def dist_name(name: str) -> str:
    """Normalized file-name form: automodel-triton-ce -> automodel_triton_ce."""
    return name.replace("-", "_").lower()


def build_all(outdir: Path, packages: list[Path], isolation: bool = True, jobs: int = 2) -> None:
    """sdist + wheel (from the sdist) of every package into outdir, ``jobs`` builds at a time
    (old automodel_* artifacts there are removed first)."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("automodel_*"):
        old.unlink()

    def one(pkg: Path) -> tuple[Path, subprocess.CompletedProcess, float]:
        t0 = time.time()
        cmd = [sys.executable, "-m", "build", *([] if isolation else ["--no-isolation"]), "--outdir", outdir, pkg]
        return pkg, run(cmd, capture_output=True, text=True, check=False), time.time() - t0

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for pkg, proc, seconds in pool.map(one, packages):
            if proc.returncode != 0:
                raise CheckFailed(f"python -m build {pkg.relative_to(ROOT)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            log(f"built {pkg.relative_to(ROOT)} in {seconds:.1f} s")


def wheel_metadata(whl: Path) -> tuple[dict, dict[str, str]]:
    """(METADATA headers, RECORD path -> hash) of a wheel."""
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
        meta = Parser().parsestr(z.read(meta_name).decode())
        record = {row[0]: row[1] for row in csv.reader(io.StringIO(z.read(record_name).decode())) if row and row[1]}
    return meta, record


def check_artifacts(outdir: Path, packages: list[Path], version: str) -> dict[str, Path]:
    """Every package has one sdist and one wheel at ``version``; returns name -> wheel."""
    from packaging.requirements import Requirement

    wheels = {}
    for pkg in packages:
        name = project_table(pkg)["name"]
        stem = f"{dist_name(name)}-{version}"
        whl = outdir / f"{stem}-py3-none-any.whl"
        sdist = outdir / f"{stem}.tar.gz"
        for path in (whl, sdist):
            if not path.exists():
                found = ", ".join(p.name for p in outdir.glob(f"{dist_name(name)}-*")) or "nothing"
                raise CheckFailed(f"{path.name} missing from {outdir} (found: {found})")
        meta, record = wheel_metadata(whl)
        if meta["Version"] != version or meta["Name"] != name:
            raise CheckFailed(f"{whl.name}: METADATA says {meta['Name']} {meta['Version']}")
        if not any(p.endswith(".py") and "/" in p and not p.startswith(f"{stem}.dist-info") for p in record):
            raise CheckFailed(f"{whl.name} has no Python modules: {sorted(record)}")
        with tarfile.open(sdist) as tar:
            members = tar.getnames()
        for needed in ("pyproject.toml", "README.md", "PKG-INFO"):
            if f"{stem}/{needed}" not in members:
                raise CheckFailed(f"{sdist.name} lacks {needed}")
        if name != CORE:
            reqs = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
            core = [r for r in reqs if r.name == CORE]
            if not core or not core[0].specifier.contains(version, prereleases=True):
                raise CheckFailed(f"{whl.name}: Requires-Dist {CORE} is {core[0] if core else 'missing'}")
        wheels[name] = whl
        log(f"{whl.name}: {whl.stat().st_size / 1024:.1f} KiB wheel, {sdist.stat().st_size / 1024:.1f} KiB sdist")
    return wheels


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("AUTOMODEL_LOAD_PLUGINS", None)
    return env


PROBE = r"""
import json, sys
from importlib import metadata
import automodel, automodel_fsdp2
out = {"sys_path": sys.path, "automodel": automodel.__file__, "automodel_fsdp2": automodel_fsdp2.__file__,
       "prefix": sys.prefix, "dists": {}}
for name in sys.argv[1:]:
    d = metadata.distribution(name)
    out["dists"][name] = {"version": d.version, "direct_url": d.read_text("direct_url.json"),
                          "installer": (d.read_text("INSTALLER") or "").strip(),
                          "record": {str(f): f.hash.value for f in d.files if f.hash}}
print(json.dumps(out))
"""


def install_and_run(outdir: Path, wheels: dict[str, Path], version: str, work: Path) -> None:
    env_dir = work / "venv"
    t0 = time.time()
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py, automodel = env_dir / "bin" / "python", env_dir / "bin" / "automodel"
    env = clean_env()
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    for args in ([TORCH], ["--find-links", outdir, *(f"{n}=={version}" for n in INSTALLED), TORCH]):
        proc = run([*pip, *args], env=env, cwd=work, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CheckFailed(f"pip install {' '.join(map(str, args))} exited {proc.returncode}:\n"
                              f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    log(f"fresh venv with {TORCH} + {' + '.join(INSTALLED)} from {outdir} in {time.time() - t0:.1f} s")

    probe = json.loads(run([py, "-c", PROBE, *INSTALLED], env=env, cwd=work, capture_output=True, text=True).stdout)
    repo = str(ROOT)
    if any(p.startswith(repo) for p in probe["sys_path"]):
        raise CheckFailed(f"the repository is on the fresh venv's sys.path: {probe['sys_path']}")
    for mod in ("automodel", "automodel_fsdp2"):
        if not probe[mod].startswith(str(env_dir)):
            raise CheckFailed(f"{mod} imported from {probe[mod]}, not from the fresh venv {env_dir}")
    for name in INSTALLED:
        info = probe["dists"][name]
        if info["version"] != version:
            raise CheckFailed(f"{name} {info['version']} installed, built {version}")
        if info["direct_url"] and json.loads(info["direct_url"]).get("dir_info", {}).get("editable"):
            raise CheckFailed(f"{name} is an editable install: {info['direct_url']}")
        _, wheel_record = wheel_metadata(wheels[name])
        ours = {p: h for p, h in wheel_record.items() if p.endswith(".py")}
        installed = {p: "sha256=" + h for p, h in info["record"].items() if p.endswith(".py") and "/../" not in p}
        differ = [p for p, h in ours.items() if installed.get(p) != h]
        if differ or not ours:
            raise CheckFailed(f"{name}: installed files differ from {wheels[name].name}: {differ[:5]}")
        log(f"{name} {version}: {len(ours)} modules installed from {wheels[name].name} (RECORD hashes match), "
            f"installer {info['installer']}, not editable")

    proc = run([automodel, "plugins", "--json"], env=env, cwd=work, capture_output=True, text=True)
    listed = {p["name"]: p for p in json.loads(proc.stdout)}
    if set(listed) != {"builtin", "fsdp2"} or listed["fsdp2"]["distribution"] != "automodel-fsdp2":
        raise CheckFailed(f"automodel plugins lists {sorted(listed)}; expected builtin and fsdp2:\n{proc.stdout}")
    if listed["fsdp2"]["version"] != version or listed["fsdp2"]["error"]:
        raise CheckFailed(f"fsdp2 plugin: {listed['fsdp2']}")
    text = run([automodel, "plugins", "--check"], env=env, cwd=work, capture_output=True, text=True, check=False)
    if text.returncode != 0 or "all plugins OK" not in text.stdout or text.stderr.strip():
        raise CheckFailed(f"automodel plugins --check exited {text.returncode}:\n{text.stdout}\n{text.stderr}")
    shown = ", ".join(f"{n} ({p['source']})" for n, p in listed.items())
    log(f"automodel plugins: {shown}; --check: all plugins OK")

    qs = work / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", qs, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    out = work / "run"
    t0 = time.time()
    proc = run([automodel, "run", qs / "config.yaml", f"output_dir={out}", "launcher.nproc_per_node=2",
                "parallel=[{name: fsdp2}]", f"step_scheduler.max_steps={MAX_STEPS}", "step_scheduler.log_every_steps=5",
                f"step_scheduler.val_every_steps={MAX_STEPS}", "lr_scheduler.warmup_steps=5"],
               env=env, cwd=work, capture_output=True, text=True, check=False)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise CheckFailed(f"2-process fsdp2 quickstart exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    for needed in ("fsdp2", f"step {MAX_STEPS}/{MAX_STEPS}", "exported Hugging Face model"):
        if needed not in proc.stdout:
            raise CheckFailed(f"the run's output lacks {needed!r}:\n{proc.stdout[-4000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["step"], r["loss"]) for r in records if "loss" in r]
    if [s for s, _ in steps] != list(range(5, MAX_STEPS + 1, 5)):
        raise CheckFailed(f"metrics.jsonl steps {[s for s, _ in steps]}")
    losses = [loss for _, loss in steps]
    if not all(b < a for a, b in zip(losses, losses[1:])) or not losses[-1] < 0.95 * losses[0]:
        raise CheckFailed(f"loss did not fall at every logged step, and by 5% overall: {steps}")
    hf = out / "hf"
    for needed in ("config.json", "tokenizer_config.json"):
        if not (hf / needed).exists():
            raise CheckFailed(f"{hf} lacks {needed}: {sorted(p.name for p in hf.iterdir()) if hf.exists() else 'missing'}")
    if not list(hf.glob("*.safetensors")):
        raise CheckFailed(f"{hf} has no safetensors weights")
    probe = ("import sys; from transformers import AutoModelForCausalLM as M; "
             "m = M.from_pretrained(sys.argv[1]); print(sum(p.numel() for p in m.parameters()))")
    n = int(run([py, "-c", probe, hf], env=env, cwd=work, capture_output=True, text=True).stdout.split()[-1])
    log(f"2-process fsdp2 quickstart: {MAX_STEPS} steps in {seconds:.1f} s, loss "
        f"{' -> '.join(f'{loss:.3f}' for _, loss in steps)}, exported {n:,} parameters to {hf.name}/ (loads in transformers)")
    check_doc_install_lines(py, outdir, version, wheels, env, work)


def check_doc_install_lines(py: Path, outdir: Path, version: str, wheels: dict[str, Path], env: dict[str, str],
                            cwd: Path) -> None:
    """Every index / wheels ``pip install`` line of the docs resolves against ``outdir`` alone (no index):
    each named distribution is one of our wheels at ``version``, with the extras it names, and every
    first-party package those extras and requirements pull in was built too."""
    from packaging.requirements import Requirement

    lines = [line for line in all_lines() if line.kind in ("index", "wheels")]
    distinct: dict[tuple[str, ...], list] = {}
    for line in lines:
        distinct.setdefault(tuple(sorted(line.requirements)), []).append(line)
    t0 = time.time()
    for reqs, where in distinct.items():
        shown = "\n  ".join(x.where() for x in where)
        todo, closure = [Requirement(r) for r in reqs], set()
        while todo:  # the first-party closure: requirements, and what their extras add
            req = todo.pop()
            name = req.name.lower()
            if not name.startswith("automodel-") or (name, tuple(sorted(req.extras))) in closure:
                continue
            closure.add((name, tuple(sorted(req.extras))))
            if name not in wheels:
                raise CheckFailed(f"{name} (named by the docs) was not built into {outdir}:\n  {shown}")
            meta, _ = wheel_metadata(wheels[name])
            missing = set(req.extras) - set(meta.get_all("Provides-Extra") or [])
            if missing:
                raise CheckFailed(f"{wheels[name].name} has no extra {sorted(missing)}:\n  {shown}")
            for dep in map(Requirement, meta.get_all("Requires-Dist") or []):
                if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in req.extras):
                    todo.append(dep)

    def dry_run(reqs: list[str]) -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
        proc = run([py, "-m", "pip", "install", "--disable-pip-version-check", "--dry-run", "--no-index", "--no-deps",
                    "--ignore-installed", "--find-links", outdir, *reqs], env=env, cwd=cwd, capture_output=True,
                   text=True, check=False)
        would = sorted(w.lower() for w in proc.stdout.partition("Would install ")[2].split())
        return proc, would, sorted({f"{Requirement(r).name.lower()}-{version}" for r in reqs})

    # one pip run for all of them (~2 s); only when it fails, one per line to name the culprit
    proc, would, expected = dry_run(sorted({r for reqs in distinct for r in reqs}))
    if proc.returncode != 0 or would != expected:
        for reqs, where in distinct.items():
            proc, would, expected = dry_run(list(reqs))
            if proc.returncode != 0 or would != expected:
                shown = "\n  ".join(x.where() for x in where)
                raise CheckFailed(f"pip install --dry-run --no-index --find-links {outdir} {' '.join(reqs)} "
                                  f"(exit {proc.returncode}) would install {would}, expected {expected}:\n  {shown}\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        raise CheckFailed(f"the docs' install lines together do not resolve against {outdir}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    log(f"docs: {len(lines)} package-index / built-wheels install lines ({len(distinct)} distinct) resolve against "
        f"{outdir.name}/ (pip --dry-run --no-index, extras and first-party closure checked) in {time.time() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=ROOT / "dist", help="where the sdists and wheels go (dist/)")
    parser.add_argument("--build-only", action="store_true", help="only build (and check) the artifacts")
    parser.add_argument("--no-isolation", action="store_true", help="build with this environment's setuptools")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="builds at a time")
    parser.add_argument("--keep", action="store_true", help="keep the temporary venv and run directory")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        problems = check()
        if problems:
            raise CheckFailed("versions disagree (python tools/versions.py):\n  " + "\n  ".join(problems))
        version = read_version()
        outdir = args.outdir.resolve()
        packages = package_dirs()  # once: a package added meanwhile joins the next run
        build_all(outdir, packages, isolation=not args.no_isolation, jobs=args.jobs)
        wheels = check_artifacts(outdir, packages, version)
        if args.build_only:
            log(f"built {len(wheels)} packages at {version} into {outdir} in {time.time() - started:.0f} s")
            return 0
        artifacts = sorted(str(p) for p in outdir.glob("automodel_*"))
        proc = run([sys.executable, "-m", "twine", "check", "--strict", *artifacts], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CheckFailed(f"twine check --strict:\n{proc.stdout}\n{proc.stderr}")
        log(f"twine check --strict: {len(artifacts)} artifacts PASSED")
        work = Path(tempfile.mkdtemp(prefix="automodel-wheels-"))
        try:
            install_and_run(outdir, wheels, version, work)
        finally:
            if args.keep:
                log(f"kept {work}")
            else:  # ~1.5 GB of venv (torch): deleting it took 90 s on a discard-mounted disk, so not in line
                subprocess.Popen(["rm", "-rf", str(work)], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (CheckFailed, subprocess.CalledProcessError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    log(f"wheel check passed in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
