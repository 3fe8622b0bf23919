"""The `gradlab` command line: a thin Typer layer over the library.

Every command parses its arguments, calls library functions a test or a notebook could call too,
and prints. `GradlabError`s are caught here, at the boundary, and become one line per problem on
stderr with their exit code (2 for bad input); nothing below this module prints errors or exits.
Heavy imports (torch) happen inside the commands that need them, so `gradlab compare` and
`gradlab plot` start fast and work where torch is not installed.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from gradlab.errors import GradlabError

app = typer.Typer(
    name="gradlab",
    help="Gradient-stability experiments from a YAML file: run, compare, plot, check.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def reports_errors(command):
    """Turn a GradlabError raised by `command` into 'error: ...' lines and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GradlabError as exc:
            for line in exc.lines:
                err_console.print(f"error: {line}", markup=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def main() -> None:
    app()
