"""Showing results: the number formatter, the comparison table as terminal view, csv, markdown or
json, the per-layer profile of `gradlab run`, and `gradlab components` (progress bars: progress.py).

Rendering only: what is shown is computed in summaries.py and compare.py. rich and pandas; no
torch (`gradlab components` imports the registries inside its function).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from gradlab.vocab.text import printable

if TYPE_CHECKING:
    import pandas as pd

    from gradlab.analysis.compare import Comparison
    from gradlab.records.run import Run, Step


def format_number(value: Any, integer: bool = False, digits: int = 3) -> str:
    """A number as shown to a person: `digits` significant digits, an empty cell for a value that
    does not exist (None, NaN, pandas' NA); text is shown as it is. `integer`: whole numbers without
    digits after the point. The one formatter of the numbers gradlab shows in tables (csv and json
    keep full precision instead)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or _is_na(value):
        return ""
    if isinstance(value, str):
        return value
    value = float(value)
    if integer and value.is_integer():
        return str(int(value))
    return f"{value:.{digits}g}"


def _is_na(value: Any) -> bool:
    # pandas' NA (an empty cell of an integer column), without importing pandas to ask
    return type(value).__name__ == "NAType"


def profile_table(run: Run) -> Table:
    """delta_norm per layer at step 0 and at the last logged step, the gain across the stack and
    its verdict, of a run read back from its records (the numbers `gradlab compare` reports)."""
    from gradlab.analysis.configdiff import describe_config
    from gradlab.analysis.summaries import profile_at, run_verdict

    layers = run.layers
    last_step = run.last_step
    # (escaped: a config value written as a list, [a, b], would otherwise be read as rich markup)
    table = Table(title=escape(f"{describe_config(run.config)}\nback-propagated signal ||dL/dz|| per layer ({run.status})"))
    table.add_column("layer", justify="right")
    table.add_column("name")
    table.add_column("delta_norm @ step 0", justify="right")
    if last_step != 0:  # (a run of 0 steps has one step to show, not the same column twice)
        table.add_column(f"delta_norm @ step {last_step if last_step is not None else 'last'}", justify="right")
    if last_step is None:
        table.caption = "nothing was logged: the run diverged at its first step"
        return table
    steps = list(dict.fromkeys((0, last_step)))
    at = {step: layers[layers["step"] == step].set_index("layer")["delta_norm"] for step in steps}
    for layer, name in layers[["layer", "name"]].drop_duplicates("layer").itertuples(index=False):
        table.add_row(str(layer), escape(str(name)), *(format_number(at[step].get(layer)) for step in steps))
    gains = []
    for step in dict.fromkeys((0, last_step)):
        gain = profile_at(run, step)["gain"]
        gains.append(f"step {step}: {format_number(gain) or 'none'} ({run_verdict(run, step) or 'no verdict'})")
    table.caption = escape("gain across the stack (first / last hidden layer): " + ", ".join(gains) + "\n" + final_line(run))
    return table


def final_line(run: Run) -> str:
    """'final: train loss 0.123, accuracy 0.96; test loss 0.2, accuracy 0.94' (the last logged
    values, as compare's final_* columns; of a diverged run the last finite ones, said so)."""
    from gradlab.analysis.summaries import final_metrics

    finals = final_metrics(run)
    parts = []
    for split in ("train", "test"):
        loss, accuracy = finals.get(f"final_{split}_loss"), finals.get(f"final_{split}_accuracy")
        if format_number(loss) or format_number(accuracy):
            parts.append(f"{split} loss {format_number(loss) or 'n/a'}, accuracy {format_number(accuracy) or 'n/a'}")
    prefix = "last values before it diverged" if run.status == "diverged" else "final"
    return f"{prefix}: " + ("; ".join(parts) if parts else "no metrics recorded")


def components_tables() -> list[Table]:
    from gradlab.vocab.registry import (
        param_table,  # (pydantic: not for the comparison's import time)
    )
    from gradlab.vocab.specs import REGISTRIES

    tables = []
    for title, registry in REGISTRIES.items():
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("parameters (default)")
        table.add_column("what it is")
        for component in registry:
            params = ", ".join(f"{name}={default}" for name, _, default in param_table(component.params))
            aliases = f" (also: {', '.join(component.aliases)})" if component.aliases else ""
            # escaped: "[lower, upper]" in a description is text, not rich markup
            table.add_row(escape(component.name), escape(params), escape(component.doc + aliases))
        tables.append(table)
    return tables


# --------------------------------------------------------------------------------------------
# The comparison table
# --------------------------------------------------------------------------------------------


def display_cells(comparison: Comparison) -> pd.DataFrame:
    """The table as text cells, `mean ± std` where a row averages seeds."""
    import pandas as pd

    from gradlab.analysis.compare import GEOMETRIC, INTEGER_COLUMNS

    table = comparison.table
    cells = pd.DataFrame(index=table.index)
    for column in comparison.value_columns():
        integer = column in INTEGER_COLUMNS
        std_column = f"{column}_std"
        has_std = std_column in table
        texts = []
        for i in table.index:
            text = format_number(table.at[i, column], integer)
            if has_std and text and table.at[i, "seeds"] > 1:
                std = format_number(table.at[i, std_column])
                if std:  # gains and ratios: a geometric mean and its multiplicative spread (compare.GEOMETRIC)
                    text = f"{text} ×/÷ {std}" if column.partition("@")[0] in GEOMETRIC else f"{text} ± {std}"
            texts.append(printable(text, keep_newlines=False))  # (no escape sequence reaches a terminal)
        cells[column] = texts
    return cells


def to_csv(comparison: Comparison) -> str:
    """Machine-readable: every number at full precision, empty cells empty."""
    return comparison.table.to_csv(index=False, na_rep="", lineterminator="\n")


def _json_value(value: Any) -> Any:
    import numpy as np

    if value is None or _is_na(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"  # JSON has no infinity; a gain can be one
        return value
    return value


def to_json(comparison: Comparison) -> str:
    from gradlab.analysis.summaries import step_label

    rows = []
    for i, record in enumerate(comparison.table.to_dict(orient="records")):
        row = {key: _json_value(value) for key, value in record.items()}
        row["runs"] = [str(path) for path in comparison.runs[i]]
        rows.append(row)
    document = {
        "steps": [step_label(s) for s in comparison.steps],
        "thresholds": {"vanish": comparison.thresholds.vanish, "explode": comparison.thresholds.explode,
                       "depth_scale": comparison.thresholds.depth_scale, "scales": comparison.thresholds.scales},
        "target_loss": comparison.target_loss,
        "config_keys": comparison.config_keys,
        "rows": rows,
    }
    return json.dumps(document, indent=2) + "\n"


# Markdown is read as a page: where the rows differ in more config keys than this (a gradlab run
# beside watch runs differs in ~40), the keys' columns are left out and a line under the table says
# so; csv and json keep every column, the terminal view turns the table (a row per key).
MARKDOWN_CONFIG_KEYS = 4


def to_markdown(comparison: Comparison) -> str:
    cells = display_cells(comparison)
    escape = lambda text: printable(text, keep_newlines=False).replace("|", "\\|")  # noqa: E731
    after = []
    if len(comparison.config_keys) > MARKDOWN_CONFIG_KEYS:
        cells = cells.drop(columns=[key for key in comparison.config_keys if key in cells])
        after = ["", f"The rows differ in {len(comparison.config_keys)} config keys, left out here; "
                     "`gradlab compare -f csv` (or json, or the report) lists every one."]
    lines = ["| " + " | ".join(map(escape, cells.columns)) + " |", "|" + "|".join("---" for _ in cells.columns) + "|"]
    for _, row in cells.iterrows():
        lines.append("| " + " | ".join(escape(v) for v in row) + " |")
    return "\n".join(lines + after) + "\n"


RENDERERS = {"csv": to_csv, "markdown": to_markdown, "json": to_json}


def render(comparison: Comparison, fmt: str) -> str:
    """The comparison as text in one of RENDERERS' formats."""
    return RENDERERS[fmt](comparison)


VERDICT_STYLES = {"vanishing": "bold blue", "stable": "green", "exploding": "bold red", "diverged": "bold magenta", "dead": "bold white on red", "mixed": "yellow"}


def verdict_style(text: str) -> str:
    """The style of a verdict cell, by its first word ('vanishing (×0.235/layer, ...)' is vanishing's)."""
    from gradlab.analysis.summaries import word_of

    return VERDICT_STYLES.get(word_of(text), "")


def header_text(label: str) -> str:
    """A column heading that wraps only between whole parts: `name`, then one `key=value` per line
    (a narrow terminal broke labels mid-word)."""
    name, sep, values = label.partition("#")
    return "\n".join([name + ("#" if sep else ""), *(values.split(",") if values else [])])


def rich_view(comparison: Comparison, width: int | None = None):
    """The comparison for a terminal, turned: one column per configuration, the quantities down
    the side in sections (config, step 0, last step, training), then the verdict thresholds.
    A row per run would be two dozen columns wide; csv, markdown and json keep one row per run.

    `width` (the terminal's): where the configurations do not fit side by side, the table is cut
    into several, each with the quantity names, every column at its full width, instead of
    squeezing columns until labels break mid-word and "mean ± std" is split across lines."""
    from rich.console import Group
    from rich.text import Text

    cells = display_cells(comparison)
    thresholds = comparison.thresholds
    rows = _view_rows(comparison, cells)
    chunks: list[list[int]] = [[]]
    for i in range(len(cells)):
        if width is not None and chunks[-1] and _natural_width(_view_table(comparison, rows, cells, [*chunks[-1], i])) > width:
            chunks.append([])
        chunks[-1].append(i)
    tables = [_view_table(comparison, rows, cells, chunk) for chunk in chunks]
    return Group(*tables, Text(f"verdict: {thresholds.describe()}"))


def _natural_width(table: Table) -> int:
    """The width rich gives `table` when nothing limits it: every cell on one line."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=10_000)
    return Measurement.get(console, console.options, table).maximum


def _view_rows(comparison: Comparison, cells) -> list[tuple[str, list[str] | None]]:
    """(row name, a text per configuration) in display order; None: a section heading."""
    from gradlab.analysis.summaries import column_name
    from gradlab.vocab.quantities import (
        FINAL_QUANTITIES,
        PROFILE_QUANTITIES,
        THEORY_QUANTITIES,
        TIME_QUANTITIES,
    )

    rows: list[tuple[str, list[str] | None]] = []
    for key in comparison.config_keys:
        rows.append((key, list(cells[key])))
    for column in ("status", "seeds", "last_step"):
        rows.append((column, list(cells[column])))
    rows.append(("", None))
    for step in comparison.steps:
        rows.append((step_heading(comparison, step), None))
        for quantity in (*PROFILE_QUANTITIES, "alpha_warning"):  # (alpha_warning: spectrum group runs)
            if column_name(quantity, step) in cells:
                rows.append((quantity, list(cells[column_name(quantity, step)])))
        rows.append(("verdict", list(cells[column_name("verdict", step)])))
        for quantity in (*TIME_QUANTITIES, "time_verdict"):  # recurrent runs: along time
            if column_name(quantity, step) in cells:
                rows.append((quantity, list(cells[column_name(quantity, step)])))
        rows.append(("", None))
    theory_columns = [c for c in THEORY_QUANTITIES if c in cells]  # compare --theory: beside the measurement at step 0
    if theory_columns:
        rows.append(("theory (at step 0)", None))
        rows += [(column, list(cells[column])) for column in theory_columns]
        rows.append(("", None))
    rows.append(("training", None))
    for quantity in FINAL_QUANTITIES:
        if quantity in cells:
            rows.append((quantity, list(cells[quantity])))
    return rows


def _view_table(comparison: Comparison, rows, cells, chunk: list[int]) -> Table:
    from rich import box
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, header_style="bold")
    table.add_column("", no_wrap=True)
    for i in chunk:
        table.add_column(Text(header_text(printable(cells["label"].iloc[i], keep_newlines=False)), style="bold"), overflow="fold")
    verdict_rows = {"verdict", "time_verdict"}
    for name, values in rows:
        if values is None:
            if name == "":  # the previous row ends a section
                if table.rows:
                    table.rows[-1].end_section = True
                continue
            table.add_row(Text(name, style="bold"))
            continue
        texts = []
        for i in chunk:
            text = values[i]
            style = verdict_style(text) if name in verdict_rows else ""
            texts.append(Text(text, style=style))
        table.add_row(Text(printable(name, keep_newlines=False)), *texts)
    return table


def step_heading(comparison: Comparison, step: Step) -> str:
    if step == 0:
        return "at step 0 (initialization)"
    if step != "last":
        return f"at step {step}"
    last_steps = set(comparison.table["last_step"].dropna().astype(int))
    return f"at the last step ({last_steps.pop()})" if len(last_steps) == 1 else "at each run's last step"
