"""The ``attnviz`` command line: parse -> call the Python API -> present -> exit code.

``app.py`` holds the Typer app and the one error handler, ``options.py`` the options every
command spells the same way; each other module registers one command family. Heavy
modules (torch, matplotlib) are imported inside the commands that need them, so
``attnviz --help`` and ``attnviz tokens`` start fast.
"""

# ruff: noqa: I001 - the import order of the command modules is the order in --help
from __future__ import annotations

# Importing a command module registers its commands; the order here is the order in --help.
from attnviz.cli.app import app, tune_gc_for_one_run
from attnviz.cli import heatmap  # noqa: F401
from attnviz.cli import compare  # noqa: F401
from attnviz.cli import export  # noqa: F401
from attnviz.cli import scan  # noqa: F401
from attnviz.cli import needle  # noqa: F401
from attnviz.cli import report  # noqa: F401
from attnviz.cli import steps  # noqa: F401
from attnviz.cli import generate  # noqa: F401
from attnviz.cli import attribute  # noqa: F401
from attnviz.cli import why  # noqa: F401
from attnviz.cli import train  # noqa: F401

__all__ = ["app", "main"]


def main() -> None:
    """The ``attnviz`` program (the console script and ``python -m attnviz``)."""
    tune_gc_for_one_run()
    app(prog_name="attnviz")
