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

# --------------------------------------------------------------------------------------------
# run / validate / components
# --------------------------------------------------------------------------------------------

ConfigArg = Annotated[Path, typer.Argument(help="experiment YAML file", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override a config value: key.path=value (value parsed as YAML); repeatable"),
]


def _overrides(sets: list[str] | None, **shortcuts) -> list[str]:
    """--set items plus the shortcut options that were given, as key.path=value strings."""
    keys = {"out": "log.out", "device": "device", "seed": "seed", "steps": "train.steps"}
    extra = [f"{keys[name]}={value}" for name, value in shortcuts.items() if value is not None]
    return list(sets or []) + extra


def _load(config: Path, overrides: list[str]):
    from gradlab.config import load_config

    return load_config(config, overrides)


@app.command()
@reports_errors
def run(
    config: ConfigArg,
    set_: SetOpt = None,
    out: Annotated[Optional[str], typer.Option("--out", help="folder for run directories (log.out)")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="random seed")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="optimizer steps (train.steps)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the run directory")] = False,
) -> None:
    """Train the experiment in CONFIG and write a new run directory of records."""
    exp = _load(config, _overrides(set_, out=out, device=device, seed=seed, steps=steps))

    from gradlab.train import RunInterrupted, run_experiment

    from gradlab.display import ProgressReporter, profile_table

    reporter = None if quiet else ProgressReporter(err_console)
    try:
        result = run_experiment(exp, reporter)
    except RunInterrupted as exc:
        err_console.print(f"interrupted ({exc}); records kept in {exc.run_dir}", markup=False)
        raise typer.Exit(exc.exit_code) from None
    if quiet:
        print(result.run_dir)
        return
    console.print(profile_table(result))
    if result.divergence:
        d = result.divergence
        console.print(f"[bold red]diverged[/] at step {d['step']}: first non-finite value in {d['tensor']}")
    console.print(f"run directory: {result.run_dir}", markup=False, highlight=False)


@app.command()
@reports_errors
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check CONFIG and print it resolved, every default filled in."""
    exp = _load(config, _overrides(set_))
    print(exp.to_yaml(), end="")


@app.command()
@reports_errors
def components() -> None:
    """List every activation, initializer, normalization, dataset, loss and optimizer."""
    from gradlab.display import components_tables

    for table in components_tables():
        console.print(table)



def main() -> None:
    app()
