"""Terminal rendering for `gradlab run` and `gradlab components` (rich; no torch, no computing)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from gradlab.registry import param_table


def fmt(value: float | None) -> str:
    """Three significant digits; an empty cell for a value that does not exist."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3g}"


class ProgressReporter:
    """A rich progress bar: step, loss, elapsed time and ETA (updated on logged steps)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None

    def start(self, total_steps: int) -> None:
        self.progress = Progress(
            TextColumn("step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task("train", total=total_steps, loss="-")
        self.progress.start()

    def update(self, step: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=f"{loss:.4g}")

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def profile_table(run_dir) -> Table:
    """delta_norm per layer at step 0 and at the last logged step, the gain across the stack and
    its verdict, read back from the run's records (the numbers `gradlab compare` reports)."""
    from gradlab.analysis import describe_run, load_run, profile_at, run_verdict

    run = load_run(run_dir)
    layers = run.layers
    last_step = run.last_step
    table = Table(title=f"{describe_run(run.config)}\nback-propagated signal ||dL/dz|| per layer ({run.status})")
    table.add_column("layer", justify="right")
    table.add_column("name")
    table.add_column("delta_norm @ step 0", justify="right")
    table.add_column(f"delta_norm @ step {last_step if last_step is not None else 'last'}", justify="right")
    if last_step is None:
        table.caption = "nothing was logged: the run diverged at its first step"
        return table
    at = {step: layers[layers["step"] == step].set_index("layer")["delta_norm"] for step in (0, last_step)}
    for layer, name in layers[["layer", "name"]].drop_duplicates("layer").itertuples(index=False):
        table.add_row(str(layer), name, fmt(at[0].get(layer)), fmt(at[last_step].get(layer)))
    gains = []
    for step in dict.fromkeys((0, last_step)):
        gain = profile_at(run, step)["gain"]
        gains.append(f"step {step}: {fmt(gain)} ({run_verdict(run, step, gain) or 'no verdict'})")
    table.caption = "gain across the stack (first / last hidden layer): " + ", ".join(gains)
    return table


def components_tables() -> list[Table]:
    from gradlab.components import REGISTRIES

    tables = []
    for title, registry in REGISTRIES.items():
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("parameters (default)")
        table.add_column("what it is")
        for component in registry:
            params = ", ".join(f"{name}={default}" for name, _, default in param_table(component.params))
            aliases = f" (also: {', '.join(component.aliases)})" if component.aliases else ""
            table.add_row(component.name, params, component.doc + aliases)
        tables.append(table)
    return tables
