"""The table `gradlab coordcheck` prints: per variant, one row per layer and one column per step,
each cell the log-log slope of the coordinate against width and its verdict (analysis/coordcheck.py)."""

from __future__ import annotations

import math

from rich.table import Table

from gradlab.vocab.text import printable

_STYLE = {"width-stable": "green", "grows": "red", "shrinks": "yellow", "": "dim"}


def slope_tables(slopes, tolerance: float) -> list[Table]:
    """One rich Table per variant of `slopes` (analysis.coordcheck.slopes)."""
    tables = []
    for variant, rows in slopes.groupby("variant", sort=False):
        quantity = rows["quantity"].iloc[0]
        title = f"{quantity} slope against width (|slope| <= {tolerance:g}: width-stable)" + (f"  {printable(variant)}" if variant else "")
        table = Table(title=title, title_justify="left")
        table.add_column("layer")
        steps = sorted(rows["step"].unique())
        for step in steps:
            table.add_column(f"step {step}", justify="right")
        for _, layer in rows.sort_values(["layer", "step"]).groupby("layer", sort=True):
            cells = [printable(str(layer["name"].iloc[0]))]
            for step in steps:
                hit = layer[layer["step"] == step]
                slope = float(hit["slope"].iloc[0]) if len(hit) else math.nan
                verdict = str(hit["verdict"].iloc[0]) if len(hit) else ""
                text = f"{slope:+.3f} {verdict}" if math.isfinite(slope) else "-"
                cells.append(f"[{_STYLE.get(verdict, '')}]{text}[/]" if verdict else text)
            table.add_row(*cells)
        tables.append(table)
    return tables
