"""nox sessions: ``tests`` (the default suite), ``full`` (everything, slow tests too),
``lint`` (ruff), ``bench`` (the benchmarks), ``docs`` (the mkdocs site, ``--strict``)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def full(session: nox.Session) -> None:
    """The whole suite, including the tests marked slow (what CI runs)."""
    session.install("-e", ".[test]")
    session.run("pytest", "--full", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "tests.benchmarks", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the site into site/ with mkdocs --strict: any warning fails."""
    session.install("-e", ".[docs]")
    session.env["NO_MKDOCS_2_WARNING"] = "1"  # mkdocs-material's banner about its successor
    session.run("mkdocs", "build", "--strict", *session.posargs)
