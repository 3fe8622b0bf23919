"""The rows of layers.csv and timesteps.csv, built in one place from a step's measured columns.

Every measurer (the probe of gradlab's models, the recurrent probe, `watch`) ends a logged step
with {quantity: {site key: value}}; a row holds a site's keys, then one cell per column of the
table's header, None (an empty cell) where the quantity was not measured or does not exist there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gradlab.build.sites import Site
from gradlab.measure.pending import Column


def layer_rows(step: int, sites: Iterable[Site], columns: dict[str, Column], quantities: Sequence[str]) -> list[dict]:
    """One layers.csv row per site, in the order given: step, layer, name, kind, then `quantities`."""
    return _rows(step, sites, columns, quantities, "kind")


def timestep_rows(step: int, sites: Iterable[Site], columns: dict[str, Column], quantities: Sequence[str]) -> list[dict]:
    """One timesteps.csv row per (recurrent layer, t) site: step, layer, name, t, then `quantities`."""
    return _rows(step, sites, columns, quantities, "t")


def _rows(step: int, sites: Iterable[Site], columns: dict[str, Column], quantities: Sequence[str], last_key: str) -> list[dict]:
    # each column looked up once per step, not once per site (a logged step of a 50-layer stack
    # builds 51 rows of some 30 cells)
    table = [(quantity, columns.get(quantity, {})) for quantity in quantities]
    rows = []
    for site in sites:
        key = site.key
        row = {"step": step, "layer": site.layer, "name": site.name, last_key: getattr(site, last_key)}
        for quantity, column in table:
            row[quantity] = column.get(key)
        rows.append(row)
    return rows
