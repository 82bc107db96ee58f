"""Developer tasks: ``nox -s tests lint typecheck docs bench demo``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


def _livekit_server(session: nox.Session) -> str:
    out = session.run("bash", "scripts/install-livekit-server.sh", silent=True, external=True)
    return str(out).strip().splitlines()[-1]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite, real livekit-server included."""
    session.install("-e", ".[dev]")
    binary = _livekit_server(session)
    session.run("pytest", *session.posargs, env={"LIVEKIT_SERVER_BIN": binary})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "dualchannel", "tests", "examples", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "dualchannel")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mkdocs", "build", "--strict")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """``dualchannel bench``; pass suites and flags after ``--``."""
    session.install("-e", ".[dev]")
    binary = _livekit_server(session)
    session.run("dualchannel", "bench", *session.posargs, env={"LIVEKIT_SERVER_BIN": binary})


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    binary = _livekit_server(session)
    session.run("dualchannel", "demo", *session.posargs, env={"LIVEKIT_SERVER_BIN": binary})
